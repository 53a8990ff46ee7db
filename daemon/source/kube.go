package source

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/daemon/services"
)

var _ Source = (*Kube)(nil)

// Kube watches Services, EndpointSlices and Nodes with shared informers.
// While the API server is unreachable the informers keep retrying and the
// last state stays in force: the datapath is never cleared for lack of news.
// Every event names the service it concerns (a Service's own key, an
// EndpointSlice's kubernetes.io/service-name), and Take hands those keys
// to warpd, so that a change costs the work of one service.
type Kube struct {
	host        string
	factories   []informers.SharedInformerFactory
	svcs        cache.SharedIndexInformer
	slices      cache.SharedIndexInformer
	nodes       cache.SharedIndexInformer
	changes     chan struct{}
	nodeChanges chan struct{}
	log         *slog.Logger

	mu      sync.Mutex
	pending map[string]bool // services changed since the last Take
	taken   bool
}

// sliceServiceIndex indexes EndpointSlices by the service they belong to.
const sliceServiceIndex = "service"

// serviceProxySelector leaves out what warpd does not proxy, as
// kube-proxy's informers do: services handled by another proxy and the
// EndpointSlices of headless services.
const serviceProxySelector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"

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

// Protobuf returns a copy of rc that talks protobuf to the API server
// (JSON for what has no protobuf form): a tenth of JSON's decoding cost
// for 10,000 services.
func Protobuf(rc *rest.Config) *rest.Config {
	rc = rest.CopyConfig(rc)
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	return rc
}

// NewKube prepares the informers on a client of rc; Start runs them.
func NewKube(rc *rest.Config, log *slog.Logger) (*Kube, error) {
	rc = Protobuf(rc)
	rc.Wrap(func(next http.RoundTripper) http.RoundTripper { return &reachability{next: next, log: log} })
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	host := rc.Host
	if u, err := url.Parse(rc.Host); err == nil && u.Host != "" {
		host = u.Scheme + "://" + u.Host
	}
	proxied := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trim),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = serviceProxySelector }))
	all := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trim))
	k := &Kube{host: host, factories: []informers.SharedInformerFactory{proxied, all},
		svcs: proxied.Core().V1().Services().Informer(), slices: proxied.Discovery().V1().EndpointSlices().Informer(),
		nodes: all.Core().V1().Nodes().Informer(), changes: make(chan struct{}, 1), nodeChanges: make(chan struct{}, 1),
		log: log, pending: map[string]bool{}}
	if err := k.slices.AddIndexers(cache.Indexers{sliceServiceIndex: func(obj any) ([]string, error) {
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
			if key := services.SliceServiceKey(s); key != "" {
				return []string{key}, nil
			}
		}
		return nil, nil
	}}); err != nil {
		return nil, err
	}
	svcNotify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.changed(serviceKey(o)) },
		UpdateFunc: func(_, o any) { k.changed(serviceKey(o)) },
		DeleteFunc: func(o any) { k.changed(serviceKey(o)) },
	}
	// A slice relabelled to another service changes both.
	sliceNotify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.changed(sliceKey(o)) },
		UpdateFunc: func(old, o any) { k.changed(sliceKey(old), sliceKey(o)) },
		DeleteFunc: func(o any) { k.changed(sliceKey(o)) },
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
	for inf, handler := range map[cache.SharedIndexInformer]cache.ResourceEventHandler{k.svcs: svcNotify, k.slices: sliceNotify, k.nodes: nodeNotify} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, err
		}
		inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			log.Warn("watching the API server failed; keeping the datapath as it is and retrying", "err", err)
		})
	}
	return k, nil
}

// trim drops what the informers' caches would hold for nothing, before
// they cache it: every field of Services, EndpointSlices and Nodes that
// warpd does not read (managed fields, kubectl's last-applied annotation,
// selectors, endpoints' target references, a Node's images and
// conditions, ...), times 10,000 Services and their EndpointSlices.
func trim(o any) (any, error) {
	switch o := o.(type) {
	case *corev1.Service:
		services.TrimService(o)
	case *discoveryv1.EndpointSlice:
		services.TrimEndpointSlice(o)
	case *corev1.Node:
		routing.TrimNode(o)
	default:
		if a, err := meta.Accessor(o); err == nil {
			a.SetManagedFields(nil)
		}
	}
	return o, nil
}

// changed notes services to sync again and signals Changes.
func (k *Kube) changed(keys ...string) {
	k.mu.Lock()
	for _, key := range keys {
		if key != "" {
			k.pending[key] = true
		}
	}
	k.mu.Unlock()
	signal(k.changes)
}

// serviceKey is a Service's namespace/name (also from a deletion tombstone).
func serviceKey(o any) string {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o)
	if err != nil {
		return ""
	}
	return key
}

// sliceKey is the namespace/name of the service an EndpointSlice (or its
// deletion tombstone) belongs to.
func sliceKey(o any) string {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	if s, ok := o.(*discoveryv1.EndpointSlice); ok {
		return services.SliceServiceKey(s)
	}
	return ""
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
	for _, f := range k.factories {
		f.Start(ctx.Done())
	}
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

// Take returns a view of the informers' caches (read only) and the
// services their events named since the last Take.
func (k *Kube) Take() (services.View, []string, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	all := !k.taken
	k.taken = true
	keys := make([]string, 0, len(k.pending))
	for key := range k.pending {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	k.pending = map[string]bool{}
	return kubeView{k}, keys, all, nil
}

// kubeView reads the informers' caches.
type kubeView struct{ k *Kube }

func (v kubeView) Service(key string) (*corev1.Service, bool) {
	o, ok, err := v.k.svcs.GetIndexer().GetByKey(key)
	if err != nil || !ok {
		return nil, false
	}
	s, ok := o.(*corev1.Service)
	return s, ok
}

func (v kubeView) EndpointSlices(key string) []*discoveryv1.EndpointSlice {
	objs, err := v.k.slices.GetIndexer().ByIndex(sliceServiceIndex, key)
	if err != nil {
		return nil
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, s)
		}
	}
	return out
}

func (v kubeView) ServiceKeys() []string {
	keys := v.k.svcs.GetIndexer().ListKeys()
	seen := make(map[string]bool, len(keys))
	for _, key := range keys {
		seen[key] = true
	}
	for _, key := range v.k.slices.GetIndexer().ListIndexFuncValues(sliceServiceIndex) {
		if !seen[key] {
			keys = append(keys, key)
		}
	}
	return keys
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
