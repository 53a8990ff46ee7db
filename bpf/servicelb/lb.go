// Package servicelb is warpd's socket-level service load balancer
// (sock_lb.c): cgroup sock_addr programs that translate a Kubernetes
// Service address to a backend pod's once per socket, at connect() or
// sendmsg(), instead of per packet.
//
// The node daemon attaches the programs to the cgroup v2 that holds the
// node's pods (Attach) and keeps the maps in sync with the Services
// (Upsert, Delete). Pods then reach backends at pod-to-pod speed, without
// NAT on the node, and SR-IOV pods, whose packets bypass the node's
// netfilter and so any iptables/nftables service rules, reach Services too.
//
// Everything lives under <root>/lb, apart from the XDP pod datapath's pins,
// so that either can be loaded, upgraded or removed without the other:
//
//	<root>/lb/maps/<map>                      lb_services, lb_backends, lb_sock, lb_affinity, lb_config, lb_meta
//	<root>/lb/progs/<program>                 lb_connect4, ..., lb_getpeername6
//	<root>/lb/links/<cgroup hash>/<program>   one bpf_link per program and cgroup
//
// Loading, pinning and upgrading in place follow package pinset. Unlike
// the XDP datapath's, these maps can be rebuilt from their source (the
// Kubernetes Services), so pins this build cannot use (another layout,
// other capacities) are replaced instead of refused; see Staged.
package servicelb

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/internal/rollback"
)

// Frontend is a service address as clients dial it: a ClusterIP (or any
// other service IP) with port and protocol. IPv4-mapped IPv6 addresses are
// treated as the IPv4 address.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto l4.Protocol
}

func (f Frontend) String() string {
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Proto.String()
}

// Backend is one endpoint of a service; it has the frontend's family.
type Backend struct {
	Addr netip.Addr
	Port uint16
}

func (b Backend) String() string { return netip.AddrPortFrom(b.Addr, b.Port).String() }

// Service is a frontend and the backends its connections are spread over.
type Service struct {
	Frontend
	// ID is stable per Kubernetes service port and chosen by the caller;
	// the frontends of one service port (IPv4 and IPv6 ClusterIP,
	// external IPs) may share it, different service ports must not. It
	// keys session affinity and lets the programs check that a backend
	// id they hold still belongs to the service.
	ID uint32
	// Backends, in no particular order; empty makes connect() and UDP
	// sends to the frontend fail at once with ECONNREFUSED, as a
	// Kubernetes Service without ready endpoints should.
	Backends []Backend
	// AffinityTimeout > 0 is ClientIP session affinity: a client (a
	// network namespace, i.e. a pod) keeps getting the backend it got
	// last until it has not used the service for this long. Millisecond
	// granularity.
	AffinityTimeout time.Duration
}

// Sizes are the capacities of the load balancer's maps. Zero fields take
// the capacity of the already pinned map, or the default for a new one; a
// non-zero field that differs from a pinned map makes Open rebuild the maps
// with the new capacity (see Staged).
type Sizes struct {
	// Services bounds the frontends (service ports × service IPs).
	Services int
	// Backends bounds the backend entries summed over all frontends; a
	// backend of two frontends counts twice. An Upsert briefly needs room
	// for the backends it adds before it removes the ones it drops.
	Backends int
	// Affinity bounds the (client, service) session-affinity entries;
	// least recently used entries are evicted. Preallocated: about 96
	// bytes per entry.
	Affinity int
}

// DefaultSizes are the capacities of new maps when Sizes has zeros.
var DefaultSizes = Sizes{Services: 65536, Backends: 65536, Affinity: 65536}

// MaxSize bounds every capacity; far beyond any node.
const MaxSize = 1 << 24

// layoutVersion names the meaning of the pinned maps' contents (see
// pinset.Object.Layout): bump it whenever a struct in sock_lb.h or the
// meaning of a field changes. 2: the sockets' translations moved from the
// LRU hash lb_revnat (keyed by socket cookie) to socket-local storage
// (lb_sock).
const layoutVersion = 2

var buildID = sync.OnceValue(func() [32]byte { return pinset.BuildID(_LbBytes) })

// attachTypes are the cgroup hooks of the programs, from the ELF sections.
var attachTypes = sync.OnceValues(func() (map[string]ebpf.AttachType, error) {
	spec, err := loadLb()
	if err != nil {
		return nil, err
	}
	out := map[string]ebpf.AttachType{}
	for name, ps := range spec.Programs {
		out[name] = ps.AttachType
	}
	return out, nil
})

// Dir is the load balancer's pin directory under the bpffs root.
func Dir(root string) string { return filepath.Join(root, "lb") }

func object(root string) (pinset.Object, error) {
	root, err := pinset.CheckDir(root)
	if err != nil {
		return pinset.Object{}, fmt.Errorf("servicelb: %w", err)
	}
	return pinset.Object{Dir: Dir(root), Meta: lbMapLbMeta, Layout: layoutVersion, Build: buildID()}, nil
}

func linksDir(o pinset.Object) string { return filepath.Join(o.Dir, "links") }

// LB is an open handle on the load balancer's maps and programs. Its
// methods are safe for concurrent use (not concurrently with Close); map
// updates of all processes are serialised with a flock on <root>/lb.
type LB struct {
	obj      pinset.Object
	sizes    Sizes
	readOnly bool

	mu     sync.Mutex // guards staged
	staged string     // why the maps were rebuilt; "" once they are the pinned ones
	objs   lbObjects  // programs nil when opened read-only
}

// Open loads the load balancer's programs and maps, pinning them under
// <root>/lb on first use and reusing the pins afterwards, so that the node
// daemon, warpctl and restarts share one set: the maps (services, and the
// sockets' reverse translations) must outlive any one process, and the
// programs stay attached through their pinned links.
//
// Pins of another build whose maps this build can use are upgraded in
// place: every pinned link switches to the new program with
// BPF_LINK_UPDATE (atomic: no socket sees the hooks missing), then the new
// programs are pinned and the build recorded. Pins whose maps it cannot use
// (another layout version or capacity) are rebuilt without a gap: Open
// returns a staged LB on new, empty maps, while the attached programs keep
// serving from the old ones; the caller fills the new maps (Upsert) and
// calls Commit. The sockets' translations and affinity are carried over
// when only capacities changed.
//
// A failed Open removes the directories it created.
func Open(root string, sizes Sizes) (_ *LB, err error) {
	o, err := object(root)
	if err != nil {
		return nil, err
	}
	if err := sizes.check(true); err != nil {
		return nil, err
	}
	if err := pinset.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	undo, err := o.Prepare("links")
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	defer func() {
		if err != nil {
			err = rollback.With(err, undo())
		}
	}()
	l := &LB{obj: o, sizes: resolveSizes(o, sizes)}
	if err := l.sizes.check(false); err != nil {
		return nil, err
	}
	if l.openCurrent() == nil {
		return l, nil
	}
	release, err := o.Lock(true)
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	// Another process may have finished while we waited for the lock.
	if l.openCurrent() == nil {
		return l, nil
	}
	if err := l.load(); err != nil {
		return nil, rollback.With(err, pinset.Close(&l.objs))
	}
	return l, nil
}

// OpenReadOnly opens the pinned maps with read-only descriptors, whatever
// build pinned them (as long as it has this build's layout), for
// inspection: it never loads, pins, attaches or writes anything. Nothing
// pinned is an error wrapping pinset.ErrNotPinned. Methods that write fail.
func OpenReadOnly(root string) (*LB, error) {
	o, err := object(root)
	if err != nil {
		return nil, err
	}
	l := &LB{obj: o, readOnly: true}
	if err := o.OpenMaps(&l.objs.lbMaps, true); err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	m := l.objs.lbMaps
	backends := int(m.LbBackends.MaxEntries())
	l.sizes = Sizes{Services: int(m.LbServices.MaxEntries()) - backends, Backends: backends,
		Affinity: int(m.LbAffinity.MaxEntries())}
	return l, nil
}

// check validates sizes; explicit allows zeros (not resolved yet).
func (s Sizes) check(explicit bool) error {
	for _, v := range []struct {
		name string
		n    int
	}{{"Services", s.Services}, {"Backends", s.Backends}, {"Affinity", s.Affinity}} {
		if (v.n == 0 && explicit) || (v.n >= 1 && v.n <= MaxSize) {
			continue
		}
		return fmt.Errorf("servicelb: Sizes.%s = %d: want 1 to %d", v.name, v.n, MaxSize)
	}
	return nil
}

// resolveSizes fills zero fields from the pinned maps or the defaults.
func resolveSizes(o pinset.Object, s Sizes) Sizes {
	pinned := func(name string) int {
		m, err := ebpf.LoadPinnedMap(o.MapPin(name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return 0
		}
		defer m.Close()
		return int(m.MaxEntries())
	}
	orDefault := func(v, pin, def int) int {
		switch {
		case v != 0:
			return v
		case pin != 0:
			return pin
		}
		return def
	}
	s.Backends = orDefault(s.Backends, pinned(lbMapLbBackends), DefaultSizes.Backends)
	// lb_services holds a header per frontend and a slot per backend.
	s.Services = orDefault(s.Services, max(pinned(lbMapLbServices)-s.Backends, 0), DefaultSizes.Services)
	s.Affinity = orDefault(s.Affinity, pinned(lbMapLbAffinity), DefaultSizes.Affinity)
	return s
}

// maxEntries are the capacities of the maps for s.
func (s Sizes) maxEntries() map[string]uint32 {
	return map[string]uint32{
		lbMapLbServices: uint32(s.Services + s.Backends),
		lbMapLbBackends: uint32(s.Backends),
		lbMapLbAffinity: uint32(s.Affinity),
	}
}

// spec is the embedded spec with the capacities of s.
func (s Sizes) spec() (*ebpf.CollectionSpec, error) {
	spec, err := loadLb()
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	for name, n := range s.maxEntries() {
		spec.Maps[name].MaxEntries = n
	}
	return spec, nil
}

// openCurrent opens the pins if they are complete, from this build and of
// the requested capacities.
func (l *LB) openCurrent() error {
	if err := l.obj.OpenCurrent(&l.objs); err != nil {
		return err
	}
	maps := pinset.Maps(&l.objs.lbMaps)
	for name, n := range l.sizes.maxEntries() {
		if got := maps[name].MaxEntries(); got != n {
			pinset.Close(&l.objs)
			return fmt.Errorf("%s has capacity %d, want %d", name, got, n)
		}
	}
	return nil
}

// load does the first load, an upgrade in place or a rebuild (staged);
// the caller holds the exclusive lock.
func (l *LB) load() error {
	spec, err := l.sizes.spec()
	if err != nil {
		return err
	}
	err = l.obj.Load(spec, &l.objs)
	if errors.Is(err, pinset.ErrIncompatible) {
		return l.stage(spec, err)
	}
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	// Upgrade: every attached cgroup switches to the new programs, one
	// atomic link update per hook, before the new programs are pinned.
	if err := updateLinks(l.obj, pinset.Programs(&l.objs.lbPrograms)); err != nil {
		return err
	}
	if err := l.obj.Commit(&l.objs, false); err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	return removeStalePins(l.obj, &l.objs, false)
}

// stage loads the programs on new, unpinned maps in place of pins this
// build cannot use (why): the attached programs keep serving from the old
// maps until Commit. What cannot be rebuilt from the Services (the
// sockets' translations and affinity) is copied if the layout allows.
func (l *LB) stage(spec *ebpf.CollectionSpec, why error) error {
	if err := pinset.LoadUnpinned(spec, &l.objs); err != nil {
		return fmt.Errorf("servicelb: rebuild the maps (%v): %w", why, err)
	}
	var old lbMaps
	if l.obj.OpenMaps(&old, true) == nil {
		// Now for most sockets, and again at Commit for those that
		// connected meanwhile.
		_ = copySockets(old.LbSock, l.objs.LbSock)
		pinset.CopyEntries(old.LbAffinity, l.objs.LbAffinity, new(lbAffKey), new(lbAff))
		pinset.CopyEntries(old.LbConfig, l.objs.LbConfig, new(uint32), new(lbConfig))
		pinset.Close(&old)
	}
	l.staged = why.Error()
	return nil
}

// Staged says why Open rebuilt the maps ("" if it did not): the pinned
// maps had another layout or capacity than this build needs. The LB then
// works on new maps that no attached program uses yet, while the pinned
// programs keep translating from the old ones; fill the new maps (every
// Service through Upsert, as after a first start) and call Commit.
func (l *LB) Staged() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.staged
}

// Commit finishes a rebuild (see Staged; no-op otherwise): every pinned
// link switches to the new programs, and with them to the new maps, with
// BPF_LINK_UPDATE (atomic per hook: a socket is translated by the old
// programs and maps or by the new ones, never by neither), then the new
// maps and programs replace the old pins and the build is recorded. If it
// is cut short, the next Open rebuilds again.
func (l *LB) Commit() error {
	if err := l.writable(); err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.staged == "" {
		return nil
	}
	if err := updateLinks(l.obj, pinset.Programs(&l.objs.lbPrograms)); err != nil {
		return err
	}
	faultpoint.Hit(fpCommitLinks)
	// The old programs no longer run: what sockets they translated since
	// the rebuild began is in the old lb_sock only. Copying it now
	// (sockets the new programs translated meanwhile keep their state)
	// leaves no socket without its translation.
	var old lbMaps
	if l.obj.OpenMaps(&old, true) == nil {
		_ = copySockets(old.LbSock, l.objs.LbSock)
		pinset.Close(&old)
	}
	if err := l.obj.Commit(&l.objs, true); err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	l.staged = ""
	return removeStalePins(l.obj, &l.objs, true)
}

// removeStalePins removes the pins of programs (and, after a rebuild,
// maps) that an older build had and this one has not, such as
// lb_sock_release and lb_revnat before socket-local storage.
func removeStalePins(o pinset.Object, objs *lbObjects, maps bool) error {
	dirs := []string{o.ProgsDir()}
	keep := map[string]bool{}
	for name := range pinset.Programs(&objs.lbPrograms) {
		keep[o.ProgPin(name)] = true
	}
	if maps {
		dirs = append(dirs, o.MapsDir())
		for name := range pinset.Maps(&objs.lbMaps) {
			keep[o.MapPin(name)] = true
		}
	}
	var errs []error
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range ents {
			path := filepath.Join(dir, e.Name())
			if !keep[path] {
				if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("servicelb: remove an older build's pins: %w", err)
	}
	return nil
}

// writable fails on a read-only LB.
func (l *LB) writable() error {
	if l.readOnly {
		return errors.New("servicelb: opened read-only")
	}
	return nil
}

// Close closes the LB's file descriptors. Pins and attachments stay; a
// staged LB that was not committed leaves the pinned one as it was.
func (l *LB) Close() error {
	if l == nil {
		return nil
	}
	return pinset.Close(&l.objs)
}

// Sizes returns the capacities of the open maps.
func (l *LB) Sizes() Sizes { return l.sizes }

// sortServices orders services by address, port, protocol.
func sortServices(s []Service) {
	sort.Slice(s, func(i, j int) bool {
		a, b := s[i].Frontend, s[j].Frontend
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c < 0
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Proto < b.Proto
	})
}
