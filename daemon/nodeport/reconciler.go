package nodeport

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	np "github.com/warpnet/warpnet/bpf/nodeport"
	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/daemon/services"
)

// Attach is where the programs run on the external interfaces (--lb-attach).
type Attach string

// Attach modes. The tc program is attached to every interface in all
// modes but none: replies of local backends and DSR flows pass pod and
// tunnel interfaces, and XDP leaves it what it cannot finish (GSO, local
// backends).
const (
	AttachXDP  Attach = "xdp"  // native XDP on external interfaces; failure is an error
	AttachTC   Attach = "tc"   // tcx only: better for bulk TCP on veth (XDP costs GSO there)
	AttachAuto Attach = "auto" // XDP where the driver has native XDP, except on veth (GSO), else tc
	AttachNone Attach = "none" // no north-south load balancer
)

// ParseAttach parses --lb-attach.
func ParseAttach(s string) (Attach, error) {
	switch a := Attach(s); a {
	case AttachXDP, AttachTC, AttachAuto, AttachNone:
		return a, nil
	}
	return "", fmt.Errorf("%q is not xdp, tc, auto or none", s)
}

// Config configures the reconciler (warpd's --lb-* flags).
type Config struct {
	BPFFSRoot string
	Attach    Attach
	// Interfaces names the external interfaces (clients' traffic arrives
	// there); empty: every interface holding one of NodeAddresses.
	Interfaces    []string
	NodeAddresses []netip.Addr
	Mode          Mode
	TableSize     int // Maglev table size, a prime; 0: nodeport.DefaultTableSize
	Sizes         np.Sizes
	// Settings are the programs' node-wide settings (SNAT ports,
	// timeouts); the zero value is nodeport.DefaultSettings.
	Settings np.Settings
	// Tunnel is the cluster network's VXLAN tunnel, nil if none: the
	// programs encapsulate to remote backends behind it themselves.
	Tunnel *routing.Config
	// HealthAddrs are the addresses the healthCheckNodePort servers
	// listen on; empty: every address (as kube-proxy's default).
	HealthAddrs []netip.Addr
}

// Reconciler writes the desired north-south services into the maps.
// Sync, Apply and SetTunnelPeers are called from one goroutine at a time each.
type Reconciler struct {
	cfg    Config
	log    *slog.Logger
	lb     *np.LB
	health *healthServers

	mu      sync.Mutex                   // guards what follows
	applied map[np.ServiceKey]np.Service // nil until read from the maps
	idx     *index                       // the desired north-south state; nil until the first Sync
	retry   map[np.ServiceKey]bool       // services whose last write failed
}

// Stats is what a Sync or Apply did.
type Stats struct {
	Services int // north-south services desired
	// Compared counts the services built and compared with what was
	// applied: all of them in a Sync, the changed ones in an Apply.
	Compared          int
	Upserted, Deleted int
	Interfaces        map[int]np.Role
}

// Open loads (or adopts) the pinned north-south load balancer and writes
// its settings. Nothing is detached on Close: flows keep being served
// while warpd is down or restarting.
func Open(cfg Config, log *slog.Logger) (*Reconciler, error) {
	if cfg.Attach == AttachNone {
		return nil, errors.New("nodeport: --lb-attach none: nothing to open")
	}
	if cfg.Mode == "" {
		cfg.Mode = SNAT
	}
	if cfg.TableSize == 0 {
		cfg.TableSize = np.DefaultTableSize
	}
	if err := np.CheckTableSize(cfg.TableSize); err != nil {
		return nil, fmt.Errorf("--lb-maglev-size: %w", err)
	}
	if cfg.Settings == (np.Settings{}) {
		cfg.Settings = np.DefaultSettings
	}
	if t := cfg.Tunnel; t != nil {
		vni, port := t.VNI, t.Port
		if vni == 0 {
			vni = routing.DefaultVNI
		}
		if port == 0 {
			port = routing.DefaultPort
		}
		cfg.Settings.Tunnel = &np.Tunnel{VNI: uint32(vni), Port: uint16(port), MAC: routing.VTEPMAC(t.Self)}
	}
	lb, err := np.Open(cfg.BPFFSRoot, cfg.Sizes)
	if err != nil {
		return nil, fmt.Errorf("load the north-south load balancer (bpffs root %s): %w", cfg.BPFFSRoot, err)
	}
	if why := lb.Staged(); why != "" {
		log.Warn("rebuilding the north-south load balancer's maps; the pinned ones serve until the first sync", "why", why)
	}
	if err := lb.Configure(cfg.Settings); err != nil {
		lb.Close()
		return nil, err
	}
	return &Reconciler{cfg: cfg, log: log, lb: lb, health: newHealthServers(cfg.HealthAddrs, log)}, nil
}

// Close stops the health servers and closes the maps; pins and
// attachments stay.
func (r *Reconciler) Close() error {
	r.health.close()
	return r.lb.Close()
}

// LB is the open load balancer (for status and tests).
func (r *Reconciler) LB() *np.LB { return r.lb }

// Sync is the full pass: it makes the maps hold Desired(entries),
// comparing every service with what was applied (with the maps
// themselves after Resync): changed services are rewritten, gone ones
// deleted. It first tells the programs the node's interfaces (pod veths
// come and go) and attaches them, then updates the health servers.
// Errors of single services do not stop the others.
func (r *Reconciler) Sync(entries []services.Entry) (Stats, error) {
	x := newIndex()
	touched := map[np.ServiceKey]bool{}
	for _, e := range entries {
		x.set(e.Frontend, e, true, touched)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.idx, r.retry = x, map[np.ServiceKey]bool{}
	st, errs := r.begin()
	if r.applied == nil {
		cur, err := r.lb.Services()
		if err != nil {
			r.idx = nil // not synced: the next sync is a full one again
			return st, errors.Join(append(errs, err)...)
		}
		r.applied = map[np.ServiceKey]np.Service{}
		for _, s := range cur {
			r.applied[s.Key()] = s
		}
	}
	for k := range r.applied {
		touched[k] = true
	}
	errs = append(errs, r.write(touched, &st)...)
	_, want := x.health(touched)
	if err := r.health.sync(want); err != nil {
		errs = append(errs, err)
	}
	return st, errors.Join(errs...)
}

// NeedsFull says whether the next sync must be a Sync: before the first,
// and after Resync or a Sync that could not read the maps.
func (r *Reconciler) NeedsFull() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.needsFull()
}

func (r *Reconciler) needsFull() bool { return r.idx == nil || r.applied == nil }

// Apply is the incremental pass, for the frontends whose desired entry
// changed (services.Tracker.Update's result; desired is
// Tracker.Desired): only the north-south services those frontends belong
// to, before and after, are compared and written, and the health check
// ports of those services updated, plus whatever failed last time: in the
// maps it costs what changed, not what the cluster holds (the interfaces
// are still listed every pass). Call Sync instead while NeedsFull.
func (r *Reconciler) Apply(changed []services.Frontend, desired func(services.Frontend) (services.Entry, bool)) (Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.needsFull() {
		return Stats{}, errors.New("nodeport: Apply before a full Sync")
	}
	touched := map[np.ServiceKey]bool{}
	for _, fe := range changed {
		e, ok := desired(fe)
		r.idx.set(fe, e, ok, touched)
	}
	st, errs := r.begin()
	for k := range r.retry {
		touched[k] = true
	}
	errs = append(errs, r.write(touched, &st)...)
	if err := r.health.apply(r.idx.health(touched)); err != nil {
		errs = append(errs, err)
	}
	return st, errors.Join(errs...)
}

// begin starts a pass: the interfaces, and the services' count.
func (r *Reconciler) begin() (Stats, []error) {
	var st Stats
	var errs []error
	roles, err := r.syncInterfaces()
	st.Interfaces = roles
	if err != nil {
		errs = append(errs, err)
	}
	st.Services = len(r.idx.byKey)
	return st, errs
}

// write brings the services keys to what the index wants: compares each
// with what was applied, upserts or deletes it; a service whose write
// failed is retried by the next pass. Once nothing failed, rebuilt maps
// are switched to. r.mu is held.
func (r *Reconciler) write(keys map[np.ServiceKey]bool, st *Stats) []error {
	var errs []error
	sorted := slices.SortedFunc(maps.Keys(keys), compareKeys)
	for _, k := range sorted {
		st.Compared++
		delete(r.retry, k)
		s, want := r.idx.service(k, r.cfg.Mode, r.cfg.TableSize)
		old, had := r.applied[k]
		switch {
		case want && had && Same(old, s):
		case want:
			if err := r.lb.Upsert(s); err != nil {
				errs = append(errs, err)
				delete(r.applied, k) // unknown: rewritten next time
				r.retry[k] = true
				continue
			}
			r.applied[k] = s
			st.Upserted++
		case had:
			if err := r.lb.Delete(k); err != nil {
				errs = append(errs, err)
				r.retry[k] = true
				continue
			}
			delete(r.applied, k)
			st.Deleted++
		}
	}
	if len(errs) == 0 && len(r.retry) == 0 && r.lb.Staged() != "" {
		// the rebuilt maps hold every service now: switch to them
		if err := r.lb.Commit(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Resync forgets what was applied, so the next Sync compares with the
// maps themselves and repairs any drift, and collects idle connections
// (they hold SNAT ports until removed) and entries interrupted updates
// left behind; it returns how many entries it removed.
func (r *Reconciler) Resync() (int, error) {
	r.mu.Lock()
	r.applied = nil
	r.mu.Unlock()
	return r.lb.GC()
}

// SetTunnelPeers tells the programs the peers reached through the VXLAN
// tunnel (routing status: peer name and underlay address).
func (r *Reconciler) SetTunnelPeers(peers []routing.Peer) error {
	m := map[string]netip.Addr{}
	for _, p := range peers {
		if p.Tunnel && p.Via.IsValid() {
			m[routing.VTEPMAC(p.Name).String()] = p.Via
		}
	}
	return r.lb.SetTunnelPeers(m)
}

// syncInterfaces classifies the node's interfaces for the programs and
// attaches them: external ones (Config.Interfaces, or those holding a node
// address) with XDP as configured and tc, every other one with tc.
func (r *Reconciler) syncInterfaces() (map[int]np.Role, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("nodeport: list interfaces: %w", err)
	}
	external := map[int]bool{}
	if len(r.cfg.Interfaces) == 0 {
		addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("nodeport: list addresses: %w", err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && slices.Contains(r.cfg.NodeAddresses, ip.Unmap()) {
				external[a.LinkIndex] = true
			}
		}
	}
	roles := map[int]np.Role{}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		switch {
		case a.Flags&net.FlagLoopback != 0:
			continue
		case slices.Contains(r.cfg.Interfaces, a.Name) || external[a.Index]:
			roles[a.Index] = np.External
		case l.Type() == "veth" && strings.HasPrefix(a.Name, "warp"):
			roles[a.Index] = np.Pod // warp-veth's host side
		case l.Type() == "vxlan":
			roles[a.Index] = np.TunnelDevice
		default:
			roles[a.Index] = np.Other
		}
	}
	for _, name := range r.cfg.Interfaces {
		if !slices.ContainsFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == name }) {
			errs = append(errs, fmt.Errorf("nodeport: external interface %s (--lb-interfaces) does not exist", name))
		}
	}
	if err := r.lb.SetInterfaces(roles); err != nil {
		errs = append(errs, err)
	}
	veth := map[int]bool{}
	for _, l := range links {
		veth[l.Attrs().Index] = l.Type() == "veth"
	}
	for idx, role := range roles {
		// auto keeps veth on tc: XDP there gives up GSO, which costs bulk
		// TCP more than XDP saves (docs/benchmarks.md)
		if role == np.External && (r.cfg.Attach == AttachXDP || r.cfg.Attach == AttachAuto && !veth[idx]) {
			err := r.lb.AttachXDP(idx)
			switch {
			case err != nil && r.cfg.Attach == AttachXDP:
				errs = append(errs, err)
			case err != nil:
				r.log.Debug("no native XDP on an external interface; tc serves it", "ifindex", idx, "err", err)
			}
		} else if role == np.External {
			if err := r.lb.Detach(np.XDP, idx); err != nil {
				errs = append(errs, err)
			}
		}
		if err := r.lb.AttachTC(idx); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := r.lb.Prune(); err != nil {
		errs = append(errs, err)
	}
	return roles, errors.Join(errs...)
}
