// Package podfacts publishes the pods of warpd's node for warp-ipam: for
// each pod bound to the node, the file ipam/kube.WritePodFacts writes (its
// UID, ipam.warpnet.io annotations and StatefulSet owner), so that an ADD
// of warp-ipam's kubernetes store reads the pod from the node instead of
// from the API server. The watch is the kubelet's own (pods whose
// spec.nodeName is this node), objects are trimmed as they arrive, and a
// file is written only when what it holds changes (not at every status
// update). Files of pods that are gone are removed, also those a previous
// warpd left behind.
package podfacts

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/warpnet/warpnet/daemon/source"
	"github.com/warpnet/warpnet/ipam/kube"
)

// Publisher keeps dir in step with the pods of one node.
type Publisher struct {
	dir, node string
	log       *slog.Logger
	inf       cache.SharedIndexInformer
	factory   informers.SharedInformerFactory

	mu        sync.Mutex
	published map[string][]byte // namespace/name → what its file holds

	writes, errors prometheus.Counter
	pods           prometheus.Gauge
}

// New prepares a publisher of node's pods in dir on the API server of rc;
// Run starts it.
func New(rc *rest.Config, node, dir string, log *slog.Logger) (*Publisher, error) {
	if node == "" {
		return nil, fmt.Errorf("publishing pod facts needs the node's name (--node-name)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--pod-facts %s: %w", dir, err)
	}
	client, err := kubernetes.NewForConfig(source.Protobuf(rc))
	if err != nil {
		return nil, err
	}
	p := &Publisher{dir: dir, node: node, log: log.With("component", "pod-facts"), published: map[string][]byte{},
		writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_pod_facts_writes_total",
			Help: "Pod facts files written or removed for warp-ipam (a pod bound to this node, changed or gone)."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_pod_facts_errors_total",
			Help: "Pod facts files that could not be written or removed (warp-ipam reads those pods from the API server)."}),
		pods: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_pod_facts_pods",
			Help: "Pods of this node whose facts are published for warp-ipam."}),
	}
	p.factory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}),
		informers.WithTransform(trim))
	p.inf = p.factory.Core().V1().Pods().Informer()
	_, err = p.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { p.set(o) },
		UpdateFunc: func(_, o any) { p.set(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if pod, ok := o.(*corev1.Pod); ok {
				p.remove(pod.Namespace, pod.Name)
			}
		},
	})
	return p, err
}

// trim keeps in the informer's cache only what is published: a pod's spec
// and status are most of its size.
func trim(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
		ResourceVersion: pod.ResourceVersion, Annotations: kube.IPAMAnnotations(pod.Annotations), OwnerReferences: pod.OwnerReferences}}
	t.Spec.NodeName = pod.Spec.NodeName
	return t, nil
}

// facts converts a pod of the informer's cache (trimmed) into what is
// published.
func facts(pod *corev1.Pod) *kube.Pod {
	out := &kube.Pod{ObjectMeta: kube.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID),
		Annotations: pod.Annotations}}
	out.Spec.NodeName = pod.Spec.NodeName
	for _, o := range pod.OwnerReferences {
		out.OwnerReferences = append(out.OwnerReferences, kube.OwnerReference{APIVersion: o.APIVersion, Kind: o.Kind,
			Name: o.Name, UID: string(o.UID), Controller: o.Controller})
	}
	return out
}

// Collectors are the publisher's metrics, for warpd's registry.
func (p *Publisher) Collectors() []prometheus.Collector {
	return []prometheus.Collector{p.writes, p.errors, p.pods}
}

// Run watches until ctx ends. The files stay: they are valid until the
// pods change, and the next warpd takes over from them.
func (p *Publisher) Run(ctx context.Context) {
	p.factory.Start(ctx.Done())
	defer p.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), p.inf.HasSynced) {
		return
	}
	p.removeStale()
	p.log.Info("publishing this node's pods for warp-ipam", "dir", p.dir, "node", p.node, "pods", len(p.inf.GetStore().ListKeys()))
	<-ctx.Done()
}

func (p *Publisher) set(o any) {
	cp, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	key := cp.Namespace + "/" + cp.Name
	data, err := kube.EncodePodFacts(facts(cp))
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.published[key]; ok && bytes.Equal(old, data) {
		return // a status update: nothing published changed
	}
	if err := kube.WritePodFacts(p.dir, cp.Namespace, cp.Name, data); err != nil {
		p.errors.Inc()
		p.log.Warn("cannot publish a pod for warp-ipam (it reads the pod from the API server instead)", "pod", key, "err", err)
		delete(p.published, key)
		return
	}
	p.writes.Inc()
	p.published[key] = data
	p.pods.Set(float64(len(p.published)))
}

func (p *Publisher) remove(ns, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeLocked(ns, name)
}

func (p *Publisher) removeLocked(ns, name string) {
	key := ns + "/" + name
	if err := kube.RemovePodFacts(p.dir, ns, name); err != nil {
		p.errors.Inc()
		p.log.Warn("cannot withdraw a deleted pod's facts", "pod", key, "err", err)
		return
	}
	p.writes.Inc()
	delete(p.published, key)
	p.pods.Set(float64(len(p.published)))
}

// removeStale removes the files of pods the first list did not have: pods
// deleted while no warpd watched.
func (p *Publisher) removeStale() {
	keys, err := kube.PublishedPods(p.dir)
	if err != nil {
		p.log.Warn("cannot list published pod facts", "dir", p.dir, "err", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, key := range keys {
		if _, exists, _ := p.inf.GetStore().GetByKey(key); !exists {
			ns, name, _ := strings.Cut(key, "/")
			p.removeLocked(ns, name)
		}
	}
}
