package servicelb

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/internal/rollback"
)

// lb_config.flags (LB_CFG_* in sock_lb.h).
const cfgHostOnly = 1 << 0

// maxBackendsPerService is bounded by the 16-bit slot number of svc_key.
const maxBackendsPerService = math.MaxUint16

// AffinityEntry is one client's session-affinity state for a service.
type AffinityEntry struct {
	// NetNSCookie identifies the client's network namespace (the pod).
	NetNSCookie uint64
	ServiceID   uint32
	Proto       l4.Protocol
	IPv6        bool
	BackendID   uint32
	// Backend is the backend BackendID names, zero if it is gone.
	Backend Backend
	// LastUsed is when the client last connected (or sent) to the service.
	LastUsed time.Time
}

// RevNATEntry is one remembered translation of a socket: it talks to
// Backend while the application believes it talks to Frontend.
type RevNATEntry struct {
	Cookie    uint64 // the socket's cookie (SO_COOKIE)
	Frontend  Frontend
	Backend   Backend
	ServiceID uint32
	BackendID uint32
}

// FullError says a map has no room for an entry: Sizes are too small for
// what is being written (see Sizes for what each map holds).
type FullError struct {
	Map      string // lb_services or lb_backends
	Capacity int    // its capacity in entries
}

func (e *FullError) Error() string { return fmt.Sprintf("%s is full (%d entries)", e.Map, e.Capacity) }

// netPort converts a port to network byte order as the programs see it
// (the generated types, and so this package, are little-endian only).
func netPort(p uint16) uint16 { return bits.ReverseBytes16(p) }

// normalize validates a frontend and unmaps its address.
func (f Frontend) normalize() (Frontend, error) {
	f.Addr = f.Addr.Unmap()
	switch {
	case !f.Addr.IsValid():
		return f, errors.New("servicelb: frontend address is not set")
	case f.Addr.Zone() != "":
		return f, fmt.Errorf("servicelb: frontend %s has a zone", f.Addr)
	case f.Port == 0:
		return f, fmt.Errorf("servicelb: frontend %s has port 0", f.Addr)
	case f.Proto != l4.TCP && f.Proto != l4.UDP:
		return f, fmt.Errorf("servicelb: frontend %s: protocol %d is not TCP or UDP", f.Addr, f.Proto)
	}
	return f, nil
}

// key is the lb_services key of the header (gen 0, slot 0) or of a slot.
func (f Frontend) key(gen, slot uint16) lbSvcKey {
	addr, family := pinset.EncodeAddr(f.Addr)
	return lbSvcKey{Addr: addr, Port: netPort(f.Port), Proto: uint8(f.Proto), Family: family, Slot: slot, Gen: gen}
}

func frontendOf(k lbSvcKey) Frontend {
	return Frontend{Addr: pinset.DecodeAddr(k.Addr, k.Family), Port: netPort(k.Port), Proto: l4.Protocol(k.Proto)}
}

func backendOf(v lbBackend) Backend {
	return Backend{Addr: pinset.DecodeAddr(v.Addr, v.Family), Port: netPort(v.Port)}
}

// headerKey is the key of the header of the frontend k (a slot) belongs to.
func headerKey(k lbSvcKey) lbSvcKey {
	k.Slot, k.Gen = 0, 0
	return k
}

// validate checks svc and returns it with unmapped addresses and the
// affinity timeout in milliseconds.
func (svc Service) validate(maxBackends int) (Service, uint32, error) {
	fe, err := svc.Frontend.normalize()
	if err != nil {
		return svc, 0, err
	}
	svc.Frontend = fe
	if len(svc.Backends) > maxBackendsPerService || len(svc.Backends) > maxBackends {
		return svc, 0, fmt.Errorf("servicelb: service %s has %d backends, at most %d fit",
			fe, len(svc.Backends), min(maxBackendsPerService, maxBackends))
	}
	bes := make([]Backend, len(svc.Backends))
	seen := make(map[Backend]bool, len(bes))
	for i, b := range svc.Backends {
		b.Addr = b.Addr.Unmap()
		switch {
		case !b.Addr.IsValid() || b.Addr.IsUnspecified():
			return svc, 0, fmt.Errorf("servicelb: service %s: backend #%d has no address", fe, i)
		case b.Addr.Zone() != "":
			return svc, 0, fmt.Errorf("servicelb: service %s: backend %s has a zone", fe, b.Addr)
		case b.Addr.Is4() != fe.Addr.Is4():
			return svc, 0, fmt.Errorf("servicelb: service %s: backend %s is of another address family", fe, b)
		case b.Port == 0:
			return svc, 0, fmt.Errorf("servicelb: service %s: backend %s has port 0", fe, b.Addr)
		case seen[b]:
			return svc, 0, fmt.Errorf("servicelb: service %s: backend %s is listed twice", fe, b)
		}
		seen[b] = true
		bes[i] = b
	}
	svc.Backends = bes
	if svc.AffinityTimeout < 0 {
		return svc, 0, fmt.Errorf("servicelb: service %s: negative affinity timeout", fe)
	}
	ms := (svc.AffinityTimeout + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		return svc, 0, fmt.Errorf("servicelb: service %s: affinity timeout %v is too long", fe, svc.AffinityTimeout)
	}
	return svc, uint32(ms), nil
}

// slotIDs reads the backend ids in slots 1..count of generation gen of fe
// (0 for a missing slot).
func (l *LB) slotIDs(fe Frontend, gen uint16, count uint32) []uint32 {
	ids := make([]uint32, 0, min(count, maxBackendsPerService))
	for i := uint32(1); i <= count && i <= maxBackendsPerService; i++ {
		var v lbSvc
		if err := l.objs.LbServices.Lookup(fe.key(gen, uint16(i)), &v); err == nil {
			ids = append(ids, v.BackendId)
		} else {
			ids = append(ids, 0)
		}
	}
	return ids
}

// newBackend stores b under a fresh random id; ids are per frontend, so a
// backend shared by two frontends has two ids.
func (l *LB) newBackend(v *lbBackend) (uint32, error) {
	for range 64 {
		id := rand.Uint32()
		if id == 0 {
			continue
		}
		err := l.objs.LbBackends.Update(id, v, ebpf.UpdateNoExist)
		switch {
		case err == nil:
			return id, nil
		case errors.Is(err, ebpf.ErrKeyExist):
			continue
		case errors.Is(err, unix.E2BIG):
			return 0, &FullError{Map: lbMapLbBackends, Capacity: l.sizes.Backends}
		default:
			return 0, fmt.Errorf("write lb_backends: %w", err)
		}
	}
	return 0, errors.New("no free backend id found")
}

func (l *LB) putService(k lbSvcKey, v *lbSvc) error {
	if err := l.objs.LbServices.Put(k, v); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return &FullError{Map: lbMapLbServices, Capacity: l.sizes.Services + l.sizes.Backends}
		}
		return fmt.Errorf("write lb_services: %w", err)
	}
	return nil
}

// deleteKey deletes key from m; absent is fine.
func deleteKey(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// deleteSlots deletes the slots of generation gen of fe from first on: at
// least up to last, and beyond as long as there are any (left by an
// interrupted update).
func (l *LB) deleteSlots(fe Frontend, gen uint16, first, last uint32) error {
	for i := first; i <= maxBackendsPerService; i++ {
		err := l.objs.LbServices.Delete(fe.key(gen, uint16(i)))
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			if i > last {
				return nil
			}
		case err != nil:
			return fmt.Errorf("delete slot %d/%d of %s: %w", gen, i, fe, err)
		}
	}
	return nil
}

// otherGen is the slot generation an update of a header with gen writes.
func otherGen(gen uint32) uint16 {
	if gen == 1 {
		return 2
	}
	return 1
}

// Crash points (see internal/faultpoint): the crash tests kill a process
// at each and check what the next one makes of what it left behind.
const (
	fpUpsertBackends = "servicelb.upsert.after-backends"
	fpUpsertSlots    = "servicelb.upsert.after-slots"
	fpUpsertHeader   = "servicelb.upsert.after-header"
	fpCommitLinks    = "servicelb.commit.after-links"
)

// Upsert creates or updates a service so that no connect() ever sees it
// half-written. The slots are double-buffered (see svc_key in sock_lb.h):
//
//  1. backends that are new to the frontend are written under fresh ids
//     (backends it keeps keep their ids, and so their affinity entries
//     and the UDP sockets that stick to them);
//  2. the slots 1..n of the generation the header does not use are
//     written;
//  3. the header (slot 0) switches to the new generation, count, affinity
//     timeout and id in one map update;
//  4. only then are the old generation's slots and the dropped backends
//     deleted.
//
// A program that read the old header finds the old generation complete, or
// finds a slot or backend gone (step 4) and reads the header again. Updates
// of all processes are serialised by the flock on the pin directory. On
// error before step 3 the service is left as it was; what a process killed
// in the middle leaves behind is never read, and GC removes it.
func (l *LB) Upsert(svc Service) (err error) {
	if err := l.writable(); err != nil {
		return err
	}
	svc, affMs, err := svc.validate(l.sizes.Backends)
	if err != nil {
		return err
	}
	fe := svc.Frontend
	_, family := pinset.EncodeAddr(fe.Addr)
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	defer func() {
		if err != nil {
			err = fmt.Errorf("servicelb: service %s: %w", fe, err)
		}
	}()
	services, backends := l.objs.LbServices, l.objs.LbBackends

	var old lbSvc
	var oldIDs []uint32
	if err := services.Lookup(fe.key(0, 0), &old); err == nil {
		oldIDs = l.slotIDs(fe, uint16(old.Gen), old.Count)
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read: %w", err)
	}
	gen := otherGen(old.Gen)
	// The backends the frontend has now, by address; kept only if the
	// service keeps its id, which the programs check backends against.
	keep := map[Backend]uint32{}
	if old.SvcId == svc.ID {
		for _, id := range oldIDs {
			var v lbBackend
			if id != 0 && backends.Lookup(id, &v) == nil && v.SvcId == svc.ID && v.Family == family {
				keep[backendOf(v)] = id
			}
		}
	}

	var undo rollback.Stack
	defer undo.OnError(&err)
	newIDs := make([]uint32, len(svc.Backends))
	for i, b := range svc.Backends {
		if id, ok := keep[b]; ok {
			newIDs[i] = id
			continue
		}
		a, _ := pinset.EncodeAddr(b.Addr)
		id, err := l.newBackend(&lbBackend{Addr: a, Port: netPort(b.Port), Family: family, SvcId: svc.ID})
		if err != nil {
			return err
		}
		undo.Push(fmt.Sprintf("delete backend %d", id), func() error { return deleteKey(backends, id) })
		newIDs[i] = id
	}
	faultpoint.Hit(fpUpsertBackends)
	undo.Push(fmt.Sprintf("delete generation %d slots", gen), func() error {
		return l.deleteSlots(fe, gen, 1, uint32(len(newIDs)))
	})
	for i, id := range newIDs {
		if err := l.putService(fe.key(gen, uint16(i+1)), &lbSvc{BackendId: id, SvcId: svc.ID}); err != nil {
			return err
		}
	}
	// Slots beyond n in this generation (an interrupted update's) are
	// never read, but would confuse the next update's cleanup.
	if err := l.deleteSlots(fe, gen, uint32(len(newIDs))+1, 0); err != nil {
		return err
	}
	faultpoint.Hit(fpUpsertSlots)
	hdr := lbSvc{Count: uint32(len(newIDs)), SvcId: svc.ID, AffinityMs: affMs, Gen: uint32(gen)}
	if err := l.putService(fe.key(0, 0), &hdr); err != nil {
		return err
	}
	undo = rollback.Stack{} // switched: from here on, failures leave garbage for GC, not a half service
	faultpoint.Hit(fpUpsertHeader)

	var errs []error
	if old.Gen != 0 {
		errs = append(errs, l.deleteSlots(fe, uint16(old.Gen), 1, old.Count))
	}
	inUse := make(map[uint32]bool, len(newIDs))
	for _, id := range newIDs {
		inUse[id] = true
	}
	for _, id := range oldIDs {
		if id != 0 && !inUse[id] {
			errs = append(errs, deleteKey(backends, id))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("updated, but removing the old entries failed (GC removes them): %w", err)
	}
	return nil
}

// Delete removes a service: the header first, so that new connects pass
// untranslated at once, then its slots and backends. Deleting a service
// that does not exist is not an error. Sockets that were translated keep
// their backend (and their reverse translation).
func (l *LB) Delete(fe Frontend) error {
	if err := l.writable(); err != nil {
		return err
	}
	fe, err := fe.normalize()
	if err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	services := l.objs.LbServices
	var hdr lbSvc
	if err := services.Lookup(fe.key(0, 0), &hdr); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("servicelb: read service %s: %w", fe, err)
	}
	ids := l.slotIDs(fe, uint16(hdr.Gen), hdr.Count)
	if err := deleteKey(services, fe.key(0, 0)); err != nil {
		return fmt.Errorf("servicelb: delete service %s: %w", fe, err)
	}
	var errs []error
	for _, gen := range []uint16{1, 2} {
		errs = append(errs, l.deleteSlots(fe, gen, 1, 0))
	}
	for _, id := range ids {
		if id != 0 {
			errs = append(errs, deleteKey(l.objs.LbBackends, id))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("servicelb: deleted %s, but removing its entries failed (GC removes them): %w", fe, err)
	}
	return nil
}

// GC removes what interrupted updates left behind, which the programs
// never read but which takes room: slots that no header counts (beyond its
// count, of its other generation, or of a frontend without a header) and
// backends that no counted slot refers to. It returns how many entries it
// removed. The node daemon calls it on each periodic resync.
func (l *LB) GC() (int, error) {
	if err := l.writable(); err != nil {
		return 0, err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return 0, fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	services, backends := l.objs.LbServices, l.objs.LbBackends
	headers, slots, err := l.readServices()
	if err != nil {
		return 0, err
	}
	var stale []any
	used := map[uint32]bool{}
	for k, id := range slots {
		h, ok := headers[headerKey(k)]
		if ok && uint32(k.Gen) == h.Gen && k.Slot >= 1 && uint32(k.Slot) <= h.Count {
			used[id] = true
			continue
		}
		stale = append(stale, k)
	}
	var bs []any
	var id uint32
	var b lbBackend
	bit := backends.Iterate()
	for bit.Next(&id, &b) {
		if !used[id] {
			bs = append(bs, id)
		}
	}
	if err := bit.Err(); err != nil {
		return 0, fmt.Errorf("servicelb: read lb_backends: %w", err)
	}
	// Slots first: a backend is only unused once no slot names it.
	n := 0
	var errs []error
	for _, k := range stale {
		if err := deleteKey(services, k); err != nil {
			errs = append(errs, err)
		} else {
			n++
		}
	}
	for _, id := range bs {
		if err := deleteKey(backends, id); err != nil {
			errs = append(errs, err)
		} else {
			n++
		}
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("servicelb: gc: %w", err)
	}
	return n, nil
}

// readServices reads lb_services: the headers, and the slots' backend ids.
func (l *LB) readServices() (headers map[lbSvcKey]lbSvc, slots map[lbSvcKey]uint32, err error) {
	headers, slots = map[lbSvcKey]lbSvc{}, map[lbSvcKey]uint32{}
	var k lbSvcKey
	var v lbSvc
	it := l.objs.LbServices.Iterate()
	for it.Next(&k, &v) {
		if k.Slot == 0 && k.Gen == 0 {
			headers[k] = v
		} else {
			slots[k] = v.BackendId
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("servicelb: read lb_services: %w", err)
	}
	return headers, slots, nil
}

// Services returns the services the maps hold, ordered by frontend: what
// the programs act on now. The node daemon reconciles against it after a
// restart; warpctl shows it.
func (l *LB) Services() ([]Service, error) {
	release, err := l.obj.Lock(false)
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	headers, slots, err := l.readServices()
	if err != nil {
		return nil, err
	}
	out := make([]Service, 0, len(headers))
	for k, h := range headers {
		svc := Service{
			Frontend:        frontendOf(k),
			ID:              h.SvcId,
			AffinityTimeout: time.Duration(h.AffinityMs) * time.Millisecond,
		}
		for i := uint32(1); i <= h.Count && i <= maxBackendsPerService; i++ {
			sk := k
			sk.Slot, sk.Gen = uint16(i), uint16(h.Gen)
			id, ok := slots[sk]
			if !ok {
				continue
			}
			var b lbBackend
			if err := l.objs.LbBackends.Lookup(id, &b); err != nil {
				continue
			}
			svc.Backends = append(svc.Backends, backendOf(b))
		}
		out = append(out, svc)
	}
	sortServices(out)
	return out, nil
}

// bootToWall converts bpf_ktime_get_boot_ns() values to wall-clock time.
func bootToWall() func(ns uint64) time.Time {
	now := time.Now()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return func(uint64) time.Time { return time.Time{} }
	}
	boot := ts.Nano()
	return func(ns uint64) time.Time { return now.Add(-time.Duration(boot - int64(ns))) }
}

// Affinity returns the session-affinity entries (for warpctl). Entries
// older than their service's timeout are still listed: the programs ignore
// them, and the LRU map evicts them eventually.
func (l *LB) Affinity() ([]AffinityEntry, error) {
	wall := bootToWall()
	var out []AffinityEntry
	var k lbAffKey
	var v lbAff
	it := l.objs.LbAffinity.Iterate()
	for it.Next(&k, &v) {
		e := AffinityEntry{
			NetNSCookie: k.NetnsCookie, ServiceID: k.SvcId, Proto: l4.Protocol(k.Proto),
			IPv6: k.Family == pinset.FamilyV6, BackendID: v.BackendId, LastUsed: wall(v.LastUsed),
		}
		var b lbBackend
		if l.objs.LbBackends.Lookup(v.BackendId, &b) == nil {
			e.Backend = backendOf(b)
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("servicelb: read lb_affinity: %w", err)
	}
	return out, nil
}

// netnsCookie returns the cookie of the calling thread's network namespace.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("servicelb: socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("servicelb: SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// SetHostOnly switches host-only mode: when on, only sockets of the host
// network namespace are translated and pods' sockets pass untouched (for
// pods whose service mesh sidecar must see the service address). The host
// namespace is the calling thread's: call it in the node's network
// namespace, as the node daemon runs.
func (l *LB) SetHostOnly(on bool) error {
	if err := l.writable(); err != nil {
		return err
	}
	var cfg lbConfig
	if on {
		c, err := netnsCookie()
		if err != nil {
			return err
		}
		cfg = lbConfig{Flags: cfgHostOnly, HostNetns: c}
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	if err := l.objs.LbConfig.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("servicelb: write lb_config: %w", err)
	}
	return nil
}

// HostOnly reports whether host-only mode is on.
func (l *LB) HostOnly() (bool, error) {
	var cfg lbConfig
	if err := l.objs.LbConfig.Lookup(uint32(0), &cfg); err != nil {
		return false, fmt.Errorf("servicelb: read lb_config: %w", err)
	}
	return cfg.Flags&cfgHostOnly != 0, nil
}

// PinnedServices reads the services pinned under the bpffs root through a
// read-only open, closing it afterwards (tools and tests poll it); an error
// while nothing is pinned there yet.
func PinnedServices(root string) ([]Service, error) {
	lb, err := OpenReadOnly(root)
	if err != nil {
		return nil, err
	}
	defer lb.Close()
	return lb.Services()
}
