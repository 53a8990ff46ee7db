// Package ipamgc is warpd's leak collector for warp-ipam's kubernetes
// store: it releases IPAllocations whose pod is gone, and pinned ones whose
// StatefulSet no longer needs them. One warpd per cluster collects at a
// time (leader election on a Lease); the others stand by.
//
// Nothing in use is ever released:
//   - an unpinned address is released only when no pod of its
//     namespace/name exists. A pod of that name with another UID keeps it
//     (a pod recreated under its old name, a static pod's mirror): the old
//     sandbox's DEL, or the node's CNI GC, which knows the live sandboxes,
//     frees such an address, not a cluster-wide guess;
//   - a pinned address is released only when its pod is gone and its
//     StatefulSet is gone too or scaled below the ordinal (an orphaned pod
//     of a deleted StatefulSet keeps it);
//   - an address must look leaked in every sweep for the grace period, its
//     object must be older than that (an ADD in progress for a pod the
//     caches do not know yet), the verdict is confirmed by reading the pod
//     and the StatefulSet from the API server itself (not the caches) just
//     before, and the delete is conditioned on the object's UID and
//     resourceVersion, so an address taken over or re-created meanwhile
//     stays.
package ipamgc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/warpnet/warpnet/daemon/source"
	"github.com/warpnet/warpnet/ipam/kube"
)

// Config is the collector's configuration (warpd's --ipam-gc-* flags).
type Config struct {
	Identity       string        // this warpd in the election: its node name
	LeaseNamespace string        // where the Lease lives
	LeaseName      string        // DefaultLeaseName unless set
	Grace          time.Duration // how long an address must look leaked before it is released
	Interval       time.Duration // time between sweeps
}

// Defaults of warpd's flags.
const (
	DefaultLeaseName      = "warpnet-ipam-gc"
	DefaultLeaseNamespace = "kube-system"
	DefaultGrace          = time.Minute
	DefaultInterval       = 30 * time.Second
)

// Lease timings: a standby takes over within about LeaseDuration of the
// leader's death (at once when the leader stops cleanly and releases).
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// Collector is one warpd's leak collector.
type Collector struct {
	cfg  Config
	log  *slog.Logger
	k8s  kubernetes.Interface
	meta metadata.Interface
	ipam *kube.Client

	// Caches of the current term (standbys watch nothing).
	pods cache.Store
	sts  appslisters.StatefulSetLister

	suspects map[string]suspect // by IPAllocation name
	m        metrics
}

// suspect is an allocation that looked leaked in every sweep since first.
type suspect struct {
	uid   string
	first time.Time
}

var podsGVR = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// Open prepares a collector on the API server of kubeconfig ("": the
// in-cluster configuration); Run starts it.
func Open(kubeconfig string, cfg Config, log *slog.Logger) (*Collector, error) {
	rc, err := source.ClientConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	return New(rc, cfg, log)
}

// New prepares a collector on the API server of rc; Run starts it.
func New(rc *rest.Config, cfg Config, log *slog.Logger) (*Collector, error) {
	if cfg.LeaseName == "" {
		cfg.LeaseName = DefaultLeaseName
	}
	if cfg.Identity == "" {
		return nil, fmt.Errorf("the IPAM leak collector needs an identity (--node-name)")
	}
	if cfg.Grace <= 0 || cfg.Interval <= 0 {
		return nil, fmt.Errorf("--ipam-gc-grace and --ipam-gc-interval must be positive durations")
	}
	k8s, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	meta, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, err
	}
	return &Collector{cfg: cfg, log: log.With("component", "ipam-gc"), k8s: k8s, meta: meta,
		ipam: kube.NewClient(rc.Host, hc, "warpd-ipam-gc"), suspects: map[string]suspect{}, m: newMetrics()}, nil
}

// Collectors are the collector's Prometheus metrics, for warpd's registry.
func (c *Collector) Collectors() []prometheus.Collector { return c.m.all() }

// Run takes part in the election until ctx ends and sweeps while leading.
// It releases the Lease when ctx ends, so that a standby takes over at once.
func (c *Collector) Run(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.cfg.LeaseNamespace, Name: c.cfg.LeaseName},
		Client:     c.k8s.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: c.cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
			ReleaseOnCancel: true, Name: c.cfg.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: c.lead,
				OnStoppedLeading: func() { c.m.leader.Set(0); c.log.Info("no longer collecting leaked addresses (lost the lease)") },
				OnNewLeader: func(id string) {
					if id != c.cfg.Identity {
						c.log.Info("another warpd collects leaked addresses", "leader", id)
					}
				},
			},
		})
		if err != nil {
			c.log.Error("IPAM leak collector cannot run", "err", err)
			return
		}
		le.Run(ctx) // returns when leadership is lost or ctx ends; stand again
	}
}

// lead sweeps every Interval until leadership ends.
func (c *Collector) lead(ctx context.Context) {
	c.m.leader.Set(1)
	c.log.Info("collecting leaked addresses", "lease", c.cfg.LeaseNamespace+"/"+c.cfg.LeaseName,
		"grace", c.cfg.Grace.String(), "interval", c.cfg.Interval.String())
	// Pods by metadata only: the collector needs their names, not specs.
	mf := metadatainformer.NewSharedInformerFactory(c.meta, 0)
	sf := informers.NewSharedInformerFactory(c.k8s, 0)
	podsInf, stsInf := mf.ForResource(podsGVR).Informer(), sf.Apps().V1().StatefulSets().Informer()
	c.pods, c.sts = podsInf.GetStore(), sf.Apps().V1().StatefulSets().Lister()
	mf.Start(ctx.Done())
	sf.Start(ctx.Done())
	defer mf.Shutdown()
	defer sf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podsInf.HasSynced, stsInf.HasSynced) {
		return
	}
	// Suspicions of an earlier term are stale: a standby does not sweep.
	c.suspects = map[string]suspect{}
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		c.sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Verdict says whether an allocation looks leaked and why, given what
// exists: pod(namespace, name) and statefulSet(namespace, name).
func Verdict(a *kube.IPAllocation, pod func(ns, name string) bool, statefulSet func(ns, name string) (*appsv1.StatefulSet, bool)) (bool, string) {
	ns, name := a.Spec.Pod.Namespace, a.Spec.Pod.Name
	if pod(ns, name) {
		// A pod of that name uses it: also a pinned address whose
		// StatefulSet is gone (deleted with --cascade=orphan, its pods run
		// on) or scaled down (the pod still terminating).
		return false, ""
	}
	ss := a.Spec.StatefulSet
	if ss == nil {
		return true, fmt.Sprintf("pod %s/%s is gone", ns, name)
	}
	set, ok := statefulSet(ns, ss.Name)
	if !ok {
		return true, fmt.Sprintf("pod %s/%s and its StatefulSet %s are gone", ns, name, ss.Name)
	}
	start, replicas := int32(0), int32(1)
	if set.Spec.Ordinals != nil {
		start = set.Spec.Ordinals.Start
	}
	if set.Spec.Replicas != nil {
		replicas = *set.Spec.Replicas
	}
	if int32(ss.Ordinal) >= start && int32(ss.Ordinal) < start+replicas {
		return false, "" // the pod will come back: keep its address
	}
	return true, fmt.Sprintf("StatefulSet %s/%s has ordinals %d-%d, not %d, and pod %s is gone", ns, ss.Name, start, start+replicas-1, ss.Ordinal, name)
}

func (c *Collector) cachedPod(ns, name string) bool {
	_, ok, err := c.pods.GetByKey(ns + "/" + name)
	return ok || err != nil
}

func (c *Collector) cachedSts(ns, name string) (*appsv1.StatefulSet, bool) {
	s, err := c.sts.StatefulSets(ns).Get(name)
	return s, err == nil || !apierrors.IsNotFound(err)
}

// livePod and liveSts read from the API server; an error counts as
// "exists", so that nothing is released on a guess.
func (c *Collector) livePod(ctx context.Context) func(ns, name string) bool {
	return func(ns, name string) bool {
		_, err := c.k8s.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return !apierrors.IsNotFound(err)
	}
}

func (c *Collector) liveSts(ctx context.Context) func(ns, name string) (*appsv1.StatefulSet, bool) {
	return func(ns, name string) (*appsv1.StatefulSet, bool) {
		s, err := c.k8s.AppsV1().StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return &appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Replicas: ptrInt32(1 << 30)}}, true
		}
		return s, err == nil
	}
}

func ptrInt32(i int32) *int32 { return &i }

// sweep looks at every allocation once.
func (c *Collector) sweep(ctx context.Context) {
	start := time.Now()
	allocs, err := c.ipam.ListAllocations(ctx, "")
	if err != nil {
		c.m.errors.Inc()
		c.log.Warn("IPAM leak collection: cannot list the allocations; retrying at the next sweep", "err", err)
		return
	}
	seen := map[string]bool{}
	pending, released := 0, 0
	for i := range allocs {
		a := &allocs[i]
		seen[a.Name] = true
		leaked, _ := Verdict(a, c.cachedPod, c.cachedSts)
		if !leaked {
			delete(c.suspects, a.Name)
			continue
		}
		s, ok := c.suspects[a.Name]
		if !ok || s.uid != a.UID {
			s = suspect{uid: a.UID, first: start}
			c.suspects[a.Name] = s
		}
		if start.Sub(s.first) < c.cfg.Grace || start.Sub(a.Created()) < c.cfg.Grace {
			pending++
			continue
		}
		// Confirm with the API server itself: the caches may lag.
		leaked, reason := Verdict(a, c.livePod(ctx), c.liveSts(ctx))
		if !leaked {
			delete(c.suspects, a.Name)
			continue
		}
		err := c.ipam.DeleteAllocation(ctx, a.Name, a.UID, a.ResourceVersion)
		switch {
		case err == nil:
			released++
			c.m.released.Inc()
			c.log.Info("released a leaked address", "address", a.Spec.Address, "pool", a.Spec.Pool, "why", reason,
				"node", nodeOf(a), "leakedFor", start.Sub(s.first).Round(time.Second).String())
		case kube.IsNotFound(err) || kube.IsConflict(err):
			// Released or taken over meanwhile: not a leak any more.
		default:
			c.m.errors.Inc()
			c.log.Warn("releasing a leaked address failed; retrying at the next sweep", "address", a.Spec.Address, "err", err)
			continue
		}
		delete(c.suspects, a.Name)
	}
	for name := range c.suspects {
		if !seen[name] {
			delete(c.suspects, name)
		}
	}
	c.m.sweeps.Inc()
	c.m.pending.Set(float64(pending))
	c.m.allocations.Set(float64(len(allocs)))
	if released > 0 || pending > 0 {
		c.log.Info("IPAM leak collection swept", "allocations", len(allocs), "released", released, "waiting", pending, "took", time.Since(start).String())
	}
}

func nodeOf(a *kube.IPAllocation) string {
	if a.Spec.Attachment != nil {
		return a.Spec.Attachment.Node
	}
	return ""
}
