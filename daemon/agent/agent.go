// Package agent is warpd's runtime: it loads (or adopts) the pinned socket
// load balancer, attaches it to the node's cgroup, and keeps its maps in
// sync with the services source, exposing health and metrics.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/reconcile"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/daemon/source"
	"github.com/warpnet/warpnet/internal/l4"
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
	Resync       time.Duration // full resync, repairing any drift in the maps
	ListenAddr   string        // /healthz and /metrics; "" = none
	Sizes        servicelb.Sizes
}

// Agent runs one warpd.
type Agent struct {
	cfg Config
	log *slog.Logger
	lb  *servicelb.LB

	src source.Source

	mu      sync.Mutex
	last    reconcile.Stats
	lastErr error
	syncs   int
	errs    int
	lastDur time.Duration
	synced  bool
}

// New opens the load balancer (adopting pinned state left by an earlier
// warpd) and attaches it; nothing is detached or cleared on exit, so
// translation keeps working while warpd is down or restarting.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	var src source.Source
	if cfg.ServicesFile != "" {
		if cfg.Kubeconfig != "" {
			return nil, errors.New("pass either --services-file or --kubeconfig, not both")
		}
		src = &source.File{Path: cfg.ServicesFile, Poll: cfg.Poll}
	} else {
		rc, err := source.ClientConfig(cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		client, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("API client: %w", err)
		}
		src = source.NewKube(client, log)
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
	log.Info("socket load balancer attached", "cgroup", cfg.CgroupRoot, "bpffs", cfg.BPFFSRoot,
		"node", cfg.Node.Name, "nodeAddresses", cfg.Node.Addresses, "hostOnly", cfg.HostOnly)
	return &Agent{cfg: cfg, log: log, lb: lb, src: src}, nil
}

// nodeAddresses lists the global unicast addresses of the current network
// namespace: where NodePorts listen and which ExternalIPs are local.
func nodeAddresses() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
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

// Run syncs until ctx ends. A source that cannot be read leaves the maps
// as they are (traffic keeps flowing on the last good state) and is retried.
func (a *Agent) Run(ctx context.Context) error {
	defer a.lb.Close()
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
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	var snap *source.Snapshot
	for {
		force := false
		select {
		case <-ctx.Done():
			a.log.Info("stopping; maps and programs stay pinned and attached")
			return nil
		case <-a.src.Changes():
		case <-resync.C:
			force = true
		}
		next, changed, err := a.src.Snapshot()
		switch {
		case err != nil:
			a.record(reconcile.Stats{}, err, 0)
			a.log.Error("services source unusable; keeping the current state", "err", err)
		case changed:
			snap = next
		}
		if snap != nil && (changed || force) {
			a.sync(snap)
		}
		if force {
			a.gc()
		}
	}
}

func (a *Agent) sync(snap *source.Snapshot) {
	start := time.Now()
	desired := services.Translate(snap.Services, snap.EndpointSlices, a.cfg.Node)
	st, err := reconcile.Sync(a.lb, desired)
	dur := time.Since(start)
	if err == nil && a.lb.Staged() != "" {
		// The rebuilt maps hold every service now: switch to them.
		err = a.lb.Commit()
	}
	a.record(st, err, dur)
	if err != nil {
		a.log.Error("sync failed in part; will retry", "err", err, "upserted", st.Upserted, "deleted", st.Deleted)
		return
	}
	if st.Upserted+st.Deleted > 0 {
		a.log.Info("synced", "services", st.Services, "backends", st.Backends, "upserted", st.Upserted, "deleted", st.Deleted, "duration", dur)
	}
	a.destroyStale(st.Removed)
}

// destroyStale destroys sockets still connected to removed backends, so a
// resolver's connected UDP socket does not stay pinned to a dead DNS pod.
// TCP connections are left to end on their own unless DestroyTCP is set.
func (a *Agent) destroyStale(removed []reconcile.Removed) {
	for _, r := range removed {
		if r.Proto == l4.TCP && !a.cfg.DestroyTCP {
			continue
		}
		n, err := a.lb.DestroySockets(r.Backend, r.Proto)
		if err != nil {
			a.log.Warn("destroying sockets to a removed backend failed", "backend", r.Backend.String(), "proto", r.Proto.String(), "err", err)
			continue
		}
		if n > 0 {
			a.log.Info("destroyed sockets to a removed backend", "backend", r.Backend.String(), "proto", r.Proto.String(), "sockets", n)
		}
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

func (a *Agent) record(st reconcile.Stats, err error, dur time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.syncs++
	a.lastErr = err
	if err != nil {
		a.errs++
		return
	}
	if dur > 0 {
		a.last, a.lastDur, a.synced = st, dur, true
	}
}

// serve exposes /healthz (200 once a sync succeeded and the last attempt
// did not fail) and /metrics in the Prometheus text format.
func (a *Agent) serve() (*http.Server, error) {
	ln, err := net.Listen("tcp", a.cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for health and metrics: %w", a.cfg.ListenAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		ok, err := a.synced, a.lastErr
		a.mu.Unlock()
		if !ok || err != nil {
			http.Error(w, fmt.Sprintf("not synced: %v", err), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		fmt.Fprintf(w, "# HELP warpd_services Frontends in the load balancer's maps.\n# TYPE warpd_services gauge\nwarpd_services %d\n", a.last.Services)
		fmt.Fprintf(w, "# HELP warpd_backends Backend slots in the maps.\n# TYPE warpd_backends gauge\nwarpd_backends %d\n", a.last.Backends)
		fmt.Fprintf(w, "# HELP warpd_syncs_total Sync attempts.\n# TYPE warpd_syncs_total counter\nwarpd_syncs_total %d\n", a.syncs)
		fmt.Fprintf(w, "# HELP warpd_sync_errors_total Failed sync attempts.\n# TYPE warpd_sync_errors_total counter\nwarpd_sync_errors_total %d\n", a.errs)
		// Map fill: frontends against the services map's capacity (each
		// frontend also takes one slot per backend there).
		sizes := a.lb.Sizes()
		if sizes.Services > 0 {
			fmt.Fprintf(w, "# HELP warpd_map_fill_ratio Used share of a map's capacity.\n# TYPE warpd_map_fill_ratio gauge\n")
			fmt.Fprintf(w, "warpd_map_fill_ratio{map=\"services\"} %g\n", float64(a.last.Services)/float64(sizes.Services))
		}
		if sizes.Backends > 0 {
			fmt.Fprintf(w, "warpd_map_fill_ratio{map=\"backends\"} %g\n", float64(a.last.Backends)/float64(sizes.Backends))
		}
		fmt.Fprintf(w, "# HELP warpd_sync_duration_seconds Duration of the last successful sync.\n# TYPE warpd_sync_duration_seconds gauge\nwarpd_sync_duration_seconds %g\n", a.lastDur.Seconds())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}

// Hostname is the default node name.
func Hostname() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}
