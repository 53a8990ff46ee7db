// Package agent is warpd's runtime: it loads (or adopts) the pinned socket
// load balancer, attaches it to the node's cgroup, keeps its maps in sync
// with the services source, and serves health, metrics and status.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/boundedrun"
	"github.com/warpnet/warpnet/daemon/ipamgc"
	"github.com/warpnet/warpnet/daemon/nodenet"
	"github.com/warpnet/warpnet/daemon/nodeport"
	"github.com/warpnet/warpnet/daemon/podfacts"
	"github.com/warpnet/warpnet/daemon/reconcile"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/daemon/source"
	"github.com/warpnet/warpnet/daemon/status"
	"github.com/warpnet/warpnet/internal/mountinfo"
)

// Config is warpd's configuration (its flags).
type Config struct {
	ServicesFile string        // YAML Services and EndpointSlices (file mode)
	Kubeconfig   string        // API server mode; "" with no ServicesFile = in-cluster
	CgroupRoot   string        // cgroup v2 directory whose sockets are translated; "" = the cgroup2 mount
	BPFFSRoot    string        // where maps, programs and links are pinned
	Node         services.Node // Addresses empty = the node namespace's global addresses
	HostOnly     bool          // translate only sockets of the host network namespace
	DestroyTCP   bool          // also destroy TCP sockets to removed backends (UDP ones always are)
	Poll         time.Duration // how often the file is checked for changes
	MinSync      time.Duration // least time between two syncs: changes meanwhile are coalesced
	Resync       time.Duration // full resync, repairing any drift in the maps
	ListenAddr   string        // /healthz, /metrics and /status; "" = none
	Pprof        bool          // also serve Go's profiles on ListenAddr (/debug/pprof/)
	// Sizes are the maps' capacities; a zero field is sized from the
	// cluster (the pinned map's capacity or the default, grown when the
	// desired state needs more).
	Sizes servicelb.Sizes
	// Network is node networking (routes to other nodes' pods,
	// masquerading, node facts); nil leaves it to someone else.
	Network *nodenet.Config
	// IPAMGC collects warp-ipam addresses leaked in the API server (one
	// warpd per cluster, elected); nil: off.
	IPAMGC *ipamgc.Config
	// IPAMKubeconfig is warp-ipam's kubeconfig (written by the installer)
	// whose token warpd keeps current from ServiceAccountDir; "" = none.
	IPAMKubeconfig    string
	ServiceAccountDir string
	TokenCheck        time.Duration // how often; 0 = DefaultTokenCheck
	// PodFacts is where the node's pods are published for warp-ipam
	// (daemon/podfacts), in API server mode; "" = not published.
	PodFacts string
	// NorthSouth is the load balancer for NodePorts, ExternalIPs and
	// LoadBalancer IPs reached from outside (northsouth.go); nil: off.
	NorthSouth *nodeport.Config
}

// Agent runs one warpd.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	src     source.Source
	metrics *metrics

	// Used by the sync goroutine only (see sync.go).
	lb       *servicelb.LB         // replaced when the maps grow
	tracker  *services.Tracker     // the desired state, one service at a time
	rec      *reconcile.Reconciler // the maps, as written
	readMaps bool                  // rec has read the maps (a Full sync succeeded in reading them)

	mu            sync.Mutex // guards what the HTTP handlers read
	synced        bool       // a sync has succeeded entirely
	lastSync      *status.Sync
	lastGoodSync  time.Time
	sourceProblem error
	rejected      map[string]status.Rejected // by services.Rejected.Key
	inMaps        reconcile.Stats            // Services and Backends of the last sync
	sizes         servicelb.Sizes            // the maps' capacities
	short         []shortage                 // maps that cannot hold the desired state
	network       *status.Network            // nil with Config.Network nil

	net    *nodenet.Controller  // used by runNetwork's goroutine only
	ipamGC *ipamgc.Collector    // nil unless Config.IPAMGC
	pods   *podfacts.Publisher  // nil unless Config.PodFacts in API server mode
	ns     *nodeport.Reconciler // nil unless Config.NorthSouth
}

// New opens the load balancer (adopting pinned state left by an earlier
// warpd) and attaches it; nothing is detached or cleared on exit, so
// translation keeps working while warpd is down or restarting.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	var src source.Source
	var rc *rest.Config // API server mode
	if cfg.ServicesFile != "" {
		if cfg.Kubeconfig != "" {
			return nil, errors.New("pass either --services-file or --kubeconfig, not both")
		}
		src = &source.File{Path: cfg.ServicesFile, Poll: cfg.Poll}
	} else {
		var err error
		if rc, err = source.ClientConfig(cfg.Kubeconfig); err != nil {
			return nil, err
		}
		if src, err = source.NewKube(rc, log); err != nil {
			return nil, err
		}
	}
	if cfg.CgroupRoot == "" {
		root, err := mountinfo.Cgroup2()
		if err != nil {
			return nil, err
		}
		cfg.CgroupRoot = root
	}
	if len(cfg.Node.Addresses) == 0 {
		addrs, err := nodeAddresses()
		if err != nil {
			return nil, fmt.Errorf("detect node addresses (or pass --node-ip): %w", err)
		}
		cfg.Node.Addresses = addrs
	}
	lb, err := servicelb.Open(cfg.BPFFSRoot, cfg.Sizes)
	if err != nil {
		return nil, fmt.Errorf("load the socket load balancer (bpffs root %s): %w", cfg.BPFFSRoot, err)
	}
	if why := lb.Staged(); why != "" {
		log.Warn("rebuilding the load balancer's maps; the pinned ones serve until the first sync", "why", why)
	}
	if err := lb.SetHostOnly(cfg.HostOnly); err != nil {
		lb.Close()
		return nil, err
	}
	if err := lb.Attach(cfg.CgroupRoot); err != nil {
		lb.Close()
		return nil, fmt.Errorf("attach to cgroup %s: %w", cfg.CgroupRoot, err)
	}
	log.Info("socket load balancer attached", "cgroup", cfg.CgroupRoot, "bpffs", cfg.BPFFSRoot, "source", src.String(),
		"node", cfg.Node.Name, "nodeAddresses", cfg.Node.Addresses, "hostOnly", cfg.HostOnly)
	a := &Agent{cfg: cfg, log: log, lb: lb, src: src, metrics: newMetrics(), rejected: map[string]status.Rejected{},
		tracker: services.NewTracker(cfg.Node), rec: reconcile.New(lb), sizes: lb.Sizes()}
	if cfg.IPAMGC != nil {
		if a.ipamGC, err = ipamgc.Open(cfg.Kubeconfig, *cfg.IPAMGC, log); err != nil {
			lb.Close()
			return nil, err
		}
		a.metrics.reg.MustRegister(a.ipamGC.Collectors()...)
	}
	if cfg.PodFacts != "" && rc != nil {
		if a.pods, err = podfacts.New(rc, cfg.Node.Name, cfg.PodFacts, log); err != nil {
			lb.Close()
			return nil, err
		}
		a.metrics.reg.MustRegister(a.pods.Collectors()...)
	}
	if err := a.openNorthSouth(); err != nil {
		lb.Close()
		return nil, err
	}
	if cfg.Network != nil {
		if a.net, err = nodenet.New(*cfg.Network); err != nil {
			a.closeNorthSouth()
			lb.Close()
			return nil, err
		}
		a.network = &status.Network{Routing: string(cfg.Network.Routing.Mode), Masquerade: cfg.Network.Masquerade,
			Facts: cfg.Network.FactsPath, Waiting: "the cluster's Nodes are not listed yet"}
	}
	return a, nil
}

// nodeAddresses lists the global unicast addresses of the current network
// namespace: where NodePorts listen and which ExternalIPs are local.
func nodeAddresses() ([]netip.Addr, error) {
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// Run syncs until ctx ends: at once, then when the source changes (at most
// once per MinSync: changes meanwhile are coalesced) and fully every
// Resync. A source that cannot be read leaves the maps as they are (traffic
// keeps flowing on the last good state) and is retried. When ctx ends, a
// sync in progress stops between two entries, so warpd exits promptly;
// the next warpd finishes the job.
func (a *Agent) Run(ctx context.Context) error {
	defer func() { a.lb.Close() }() // the LB of the moment: growing the maps replaces it
	defer a.closeNorthSouth()
	if a.cfg.ListenAddr != "" {
		srv, err := a.serve()
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	if err := a.src.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if a.net != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() { defer close(done); a.runNetwork(ctx) }()
	}
	if a.ipamGC != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() { defer close(done); a.ipamGC.Run(ctx) }()
	}
	if a.pods != nil {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() { defer close(done); a.pods.Run(ctx) }()
	}
	if a.cfg.IPAMKubeconfig != "" {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() { defer close(done); a.refreshIPAMToken(ctx) }()
	}
	runner := boundedrun.New(a.cfg.MinSync, a.cfg.Resync, clock.RealClock{})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-a.src.Changes():
				runner.Trigger()
			}
		}
	}()
	runner.Run(ctx, func(full bool) { a.sync(ctx, full) })
	a.log.Info("stopping; maps and programs stay pinned and attached")
	return nil
}

// destroyStale destroys sockets still connected to removed backends, so a
// resolver's connected UDP socket does not stay pinned to a dead DNS pod.
// TCP connections are left to end on their own unless DestroyTCP is set.
// All of a sync's removed backends go in one pass: the iterators are
// loaded once and every network namespace is walked once.
func (a *Agent) destroyStale(removed []reconcile.Removed) {
	targets := reconcile.Targets(removed, a.cfg.DestroyTCP)
	if len(targets) == 0 {
		return
	}
	n, err := a.lb.DestroySockets(targets)
	a.metrics.destroyPass(n)
	if err != nil {
		a.log.Warn("destroying sockets to removed backends failed in part", "backends", len(targets), "err", err)
	}
	for t, count := range n {
		a.log.Info("destroyed sockets to a removed backend", "backend", t.Backend.String(), "proto", t.Proto.String(), "sockets", count)
	}
}

// gc removes map entries that interrupted updates left behind.
func (a *Agent) gc() {
	if n, err := a.lb.GC(); err != nil {
		a.log.Warn("collecting stale map entries failed", "err", err)
	} else if n > 0 {
		a.log.Info("collected stale map entries", "entries", n)
	}
}

// record notes a sync's outcome for /healthz, /metrics and /status.
func (a *Agent) record(st reconcile.Stats, err error, start time.Time, dur time.Duration) {
	sizes := a.lb.Sizes()
	a.metrics.synced(st, err, dur, sizes)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sizes = sizes
	if st.Counted {
		a.inMaps = st
	}
	a.lastSync = &status.Sync{At: start, Duration: dur, Upserted: st.Upserted, Deleted: st.Deleted, Skipped: st.Skipped}
	if err != nil {
		a.lastSync.Error = err.Error()
		return
	}
	a.synced, a.lastGoodSync = true, start.Add(dur)
}

// setSourceProblem notes (and logs, when it changes) why the source cannot
// be followed, or that it can again.
func (a *Agent) setSourceProblem(err error) {
	a.mu.Lock()
	prev := a.sourceProblem
	a.sourceProblem = err
	a.mu.Unlock()
	a.metrics.sourceHealthy(err == nil)
	switch {
	case err != nil && (prev == nil || prev.Error() != err.Error()):
		a.log.Error("services source unusable; keeping the last good state", "source", a.src.String(), "err", err)
	case err == nil && prev != nil:
		a.log.Info("services source usable again", "source", a.src.String())
	}
}

// setRejected records the objects rejected by this sync, logging those
// that are newly rejected (or for another reason) and those accepted again.
func (a *Agent) setRejected(rejected []services.Rejected, now time.Time) {
	next := make(map[string]status.Rejected, len(rejected))
	var order []string
	for _, r := range rejected {
		key := r.Key()
		if first, dup := next[key]; dup { // several conflicts of one service: one entry
			first.Reason += "; " + r.Reason
			next[key] = first
			continue
		}
		next[key] = status.Rejected{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name, Reason: r.Reason, Kept: r.Kept, Since: now}
		order = append(order, key)
	}
	perKind := map[string]int{"Service": 0, "EndpointSlice": 0}
	a.mu.Lock()
	prev := a.rejected
	for _, key := range order {
		r := next[key]
		perKind[r.Kind]++
		if old, ok := prev[key]; ok && old.Reason == r.Reason && old.Kept == r.Kept {
			r.Since = old.Since
			next[key] = r
			continue
		}
		what := "nothing of it is applied"
		if r.Kept {
			what = "its last valid version stays in force"
		}
		a.log.Warn("rejected an invalid object; "+what, "kind", r.Kind, "object", r.Namespace+"/"+r.Name, "reason", r.Reason)
	}
	a.rejected = next
	a.mu.Unlock()
	for key, old := range prev {
		if _, still := next[key]; !still {
			a.log.Info("object no longer rejected", "kind", old.Kind, "object", old.Namespace+"/"+old.Name)
		}
	}
	a.metrics.rejectedObjects(perKind)
}

// Hostname is the default node name.
func Hostname() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}
