// Package nodeport is warpd's north-south load balancer (nodeport.c): per
// packet, in XDP and tc (tcx), it serves NodePorts, local ExternalIPs and
// LoadBalancer ingress IPs to clients outside the cluster, without netfilter
// or its conntrack. One C core runs from both hooks.
//
// The node daemon describes each service port and address family as a
// Service (frontends, backends, mode) and keeps the maps in step with
// Kubernetes (Upsert, Delete); it tells the programs the node's interfaces
// (SetInterfaces), tunnel peers (SetTunnelPeers) and settings (Configure),
// and attaches the programs (AttachXDP, AttachTC). Backends are picked by
// Maglev consistent hashing (maglev.go) or at random; flows are tracked in
// an LRU map of the package's own (Conns), with idle timeouts per protocol
// and TCP state; packets are counted per service and verdict (Stats).
//
// Everything is pinned under <root>/nodeport, apart from the other
// datapaths' pins, so that each can be loaded, upgraded or removed alone:
//
//	<root>/nodeport/maps/<map>     np_frontends, np_services, np_maglev, np_backends, np_conns, ...
//	<root>/nodeport/progs/<prog>   np_xdp, np_tc
//	<root>/nodeport/links/<hook>-<ifindex>   one bpf_link per interface and hook
//
// Loading, pinning and upgrading in place follow package pinset. The
// service maps can be rebuilt from Kubernetes, so pins this build cannot use
// (another layout or capacity) are replaced instead of refused (see Staged);
// tracked connections are carried over when only capacities changed.
package nodeport

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/rollback"
)

// Sizes are the capacities of the maps. Zero fields take the pinned map's
// capacity, or the default for a new one; a non-zero field that differs
// from a pinned map makes Open rebuild the maps (see Staged).
type Sizes struct {
	// Frontends bounds the (address, port, protocol) frontends: node
	// addresses × NodePorts, local ExternalIPs, LoadBalancer IPs.
	Frontends int
	// Services bounds the service ports × address families; each has a
	// Maglev table (4 bytes per slot).
	Services int
	// Backends bounds the backend entries summed over services.
	Backends int
	// Conns bounds the tracked connections: a flow takes two entries
	// (client side and reply side), one when DSR sends its replies past
	// this node. Least recently used entries are evicted when it is full.
	// Preallocated: about 200 bytes per entry.
	Conns int
}

// DefaultSizes are the capacities of new maps when Sizes has zeros.
var DefaultSizes = Sizes{Frontends: 65536, Services: 65536, Backends: 65536, Conns: 131072}

// maxSize bounds every capacity; far beyond any node.
const maxSize = 1 << 24

// layoutVersion names the meaning of the pinned maps' contents (see
// pinset.Object.Layout): bump it whenever a struct in nodeport.h or the
// meaning of a field changes.
const layoutVersion = 1

var buildID = sync.OnceValue(func() [32]byte { return pinset.BuildID(_NpBytes) })

// Dir is the load balancer's pin directory under the bpffs root.
func Dir(root string) string { return filepath.Join(root, "nodeport") }

func object(root string) (pinset.Object, error) {
	root, err := pinset.CheckDir(root)
	if err != nil {
		return pinset.Object{}, fmt.Errorf("nodeport: %w", err)
	}
	return pinset.Object{Dir: Dir(root), Meta: npMapNpMeta, Layout: layoutVersion, Build: buildID()}, nil
}

func linksDir(o pinset.Object) string { return filepath.Join(o.Dir, "links") }

// LB is an open handle on the north-south load balancer. Its methods are
// safe for concurrent use (not concurrently with Close). One process
// writes the service maps (warpd); every writer of the pins serialises on
// a flock of <root>/nodeport.
type LB struct {
	obj      pinset.Object
	sizes    Sizes
	readOnly bool

	mu     sync.Mutex // guards staged, ids, frontends
	staged string     // why the maps were rebuilt; "" once they are the pinned ones
	objs   npObjects  // programs nil when opened read-only
	inner  *ebpf.MapSpec
	// ids caches the backend ids of every service, read from the maps
	// at first use, so that Upsert keeps the ids of backends that stay.
	ids map[ServiceKey]map[backendKey]uint32
	// frontends caches np_frontends, read with ids, so that Upsert and
	// Delete find a service's stale frontends without reading the whole
	// map: a change to one service costs its own entries only.
	frontends *frontendIndex
}

// Open loads the programs and maps, pinning them under <root>/nodeport on
// first use and reusing the pins afterwards: warpd, warpctl and restarts
// share one set, and the tracked connections outlive any one process.
//
// Pins of another build whose maps this build can use are upgraded in
// place: every pinned link switches to the new program (BPF_LINK_UPDATE,
// atomic: no packet sees the hook empty), then the new programs are pinned
// and the build recorded. Pins whose maps it cannot use (another layout
// version or capacity) are rebuilt without a gap: Open returns a staged LB
// on new, empty maps while the attached programs keep serving from the old
// ones; the caller fills the new maps and calls Commit.
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
		return nil, fmt.Errorf("nodeport: %w", err)
	}
	undo, err := o.Prepare("links")
	if err != nil {
		return nil, fmt.Errorf("nodeport: %w", err)
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
	spec, err := l.sizes.spec()
	if err != nil {
		return nil, err
	}
	l.inner = spec.Maps[npMapNpMaglev].InnerMap.Copy()
	if l.openCurrent() == nil {
		return l, nil
	}
	release, err := o.Lock(true)
	if err != nil {
		return nil, fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	// Another process may have finished while we waited for the lock.
	if l.openCurrent() == nil {
		return l, nil
	}
	if err := l.load(spec); err != nil {
		return nil, rollback.With(err, pinset.Close(&l.objs))
	}
	return l, nil
}

// OpenReadOnly opens the pinned maps with read-only descriptors, whatever
// build pinned them (as long as it has this build's layout), for
// inspection: it never loads, pins, attaches or writes anything. Nothing
// pinned is an error wrapping pinset.ErrNotPinned.
func OpenReadOnly(root string) (*LB, error) {
	o, err := object(root)
	if err != nil {
		return nil, err
	}
	l := &LB{obj: o, readOnly: true}
	if err := o.OpenMaps(&l.objs.npMaps, true); err != nil {
		return nil, fmt.Errorf("nodeport: %w", err)
	}
	m := l.objs.npMaps
	l.sizes = Sizes{Frontends: int(m.NpFrontends.MaxEntries()), Services: int(m.NpServices.MaxEntries()),
		Backends: int(m.NpBackends.MaxEntries()), Conns: int(m.NpConns.MaxEntries())}
	return l, nil
}

// check validates sizes; explicit allows zeros (not resolved yet).
func (s Sizes) check(explicit bool) error {
	for _, v := range []struct {
		name string
		n    int
	}{{"Frontends", s.Frontends}, {"Services", s.Services}, {"Backends", s.Backends}, {"Conns", s.Conns}} {
		if (v.n == 0 && explicit) || (v.n >= 1 && v.n <= maxSize) {
			continue
		}
		return fmt.Errorf("nodeport: Sizes.%s = %d: want 1 to %d", v.name, v.n, maxSize)
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
	orDefault := func(v int, name string, def int) int {
		if v != 0 {
			return v
		}
		if p := pinned(name); p != 0 {
			return p
		}
		return def
	}
	s.Frontends = orDefault(s.Frontends, npMapNpFrontends, DefaultSizes.Frontends)
	s.Services = orDefault(s.Services, npMapNpServices, DefaultSizes.Services)
	s.Backends = orDefault(s.Backends, npMapNpBackends, DefaultSizes.Backends)
	s.Conns = orDefault(s.Conns, npMapNpConns, DefaultSizes.Conns)
	return s
}

// maxEntries are the capacities of the maps for s.
func (s Sizes) maxEntries() map[string]uint32 {
	return map[string]uint32{
		npMapNpFrontends: uint32(s.Frontends),
		npMapNpServices:  uint32(s.Services),
		npMapNpMaglev:    uint32(s.Services),
		npMapNpBackends:  uint32(s.Backends),
		npMapNpConns:     uint32(s.Conns),
		// a few verdicts per service are ever counted
		npMapNpStats: uint32(min(4*s.Services, maxSize)),
	}
}

// spec is the embedded spec with the capacities of s.
func (s Sizes) spec() (*ebpf.CollectionSpec, error) {
	spec, err := loadNp()
	if err != nil {
		return nil, fmt.Errorf("nodeport: %w", err)
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
	maps := pinset.Maps(&l.objs.npMaps)
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
func (l *LB) load(spec *ebpf.CollectionSpec) error {
	err := l.obj.Load(spec, &l.objs)
	if errors.Is(err, pinset.ErrIncompatible) {
		return l.stage(spec, err)
	}
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	// Upgrade: every attached interface switches to the new programs, one
	// atomic link update per hook, before the new programs are pinned.
	if err := l.updateLinks(); err != nil {
		return err
	}
	if err := l.obj.Commit(&l.objs, false); err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	return nil
}

// stage loads the programs on new, unpinned maps in place of pins this
// build cannot use (why): the attached programs keep serving from the old
// maps until Commit. The tracked connections and the interfaces, tunnel
// peers and settings (which the caller sets again anyway) are copied if
// the layout allows.
func (l *LB) stage(spec *ebpf.CollectionSpec, why error) error {
	if err := pinset.LoadUnpinned(spec, &l.objs); err != nil {
		return fmt.Errorf("nodeport: rebuild the maps (%v): %w", why, err)
	}
	var old npMaps
	if l.obj.OpenMaps(&old, true) == nil {
		pinset.CopyEntries(old.NpConns, l.objs.NpConns, new(npNpCtKey), new(npNpCt))
		pinset.CopyEntries(old.NpIfaces, l.objs.NpIfaces, new(uint32), new(npNpIface))
		pinset.CopyEntries(old.NpTunnels, l.objs.NpTunnels, new(npNpTunnelKey), new(npNpTunnel))
		pinset.CopyEntries(old.NpConfig, l.objs.NpConfig, new(uint32), new(npNpCfg))
		pinset.Close(&old)
	}
	l.staged = why.Error()
	return nil
}

// Staged says why Open rebuilt the maps ("" if it did not): the pinned
// maps had another layout or capacity than this build needs. The LB then
// works on new maps that no attached program uses yet, while the pinned
// programs keep serving from the old ones; fill the new maps (every
// Service through Upsert, the interfaces, tunnel peers and settings) and
// call Commit.
func (l *LB) Staged() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.staged
}

// Commit finishes a rebuild (see Staged; no-op otherwise): every pinned
// link switches to the new programs, and with them to the new maps
// (atomic per link), then the new maps and programs replace the old pins
// and the build is recorded. If it is cut short, the next Open rebuilds
// again.
func (l *LB) Commit() error {
	if err := l.writable(); err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.staged == "" {
		return nil
	}
	if err := l.updateLinks(); err != nil {
		return err
	}
	if err := l.obj.Commit(&l.objs, true); err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	l.staged = ""
	return nil
}

// writable fails on a read-only LB.
func (l *LB) writable() error {
	if l.readOnly {
		return errors.New("nodeport: opened read-only")
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
