package source

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

var _ Source = (*Kube)(nil)

// Kube watches Services, EndpointSlices and Nodes with shared informers.
// While the API server is unreachable the informers keep retrying and the
// last state stays in force: the datapath is never cleared for lack of news.
type Kube struct {
	host        string
	factory     informers.SharedInformerFactory
	svcs        cache.SharedIndexInformer
	slices      cache.SharedIndexInformer
	nodes       cache.SharedIndexInformer
	changes     chan struct{}
	nodeChanges chan struct{}
	log         *slog.Logger
}

// ClientConfig is the in-cluster configuration, or kubeconfig's when set.
func ClientConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("not running in a cluster (%w): pass --kubeconfig or --services-file", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// NewKube prepares the informers on a client of rc; Start runs them.
func NewKube(rc *rest.Config, log *slog.Logger) (*Kube, error) {
	rc = rest.CopyConfig(rc)
	rc.Wrap(func(next http.RoundTripper) http.RoundTripper { return &reachability{next: next, log: log} })
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	host := rc.Host
	if u, err := url.Parse(rc.Host); err == nil && u.Host != "" {
		host = u.Scheme + "://" + u.Host
	}
	f := informers.NewSharedInformerFactory(client, 0)
	k := &Kube{host: host, factory: f, svcs: f.Core().V1().Services().Informer(), slices: f.Discovery().V1().EndpointSlices().Informer(),
		nodes: f.Core().V1().Nodes().Informer(), changes: make(chan struct{}, 1), nodeChanges: make(chan struct{}, 1), log: log}
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { signal(k.changes) },
		UpdateFunc: func(any, any) { signal(k.changes) },
		DeleteFunc: func(any) { signal(k.changes) },
	}
	// Nodes change their status at every heartbeat; only pod CIDRs,
	// addresses and the set of nodes matter to node networking.
	nodeNotify := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { signal(k.nodeChanges) },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			c, ok2 := cur.(*corev1.Node)
			if !ok1 || !ok2 || networkKey(o) != networkKey(c) {
				signal(k.nodeChanges)
			}
		},
		DeleteFunc: func(any) { signal(k.nodeChanges) },
	}
	for _, inf := range []cache.SharedIndexInformer{k.svcs, k.slices, k.nodes} {
		handler := notify
		if inf == k.nodes {
			handler = nodeNotify
		}
		inf.AddEventHandler(handler)
		inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			log.Warn("watching the API server failed; keeping the datapath as it is and retrying", "err", err)
		})
	}
	return k, nil
}

// reachability logs when requests to the API server start failing (and when
// they work again): the informers retry some failures, such as a refused
// connection, without a word.
type reachability struct {
	next http.RoundTripper
	log  *slog.Logger
	down atomic.Bool
}

func (r *reachability) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	switch {
	case err != nil && req.Context().Err() == nil:
		if !r.down.Swap(true) {
			r.log.Warn("cannot reach the API server; keeping the datapath as it is and retrying", "err", err)
		}
	case err == nil && r.down.Swap(false):
		r.log.Info("the API server is reachable again")
	}
	return resp, err
}

// Start runs the informers and waits for their first full listing, logging
// while the API server cannot be reached.
func (k *Kube) Start(ctx context.Context) error {
	k.factory.Start(ctx.Done())
	for {
		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ok := cache.WaitForCacheSync(waitCtx.Done(), k.svcs.HasSynced, k.slices.HasSynced, k.nodes.HasSynced)
		cancel()
		if ok {
			k.log.Info("listed Services, EndpointSlices and Nodes from the API server")
			signal(k.changes)
			signal(k.nodeChanges)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		k.log.Warn("still waiting for the first list of Services, EndpointSlices and Nodes from the API server")
	}
}

// Changes is signalled when the input may have changed.
func (k *Kube) Changes() <-chan struct{} { return k.changes }

func (k *Kube) String() string { return "API server " + k.host }

// Snapshot returns the informers' current state (shared with the informers:
// read only).
func (k *Kube) Snapshot() (*Snapshot, bool, error) {
	snap := &Snapshot{}
	for _, o := range k.svcs.GetStore().List() {
		snap.Services = append(snap.Services, o.(*corev1.Service))
	}
	for _, o := range k.slices.GetStore().List() {
		snap.EndpointSlices = append(snap.EndpointSlices, o.(*discoveryv1.EndpointSlice))
	}
	return snap, true, nil
}

// NodeChanges is signalled when a Node was added or removed, or changed its
// pod CIDRs or addresses.
func (k *Kube) NodeChanges() <-chan struct{} { return k.nodeChanges }

// Nodes returns the informer's Nodes (shared with the informer: read only),
// once it has listed them.
func (k *Kube) Nodes() ([]*corev1.Node, bool) {
	if !k.nodes.HasSynced() {
		return nil, false
	}
	var out []*corev1.Node
	for _, o := range k.nodes.GetStore().List() {
		out = append(out, o.(*corev1.Node))
	}
	return out, true
}
