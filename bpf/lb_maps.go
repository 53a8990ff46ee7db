package bpf

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// lb_config.flags (LB_CFG_* in sock_lb.h).
const lbCfgHostOnly = 1 << 0

// maxBackendsPerService is bounded by the 16-bit slot number of svc_key.
const maxBackendsPerService = math.MaxUint16

// AffinityEntry is one client's session-affinity state for a service.
type AffinityEntry struct {
	// NetNSCookie identifies the client's network namespace (the pod).
	NetNSCookie uint64
	ServiceID   uint32
	Proto       Protocol
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

// netPort converts a port to network byte order as the programs see it
// (the generated types, and so this package, are little-endian only).
func netPort(p uint16) uint16 { return bits.ReverseBytes16(p) }

// lbAddr encodes an address like ip_key (family 4: 4 bytes + 12 zeros).
func lbAddr(a netip.Addr) ([16]uint8, uint8) {
	k := ipKey(a.Unmap())
	return k.Addr, k.Family
}

func lbAddrOf(addr [16]uint8, family uint8) netip.Addr {
	return xdpIpKey{Family: family, Addr: addr}.addr()
}

// normalize validates a frontend and unmaps its address.
func (f Frontend) normalize() (Frontend, error) {
	f.Addr = f.Addr.Unmap()
	switch {
	case !f.Addr.IsValid():
		return f, errors.New("bpf: frontend address is not set")
	case f.Addr.Zone() != "":
		return f, fmt.Errorf("bpf: frontend %s has a zone", f.Addr)
	case f.Port == 0:
		return f, fmt.Errorf("bpf: frontend %s has port 0", f.Addr)
	case f.Proto != TCP && f.Proto != UDP:
		return f, fmt.Errorf("bpf: frontend %s: protocol %d is not TCP or UDP", f.Addr, f.Proto)
	}
	return f, nil
}

// key is the lb_services key of the header (gen 0, slot 0) or of a slot.
func (f Frontend) key(gen, slot uint16) lbSvcKey {
	addr, family := lbAddr(f.Addr)
	return lbSvcKey{Addr: addr, Port: netPort(f.Port), Proto: uint8(f.Proto), Family: family, Slot: slot, Gen: gen}
}

func frontendOf(k lbSvcKey) Frontend {
	return Frontend{Addr: lbAddrOf(k.Addr, k.Family), Port: netPort(k.Port), Proto: Protocol(k.Proto)}
}

func backendOf(v lbBackend) Backend {
	return Backend{Addr: lbAddrOf(v.Addr, v.Family), Port: netPort(v.Port)}
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
		return svc, 0, fmt.Errorf("bpf: service %s has %d backends, at most %d fit",
			fe, len(svc.Backends), min(maxBackendsPerService, maxBackends))
	}
	bes := make([]Backend, len(svc.Backends))
	seen := make(map[Backend]bool, len(bes))
	for i, b := range svc.Backends {
		b.Addr = b.Addr.Unmap()
		switch {
		case !b.Addr.IsValid() || b.Addr.IsUnspecified():
			return svc, 0, fmt.Errorf("bpf: service %s: backend #%d has no address", fe, i)
		case b.Addr.Zone() != "":
			return svc, 0, fmt.Errorf("bpf: service %s: backend %s has a zone", fe, b.Addr)
		case b.Addr.Is4() != fe.Addr.Is4():
			return svc, 0, fmt.Errorf("bpf: service %s: backend %s is of another address family", fe, b)
		case b.Port == 0:
			return svc, 0, fmt.Errorf("bpf: service %s: backend %s has port 0", fe, b.Addr)
		case seen[b]:
			return svc, 0, fmt.Errorf("bpf: service %s: backend %s is listed twice", fe, b)
		}
		seen[b] = true
		bes[i] = b
	}
	svc.Backends = bes
	if svc.AffinityTimeout < 0 {
		return svc, 0, fmt.Errorf("bpf: service %s: negative affinity timeout", fe)
	}
	ms := (svc.AffinityTimeout + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		return svc, 0, fmt.Errorf("bpf: service %s: affinity timeout %v is too long", fe, svc.AffinityTimeout)
	}
	return svc, uint32(ms), nil
}

// slotIDs reads the backend ids in slots 1..count of generation gen of fe
// (0 for a missing slot).
func (l *LB) slotIDs(fe Frontend, gen uint16, count uint32) []uint32 {
	ids := make([]uint32, 0, min(count, maxBackendsPerService))
	for i := uint32(1); i <= count && i <= maxBackendsPerService; i++ {
		var v lbSvc
		if err := l.services.Lookup(fe.key(gen, uint16(i)), &v); err == nil {
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
		err := l.backends.Update(id, v, ebpf.UpdateNoExist)
		switch {
		case err == nil:
			return id, nil
		case errors.Is(err, ebpf.ErrKeyExist):
			continue
		case errors.Is(err, unix.E2BIG):
			return 0, fmt.Errorf("bpf: lb_backends is full (%d entries): raise LBSizes.Backends", l.sizes.Backends)
		default:
			return 0, fmt.Errorf("bpf: write lb_backends: %w", err)
		}
	}
	return 0, errors.New("bpf: no free backend id found")
}

func (l *LB) putService(k lbSvcKey, v *lbSvc) error {
	if err := l.services.Put(k, v); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("bpf: lb_services is full (%d entries): raise LBSizes.Services or Backends",
				l.sizes.Services+l.sizes.Backends)
		}
		return fmt.Errorf("bpf: write lb_services: %w", err)
	}
	return nil
}

// deleteSlots deletes the slots of generation gen of fe from first on: at
// least up to last, and beyond as long as there are any (left by an
// interrupted update).
func (l *LB) deleteSlots(fe Frontend, gen uint16, first, last uint32) {
	for i := first; i <= maxBackendsPerService; i++ {
		err := l.services.Delete(fe.key(gen, uint16(i)))
		if errors.Is(err, ebpf.ErrKeyNotExist) && i > last {
			return
		}
	}
}

// otherGen is the slot generation an update of a header with gen writes.
func otherGen(gen uint32) uint16 {
	if gen == 1 {
		return 2
	}
	return 1
}

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
// error the service is left as it was.
func (l *LB) Upsert(svc Service) error {
	svc, affMs, err := svc.validate(l.sizes.Backends)
	if err != nil {
		return err
	}
	fe := svc.Frontend
	_, family := lbAddr(fe.Addr)
	unlock, err := lockDir(l.dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()

	var old lbSvc
	var oldIDs []uint32
	if err := l.services.Lookup(fe.key(0, 0), &old); err == nil {
		oldIDs = l.slotIDs(fe, uint16(old.Gen), old.Count)
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: read service %s: %w", fe, err)
	}
	gen := otherGen(old.Gen)
	// The backends the frontend has now, by address; kept only if the
	// service keeps its id, which the programs check backends against.
	keep := map[Backend]uint32{}
	if old.SvcId == svc.ID {
		for _, id := range oldIDs {
			var v lbBackend
			if id != 0 && l.backends.Lookup(id, &v) == nil && v.SvcId == svc.ID && v.Family == family {
				keep[backendOf(v)] = id
			}
		}
	}

	newIDs := make([]uint32, len(svc.Backends))
	var created []uint32
	rollback := func() {
		l.deleteSlots(fe, gen, 1, uint32(len(newIDs)))
		for _, id := range created {
			_ = l.backends.Delete(id)
		}
	}
	for i, b := range svc.Backends {
		if id, ok := keep[b]; ok {
			newIDs[i] = id
			continue
		}
		a, _ := lbAddr(b.Addr)
		id, err := l.newBackend(&lbBackend{Addr: a, Port: netPort(b.Port), Family: family, SvcId: svc.ID})
		if err != nil {
			rollback()
			return fmt.Errorf("bpf: service %s: %w", fe, err)
		}
		created = append(created, id)
		newIDs[i] = id
	}
	for i, id := range newIDs {
		if err := l.putService(fe.key(gen, uint16(i+1)), &lbSvc{BackendId: id, SvcId: svc.ID}); err != nil {
			rollback()
			return fmt.Errorf("bpf: service %s: %w", fe, err)
		}
	}
	// Slots beyond n in this generation (an interrupted update's) are
	// never read, but would confuse the next update's cleanup.
	l.deleteSlots(fe, gen, uint32(len(newIDs))+1, 0)
	hdr := lbSvc{Count: uint32(len(newIDs)), SvcId: svc.ID, AffinityMs: affMs, Gen: uint32(gen)}
	if err := l.putService(fe.key(0, 0), &hdr); err != nil {
		rollback()
		return fmt.Errorf("bpf: service %s: %w", fe, err)
	}

	if old.Gen != 0 {
		l.deleteSlots(fe, uint16(old.Gen), 1, old.Count)
	}
	inUse := make(map[uint32]bool, len(newIDs))
	for _, id := range newIDs {
		inUse[id] = true
	}
	for _, id := range oldIDs {
		if id != 0 && !inUse[id] {
			_ = l.backends.Delete(id)
		}
	}
	return nil
}

// Delete removes a service: the header first, so that new connects pass
// untranslated at once, then its slots and backends. Deleting a service
// that does not exist is not an error. Sockets that were translated keep
// their backend (and their reverse translation).
func (l *LB) Delete(fe Frontend) error {
	fe, err := fe.normalize()
	if err != nil {
		return err
	}
	unlock, err := lockDir(l.dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	var hdr lbSvc
	if err := l.services.Lookup(fe.key(0, 0), &hdr); err != nil {
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: read service %s: %w", fe, err)
		}
	}
	ids := l.slotIDs(fe, uint16(hdr.Gen), hdr.Count)
	if err := l.services.Delete(fe.key(0, 0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: delete service %s: %w", fe, err)
	}
	for _, gen := range []uint16{1, 2} {
		l.deleteSlots(fe, gen, 1, 0)
	}
	for _, id := range ids {
		if id != 0 {
			_ = l.backends.Delete(id)
		}
	}
	return nil
}

// Services returns the services the maps hold, ordered by frontend: what
// the programs act on now. The node daemon reconciles against it after a
// restart; warpctl shows it.
func (l *LB) Services() ([]Service, error) {
	unlock, err := lockDir(l.dir, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	headers := map[lbSvcKey]lbSvc{}
	slots := map[lbSvcKey]uint32{} // by key with the frontend's header key but Slot, Gen
	var k lbSvcKey
	var v lbSvc
	it := l.services.Iterate()
	for it.Next(&k, &v) {
		if k.Slot == 0 && k.Gen == 0 {
			headers[k] = v
		} else {
			slots[k] = v.BackendId
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: read lb_services: %w", err)
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
			if err := l.backends.Lookup(id, &b); err != nil {
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
	it := l.affinity.Iterate()
	for it.Next(&k, &v) {
		e := AffinityEntry{
			NetNSCookie: k.NetnsCookie, ServiceID: k.SvcId, Proto: Protocol(k.Proto),
			IPv6: k.Family == familyV6, BackendID: v.BackendId, LastUsed: wall(v.LastUsed),
		}
		var b lbBackend
		if l.backends.Lookup(v.BackendId, &b) == nil {
			e.Backend = backendOf(b)
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: read lb_affinity: %w", err)
	}
	return out, nil
}

// RevNAT returns the remembered translations of open sockets (for
// warpctl), one entry per socket and service.
func (l *LB) RevNAT() ([]RevNATEntry, error) {
	var out []RevNATEntry
	var k uint64
	var v lbRevnat
	it := l.revnat.Iterate()
	for it.Next(&k, &v) {
		for _, s := range v.Slots {
			if s.Family == 0 {
				continue
			}
			out = append(out, RevNATEntry{
				Cookie:    k,
				Frontend:  Frontend{Addr: lbAddrOf(s.FeAddr, s.Family), Port: netPort(s.FePort), Proto: Protocol(s.Proto)},
				Backend:   Backend{Addr: lbAddrOf(s.BeAddr, s.Family), Port: netPort(s.BePort)},
				ServiceID: s.SvcId,
				BackendID: s.BackendId,
			})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: read lb_revnat: %w", err)
	}
	return out, nil
}

// netnsCookie returns the cookie of the calling thread's network namespace.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("bpf: socket: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("bpf: SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// SetHostOnly switches host-only mode: when on, only sockets of the host
// network namespace are translated and pods' sockets pass untouched (for
// pods whose service mesh sidecar must see the service address). The host
// namespace is the calling thread's: call it in the node's network
// namespace, as the node daemon runs.
func (l *LB) SetHostOnly(on bool) error {
	var cfg lbConfig
	if on {
		c, err := netnsCookie()
		if err != nil {
			return err
		}
		cfg = lbConfig{Flags: lbCfgHostOnly, HostNetns: c}
	}
	unlock, err := lockDir(l.dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("bpf: write lb_config: %w", err)
	}
	return nil
}

// HostOnly reports whether host-only mode is on.
func (l *LB) HostOnly() (bool, error) {
	var cfg lbConfig
	if err := l.config.Lookup(uint32(0), &cfg); err != nil {
		return false, fmt.Errorf("bpf: read lb_config: %w", err)
	}
	return cfg.Flags&lbCfgHostOnly != 0, nil
}

// PinnedServices reads the services pinned under pinDir, opening and closing
// the load balancer around it (tools and tests poll it); an error while
// nothing is pinned there yet.
func PinnedServices(pinDir string) ([]Service, error) {
	lb, err := OpenLB(pinDir, LBSizes{})
	if err != nil {
		return nil, err
	}
	defer lb.Close()
	return lb.Services()
}
