package bpf

// Socket-level service load balancing (sock_lb.c): cgroup sock_addr
// programs that translate a Kubernetes Service address to a backend pod's
// once per socket, at connect() or sendmsg(), instead of per packet.
//
// The node daemon attaches the programs to the cgroup v2 that holds the
// node's pods (Attach) and keeps the maps in sync with the Services
// (Upsert, Delete). Pods then reach backends at pod-to-pod speed, without
// NAT on the node, and SR-IOV pods, whose packets bypass the node's
// netfilter and so any iptables/nftables service rules, reach Services too.
//
// Everything lives under <pinDir>/lb, apart from the XDP datapath's
// <pinDir>/maps and <pinDir>/progs, so that either can be loaded, upgraded
// or removed without the other:
//
//	<pinDir>/lb/maps/<map>                  lb_services, lb_backends, lb_revnat, lb_affinity, lb_config, lb_meta
//	<pinDir>/lb/progs/<program>             lb_connect4, ..., lb_sock_release
//	<pinDir>/lb/links/<cgroup hash>/<program>  one bpf_link per program and cgroup
//
// Like the datapath (Open), OpenLB loads and pins on first use, reuses the
// pins afterwards, records a build ID in lb_meta and upgrades in place; the
// flock it takes is on <pinDir>/lb.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Protocol is an IP protocol number. Only TCP and UDP are load balanced;
// sockets of other protocols pass untranslated.
type Protocol uint8

// The protocols that are load balanced.
const (
	TCP Protocol = unix.IPPROTO_TCP
	UDP Protocol = unix.IPPROTO_UDP
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto%d", uint8(p))
}

// Frontend is a service address as clients dial it: a ClusterIP (or any
// other service IP) with port and protocol. IPv4-mapped IPv6 addresses are
// treated as the IPv4 address.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto Protocol
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

// LBSizes are the capacities of the load balancer's maps. Zero fields take
// the capacity of the already pinned map, or the default for a new one;
// a non-zero field that differs from a pinned map makes OpenLB fail with
// ErrIncompatible (capacities are fixed when a map is created).
type LBSizes struct {
	// Services bounds the frontends (service ports × service IPs).
	Services int
	// Backends bounds the backend entries summed over all frontends; a
	// backend of two frontends counts twice. An Upsert briefly needs room
	// for the backends it adds before it removes the ones it drops.
	Backends int
	// RevNAT bounds the sockets whose translation is remembered (for
	// recvmsg, getpeername and UDP stickiness); least recently used
	// entries are evicted. Preallocated: about 280 bytes per entry.
	RevNAT int
	// Affinity bounds the (client, service) session-affinity entries;
	// least recently used entries are evicted. Preallocated: about 96
	// bytes per entry.
	Affinity int
}

// DefaultLBSizes are the capacities of new maps when LBSizes has zeros.
var DefaultLBSizes = LBSizes{Services: 65536, Backends: 65536, RevNAT: 65536, Affinity: 65536}

// maxLBSize bounds every capacity; far beyond any node.
const maxLBSize = 1 << 24

// lbLayoutVersion names the meaning of the pinned LB maps' contents (see
// layoutVersion): bump it whenever a struct in sock_lb.h or the meaning of
// a field changes.
const lbLayoutVersion = 1

// lbBuildID identifies the embedded LB programs (SHA-256 of the ELF).
var lbBuildID = sync.OnceValue(func() [32]byte { return sha256.Sum256(_LbBytes) })

// lbProg is one program and the cgroup hook it is attached to.
type lbProg struct {
	name   string
	attach ebpf.AttachType
}

// lbProgs are the programs Attach attaches, in order.
var lbProgs = []lbProg{
	{lbProgLbConnect4, ebpf.AttachCGroupInet4Connect},
	{lbProgLbConnect6, ebpf.AttachCGroupInet6Connect},
	{lbProgLbSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
	{lbProgLbSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
	{lbProgLbRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
	{lbProgLbRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
	{lbProgLbGetpeername4, ebpf.AttachCgroupInet4GetPeername},
	{lbProgLbGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	{lbProgLbSockRelease, ebpf.AttachCgroupInetSockRelease},
}

// lbMapNames are the pinned maps, lb_meta last.
var lbMapNames = []string{lbMapLbServices, lbMapLbBackends, lbMapLbRevnat, lbMapLbAffinity, lbMapLbConfig, lbMapLbMeta}

// LB is an open handle on the load balancer's pinned maps and programs.
// Its methods are safe for concurrent use (not concurrently with Close);
// map updates of all processes are serialised with a flock on <pinDir>/lb.
type LB struct {
	dir   string // <pinDir>/lb
	sizes LBSizes

	services, backends, revnat, affinity, config, meta *ebpf.Map

	mu    sync.Mutex // guards progs, which Attach may refresh after an upgrade
	progs map[string]*ebpf.Program
}

func lbDir(pinDir string) string       { return filepath.Join(pinDir, "lb") }
func linksDir(dir string) string       { return filepath.Join(dir, "links") }
func lbMapPin(dir, name string) string { return filepath.Join(mapsDir(dir), name) }

// OpenLB loads the load balancer's programs and maps, pinning them under
// <pinDir>/lb on first use and reusing the pins afterwards, so that the node
// daemon, warpctl and restarts share one set: the maps (services, and the
// sockets' reverse translations) must outlive any one process, and the
// programs stay attached through their pinned links.
//
// As with Open, the common case takes no lock: lb_meta says the pins come
// from this build and they are opened. Otherwise OpenLB takes an exclusive
// flock on <pinDir>/lb and loads; pins of another build are upgraded in
// place: the maps are kept if their specs and lbLayoutVersion match (else
// ErrIncompatible), every pinned link is switched to the new program with
// BPF_LINK_UPDATE (atomic: no socket sees the hooks missing), and then the
// new programs are pinned and the build recorded.
func OpenLB(pinDir string, sizes LBSizes) (*LB, error) {
	if !filepath.IsAbs(pinDir) {
		return nil, fmt.Errorf("bpf: pin directory %q is not absolute", pinDir)
	}
	dir := lbDir(filepath.Clean(pinDir))
	if err := removeMemlock(); err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if err := ensurePinDir(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(linksDir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	sizes, err := resolveLBSizes(dir, sizes)
	if err != nil {
		return nil, err
	}
	if l, err := openLBPinned(dir, sizes); err == nil {
		return l, nil
	}
	unlock, err := lockDir(dir, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if l, err := openLBPinned(dir, sizes); err == nil {
		return l, nil
	}
	return lbLoadAndPin(dir, sizes)
}

// resolveLBSizes fills zero fields from the pinned maps or the defaults and
// validates the result.
func resolveLBSizes(dir string, s LBSizes) (LBSizes, error) {
	pinned := func(name string) int {
		m, err := ebpf.LoadPinnedMap(lbMapPin(dir, name), nil)
		if err != nil {
			return 0
		}
		defer m.Close()
		return int(m.MaxEntries())
	}
	if s.Backends == 0 {
		if s.Backends = pinned(lbMapLbBackends); s.Backends == 0 {
			s.Backends = DefaultLBSizes.Backends
		}
	}
	if s.Services == 0 {
		// lb_services holds a header per frontend and a slot per backend.
		if n := pinned(lbMapLbServices); n > s.Backends {
			s.Services = n - s.Backends
		} else {
			s.Services = DefaultLBSizes.Services
		}
	}
	if s.RevNAT == 0 {
		if s.RevNAT = pinned(lbMapLbRevnat); s.RevNAT == 0 {
			s.RevNAT = DefaultLBSizes.RevNAT
		}
	}
	if s.Affinity == 0 {
		if s.Affinity = pinned(lbMapLbAffinity); s.Affinity == 0 {
			s.Affinity = DefaultLBSizes.Affinity
		}
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"Services", s.Services}, {"Backends", s.Backends}, {"RevNAT", s.RevNAT}, {"Affinity", s.Affinity}} {
		if v.n < 1 || v.n > maxLBSize {
			return s, fmt.Errorf("bpf: LBSizes.%s = %d: want 1 to %d", v.name, v.n, maxLBSize)
		}
	}
	return s, nil
}

// maxEntries are the capacities of the maps for sizes.
func (s LBSizes) maxEntries() map[string]uint32 {
	return map[string]uint32{
		lbMapLbServices: uint32(s.Services + s.Backends),
		lbMapLbBackends: uint32(s.Backends),
		lbMapLbRevnat:   uint32(s.RevNAT),
		lbMapLbAffinity: uint32(s.Affinity),
	}
}

func readLBMeta(m *ebpf.Map) (lbMeta, error) {
	var v lbMeta
	if err := m.Lookup(uint32(0), &v); err != nil {
		return v, fmt.Errorf("bpf: read lb_meta: %w", err)
	}
	return v, nil
}

func (l *LB) mapSlots() []mapSlot {
	return []mapSlot{
		{lbMapLbServices, &l.services},
		{lbMapLbBackends, &l.backends},
		{lbMapLbRevnat, &l.revnat},
		{lbMapLbAffinity, &l.affinity},
		{lbMapLbConfig, &l.config},
		{lbMapLbMeta, &l.meta},
	}
}

// openLBPinned opens the pinned set if it is complete, from this build and
// of the requested capacities.
func openLBPinned(dir string, sizes LBSizes) (_ *LB, err error) {
	l := &LB{dir: dir, sizes: sizes, progs: map[string]*ebpf.Program{}}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if l.meta, err = ebpf.LoadPinnedMap(lbMapPin(dir, lbMapLbMeta), nil); err != nil {
		return nil, err
	}
	meta, err := readLBMeta(l.meta)
	if err != nil {
		return nil, err
	}
	if meta.Magic != metaMagic || meta.Layout != lbLayoutVersion || meta.Build != lbBuildID() {
		return nil, errors.New("bpf: LB pins are from another build")
	}
	want := sizes.maxEntries()
	for _, m := range l.mapSlots() {
		if *m.dst != nil {
			continue
		}
		if *m.dst, err = ebpf.LoadPinnedMap(lbMapPin(dir, m.name), nil); err != nil {
			return nil, err
		}
		if n, ok := want[m.name]; ok && (*m.dst).MaxEntries() != n {
			return nil, fmt.Errorf("bpf: %s has capacity %d, want %d", m.name, (*m.dst).MaxEntries(), n)
		}
	}
	for _, p := range lbProgs {
		prog, err := ebpf.LoadPinnedProgram(progPin(dir, p.name), nil)
		if err != nil {
			return nil, err
		}
		l.progs[p.name] = prog
	}
	return l, nil
}

// lbSpec is the embedded spec with the capacities of sizes.
func lbSpec(sizes LBSizes) (*ebpf.CollectionSpec, error) {
	spec, err := loadLb()
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	for name, n := range sizes.maxEntries() {
		spec.Maps[name].MaxEntries = n
	}
	return spec, nil
}

// lbLoadAndPin does the first load or an upgrade; the caller holds the
// exclusive lock on dir.
func lbLoadAndPin(dir string, sizes LBSizes) (*LB, error) {
	spec, err := lbSpec(sizes)
	if err != nil {
		return nil, err
	}
	opts := ebpf.MapOptions{PinPath: mapsDir(dir)}

	// lb_meta first: it says whether the other pinned maps (if any) have
	// the layout this build expects (as in loadAndPin).
	meta, err := ebpf.NewMapWithOptions(spec.Maps[lbMapLbMeta], opts)
	if err != nil {
		return nil, lbIncompatible(dir, fmt.Errorf("map %s: %w", lbMapLbMeta, err))
	}
	defer meta.Close()
	m, err := readLBMeta(meta)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Magic == 0:
		m = lbMeta{Magic: metaMagic, Layout: lbLayoutVersion}
		if err := meta.Put(uint32(0), &m); err != nil {
			return nil, fmt.Errorf("bpf: write lb_meta: %w", err)
		}
	case m.Magic != metaMagic:
		return nil, lbIncompatible(dir, fmt.Errorf("map %s holds no warpnet metadata", lbMapLbMeta))
	case m.Layout != lbLayoutVersion:
		return nil, lbIncompatible(dir, fmt.Errorf("maps have layout version %d, this build uses %d", m.Layout, lbLayoutVersion))
	}
	var diffs []string
	for _, name := range lbMapNames {
		pm, err := ebpf.LoadPinnedMap(lbMapPin(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("bpf: open pinned map %s: %w", name, err)
		}
		if err := spec.Maps[name].Compatible(pm); err != nil {
			diffs = append(diffs, fmt.Sprintf("%s: %v", name, err))
		}
		pm.Close()
	}
	if len(diffs) > 0 {
		return nil, lbIncompatible(dir, errors.New(strings.Join(diffs, "; ")))
	}

	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: opts})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, lbIncompatible(dir, err)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("bpf: load LB programs: %+v", verr)
		}
		return nil, fmt.Errorf("bpf: load LB programs: %w", err)
	}
	defer coll.Close()

	// Upgrade: every attached cgroup switches to the new programs, one
	// atomic link update per hook, before the new programs are pinned.
	if err := updateLinks(dir, coll.Programs); err != nil {
		return nil, err
	}
	for _, p := range lbProgs {
		if err := pinReplace(coll.Programs[p.name], progPin(dir, p.name)); err != nil {
			return nil, err
		}
	}
	m.Build = lbBuildID()
	if err := meta.Put(uint32(0), &m); err != nil {
		return nil, fmt.Errorf("bpf: write lb_meta: %w", err)
	}

	l := &LB{dir: dir, sizes: sizes, progs: map[string]*ebpf.Program{}}
	for _, x := range l.mapSlots() {
		*x.dst = coll.DetachMap(x.name)
	}
	for _, p := range lbProgs {
		l.progs[p.name] = coll.DetachProgram(p.name)
	}
	return l, nil
}

// updateLinks points every pinned link at the program of the same name in
// progs. Links whose cgroup is gone are unpinned.
func updateLinks(dir string, progs map[string]*ebpf.Program) error {
	return walkLinks(dir, func(cgDir, name string, lk link.Link, info *link.Info) error {
		prog := progs[name]
		if prog == nil {
			return nil // not ours
		}
		if cg := info.Cgroup(); cg == nil || cg.CgroupId == 0 {
			return unpinDefunct(filepath.Join(cgDir, name), lk)
		}
		if id, err := progID(prog); err == nil && uint32(info.Program) == id {
			return nil
		}
		if err := lk.Update(prog); err != nil {
			return fmt.Errorf("bpf: update link %s: %w", filepath.Join(cgDir, name), err)
		}
		return nil
	})
}

// walkLinks calls fn for every pinned link under <dir>/links; lk is closed
// after fn returns.
func walkLinks(dir string, fn func(cgDir, name string, lk link.Link, info *link.Info) error) error {
	cgDirs, err := os.ReadDir(linksDir(dir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("bpf: %w", err)
	}
	for _, cg := range cgDirs {
		cgDir := filepath.Join(linksDir(dir), cg.Name())
		ents, err := os.ReadDir(cgDir)
		if err != nil {
			return fmt.Errorf("bpf: %w", err)
		}
		for _, e := range ents {
			pin := filepath.Join(cgDir, e.Name())
			lk, err := link.LoadPinnedLink(pin, nil)
			if err != nil {
				return fmt.Errorf("bpf: open pinned link %s: %w", pin, err)
			}
			info, err := lk.Info()
			if err == nil {
				err = fn(cgDir, e.Name(), lk, info)
			} else {
				err = fmt.Errorf("bpf: link %s: %w", pin, err)
			}
			lk.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// unpinDefunct removes the pin of a link whose cgroup has been removed
// (the kernel detached it then); the link goes away with its last fd.
func unpinDefunct(pin string, lk link.Link) error {
	if err := lk.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bpf: unpin %s: %w", pin, err)
	}
	_ = os.Remove(filepath.Dir(pin)) // only succeeds once empty
	return nil
}

// lbIncompatible explains what to do about pinned LB maps this build
// cannot use. Unlike the datapath's maps they can be rebuilt: the services
// come from the Kubernetes API; only the translations of open sockets and
// the affinity state are lost.
func lbIncompatible(dir string, cause error) error {
	return fmt.Errorf("bpf: %w: %v. Detach the load balancer (warpctl, or remove %s), remove %s "+
		"(rm -r %s) and restart warpd, which re-creates the maps from the Kubernetes Services; "+
		"open connections keep their backends but may show the backend as their peer",
		ErrIncompatible, cause, linksDir(dir), dir, dir)
}

// currentProgs returns the programs to attach: the pinned ones, which are
// newer than l's if another process upgraded since OpenLB. The caller holds
// the lock on the pin directory.
func (l *LB) currentProgs() (map[string]*ebpf.Program, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.progs == nil {
		return nil, errors.New("bpf: LB is closed")
	}
	for _, p := range lbProgs {
		pinned, err := ebpf.LoadPinnedProgram(progPin(l.dir, p.name), nil)
		if err != nil {
			return nil, fmt.Errorf("bpf: open pinned %s: %w", p.name, err)
		}
		if sameProgram(pinned, l.progs[p.name]) {
			pinned.Close()
			continue
		}
		if old := l.progs[p.name]; old != nil {
			old.Close()
		}
		l.progs[p.name] = pinned
	}
	return l.progs, nil
}

// Close closes the LB's file descriptors. Pins and attachments stay.
func (l *LB) Close() error {
	if l == nil {
		return nil
	}
	var errs []error
	for _, m := range l.mapSlots() {
		if *m.dst != nil {
			errs = append(errs, (*m.dst).Close())
			*m.dst = nil
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.progs {
		errs = append(errs, p.Close())
	}
	l.progs = nil
	return errors.Join(errs...)
}

// Sizes returns the capacities of the open maps.
func (l *LB) Sizes() LBSizes { return l.sizes }

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
