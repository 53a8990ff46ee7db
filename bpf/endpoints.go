package bpf

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Flags of iface.flags / endpoint.flags (F_* in xdp_pod.h).
const (
	flagRedirect  = 1 << 0
	flagAntiSpoof = 1 << 1
)

// Address families in ip_key.family (FAMILY_V* in xdp_pod.h).
const (
	familyV4 = 4
	familyV6 = 6
)

func (f Features) flags() uint32 {
	var v uint32
	if f.Redirect {
		v |= flagRedirect
	}
	if f.AntiSpoof {
		v |= flagAntiSpoof
	}
	return v
}

func featuresOf(flags uint32) Features {
	return Features{Redirect: flags&flagRedirect != 0, AntiSpoof: flags&flagAntiSpoof != 0}
}

// ipKey encodes an address as the key of warp_ips: family byte, three zero
// bytes, then the address; an IPv4 address is its 4 bytes followed by 12
// zero bytes (not IPv4-mapped).
func ipKey(a netip.Addr) xdpIpKey {
	var k xdpIpKey
	if a.Is4() {
		k.Family = familyV4
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = familyV6
		k.Addr = a.As16()
	}
	return k
}

func (k xdpIpKey) addr() netip.Addr {
	if k.Family == familyV4 {
		return netip.AddrFrom4([4]byte(k.Addr[:4]))
	}
	return netip.AddrFrom16(k.Addr)
}

// encode validates ep and returns its warp_endpoints record.
func encode(ep Endpoint) (xdpEndpoint, error) {
	var rec xdpEndpoint
	if ep.Owner == 0 {
		return rec, errors.New("bpf: endpoint owner must not be 0")
	}
	if ep.HostIfIndex <= 0 || ep.HostIfIndex > 1<<31-1 {
		return rec, fmt.Errorf("bpf: invalid host ifindex %d", ep.HostIfIndex)
	}
	for _, m := range []struct {
		what string
		mac  net.HardwareAddr
		dst  *[6]uint8
	}{{"pod", ep.PodMAC, &rec.PodMac}, {"host", ep.HostMAC, &rec.HostMac}} {
		if len(m.mac) != 6 {
			return rec, fmt.Errorf("bpf: %s MAC %q: want 6 bytes, have %d", m.what, m.mac, len(m.mac))
		}
		if m.mac[0]&1 != 0 || bytes.Equal(m.mac, make([]byte, 6)) {
			return rec, fmt.Errorf("bpf: %s MAC %s is not a unicast address", m.what, m.mac)
		}
		copy(m.dst[:], m.mac)
	}
	if len(ep.IPs) == 0 || len(ep.IPs) > MaxIPsPerEndpoint {
		return rec, fmt.Errorf("bpf: endpoint needs 1 to %d IPs, has %d", MaxIPsPerEndpoint, len(ep.IPs))
	}
	seen := map[netip.Addr]bool{}
	for i, a := range ep.IPs {
		a = a.Unmap()
		switch {
		case !a.IsValid():
			return rec, fmt.Errorf("bpf: IP #%d is not set", i)
		case a.Zone() != "":
			return rec, fmt.Errorf("bpf: IP %s has a zone", a)
		case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast():
			// Unspecified and link-local sources get special treatment
			// in the program (DHCP, DAD, ND) and are never forwarded.
			return rec, fmt.Errorf("bpf: IP %s cannot be a pod address", a)
		case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return rec, fmt.Errorf("bpf: IP %s cannot be a pod address", a)
		case seen[a]:
			return rec, fmt.Errorf("bpf: IP %s is listed twice", a)
		}
		seen[a] = true
		rec.Ips[i] = ipKey(a)
	}
	rec.HostIfindex = uint32(ep.HostIfIndex)
	rec.Flags = ep.Features.flags()
	rec.N_ips = uint32(len(ep.IPs))
	return rec, nil
}

func decode(owner uint64, rec *xdpEndpoint) Endpoint {
	ep := Endpoint{
		Owner:       owner,
		HostIfIndex: int(rec.HostIfindex),
		PodMAC:      net.HardwareAddr(slices.Clone(rec.PodMac[:])),
		HostMAC:     net.HardwareAddr(slices.Clone(rec.HostMac[:])),
		Features:    featuresOf(rec.Flags),
	}
	for _, k := range rec.keys() {
		ep.IPs = append(ep.IPs, k.addr())
	}
	return ep
}

func (rec *xdpEndpoint) keys() []xdpIpKey {
	n := min(int(rec.N_ips), len(rec.Ips))
	return rec.Ips[:n]
}

// txn records how to undo each map write, so that AddEndpoint can take back
// everything it did when a later step fails.
type txn struct{ undo []func() error }

func (t *txn) rollback() error {
	var errs []error
	for i := len(t.undo) - 1; i >= 0; i-- {
		if err := t.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	t.undo = nil
	return errors.Join(errs...)
}

// lookup reads key into *val and reports whether it exists.
func lookup[K any, V any](m *ebpf.Map, key K, val *V) (bool, error) {
	err := m.Lookup(key, val)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

// txPut writes key=val and remembers how to restore the previous state. V is
// the map's value type (a slice of it for per-CPU maps).
func txPut[K any, V any](t *txn, m *ebpf.Map, key K, val V) error {
	var prev V
	existed, err := lookup(m, key, &prev)
	if err != nil {
		return fmt.Errorf("bpf: %s: lookup %v: %w", mapName(m), key, err)
	}
	if err := m.Put(key, val); err != nil {
		return fmt.Errorf("bpf: %s: update %v: %w", mapName(m), key, err)
	}
	t.undo = append(t.undo, func() error {
		if existed {
			return m.Put(key, prev)
		}
		return deleteKey(m, key)
	})
	return nil
}

// txDelete deletes key (absent is fine) and remembers how to restore it.
func txDelete[K any, V any](t *txn, m *ebpf.Map, key K) error {
	var prev V
	existed, err := lookup(m, key, &prev)
	if err != nil {
		return fmt.Errorf("bpf: %s: lookup %v: %w", mapName(m), key, err)
	}
	if !existed {
		return nil
	}
	if err := deleteKey(m, key); err != nil {
		return fmt.Errorf("bpf: %s: delete %v: %w", mapName(m), key, err)
	}
	t.undo = append(t.undo, func() error { return m.Put(key, prev) })
	return nil
}

// deleteKey deletes key; absent is fine.
func deleteKey(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil {
		return info.Name
	}
	return "map"
}

// ConflictError is returned by AddEndpoint when an interface or address is
// registered to another owner.
type ConflictError struct {
	What  string // "ifindex 12" or "IP 10.0.0.1"
	Owner uint64 // the owner it is registered to
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("bpf: %s is registered to owner %#x; remove that endpoint first", e.What, e.Owner)
}

// AddEndpoint registers a pod, all-or-nothing: on error, nothing it wrote
// stays. Adding an owner again updates it (features, addresses, MACs,
// even the interface); its counters are kept. An interface or address
// registered to another owner is a *ConflictError.
//
// The warp_endpoints record is written first and removed last, so that it
// always lists everything the owner may have in the other maps: even if the
// process dies half-way, RemoveEndpoint finds it all. warp_ifaces is written
// last because it is what turns the program on for the interface. Must run
// in the node's network namespace (the DEVMAP_HASH resolves the ifindex).
func (d *Datapath) AddEndpoint(ep Endpoint) (err error) {
	rec, err := encode(ep)
	if err != nil {
		return err
	}
	unlock, err := lockDir(d.pinDir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()

	ifindex := rec.HostIfindex
	var ifc xdpIface
	if ok, err := lookup(d.ifaces, ifindex, &ifc); err != nil {
		return fmt.Errorf("bpf: warp_ifaces: %w", err)
	} else if ok && ifc.Owner != ep.Owner {
		return &ConflictError{What: fmt.Sprintf("ifindex %d", ifindex), Owner: ifc.Owner}
	}
	for _, k := range rec.keys() {
		var v xdpIpVal
		if ok, err := lookup(d.ips, k, &v); err != nil {
			return fmt.Errorf("bpf: warp_ips: %w", err)
		} else if ok && v.Owner != ep.Owner {
			return &ConflictError{What: "IP " + k.addr().String(), Owner: v.Owner}
		}
	}
	var prev xdpEndpoint
	hadPrev, err := lookup(d.endpoints, ep.Owner, &prev)
	if err != nil {
		return fmt.Errorf("bpf: warp_endpoints: %w", err)
	}

	t := &txn{}
	defer func() {
		if err != nil {
			if rerr := t.rollback(); rerr != nil {
				err = fmt.Errorf("%w (rollback failed, RemoveEndpoint(%#x) cleans up: %v)", err, ep.Owner, rerr)
			}
		}
	}()
	journal := rec
	if hadPrev {
		// Moving to another interface: clear the old one while the
		// record still names it.
		if old := prev.HostIfindex; old != ifindex {
			if err := d.txRemoveIface(t, old, ep.Owner); err != nil {
				return err
			}
		}
		// Until the stale addresses are gone, the record lists them too.
		journal = mergeJournal(rec, prev)
	}
	if err := txPut(t, d.endpoints, ep.Owner, journal); err != nil {
		return err
	}
	var cur []xdpCounters
	if ok, err := lookup(d.counters, ifindex, &cur); err != nil {
		return fmt.Errorf("bpf: warp_counters: %w", err)
	} else if !ok {
		zero := make([]xdpCounters, ebpf.MustPossibleCPU())
		if err := txPut(t, d.counters, ifindex, zero); err != nil {
			return err
		}
	}
	if ep.Features.Redirect {
		if err := txPut(t, d.devmap, ifindex, ifindex); err != nil {
			return fmt.Errorf("%w (is ifindex %d a device in the calling thread's network namespace?)", err, ifindex)
		}
	} else if err := txDelete[uint32, uint32](t, d.devmap, ifindex); err != nil {
		return err
	}
	for _, k := range rec.keys() {
		if err := txPut(t, d.ips, k, xdpIpVal{Ifindex: ifindex, Owner: ep.Owner}); err != nil {
			return err
		}
	}
	if err := txPut(t, d.ifaces, ifindex, xdpIface{
		PodMac: rec.PodMac, HostMac: rec.HostMac, Flags: rec.Flags, Owner: ep.Owner,
	}); err != nil {
		return err
	}

	if hadPrev {
		// Entries of the previous registration that the new one dropped.
		for _, k := range prev.keys() {
			if slices.Contains(rec.keys(), k) {
				continue
			}
			var v xdpIpVal
			if ok, err := lookup(d.ips, k, &v); err != nil {
				return err
			} else if ok && v.Owner == ep.Owner {
				if err := txDelete[xdpIpKey, xdpIpVal](t, d.ips, k); err != nil {
					return err
				}
			}
		}
		if err := txPut(t, d.endpoints, ep.Owner, rec); err != nil {
			return err
		}
	}
	return nil
}

// mergeJournal returns rec listing also prev's addresses (as far as they
// fit: beyond MaxIPsPerEndpoint, a crash in the middle of the update could
// leave an address behind).
func mergeJournal(rec, prev xdpEndpoint) xdpEndpoint {
	j := rec
	for _, k := range prev.keys() {
		if j.N_ips >= MaxIPsPerEndpoint {
			break
		}
		if !slices.Contains(j.keys(), k) {
			j.Ips[j.N_ips] = k
			j.N_ips++
		}
	}
	return j
}

// txRemoveIface removes the per-interface entries of ifindex if they belong
// to owner (or to nobody).
func (d *Datapath) txRemoveIface(t *txn, ifindex uint32, owner uint64) error {
	var ifc xdpIface
	ok, err := lookup(d.ifaces, ifindex, &ifc)
	if err != nil {
		return err
	}
	if ok && ifc.Owner != owner {
		return nil // taken over by another endpoint
	}
	if err := txDelete[uint32, xdpIface](t, d.ifaces, ifindex); err != nil {
		return err
	}
	if err := txDelete[uint32, uint32](t, d.devmap, ifindex); err != nil {
		return err
	}
	return txDelete[uint32, []xdpCounters](t, d.counters, ifindex)
}

// RemoveEndpoint removes every entry belonging to owner: interface, devmap,
// counters, addresses and the record itself. Entries that meanwhile belong to
// another owner are left alone. It is tolerant (an unknown owner is not an
// error) and repeatable: if it fails half-way, the record stays and the next
// call finishes the job.
func (d *Datapath) RemoveEndpoint(owner uint64) error {
	unlock, err := lockDir(d.pinDir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	var rec xdpEndpoint
	ok, err := lookup(d.endpoints, owner, &rec)
	if err != nil {
		return fmt.Errorf("bpf: warp_endpoints: %w", err)
	}
	if !ok {
		return nil
	}
	t := &txn{} // deletions only; nothing is rolled back
	if err := d.txRemoveIface(t, rec.HostIfindex, owner); err != nil {
		return fmt.Errorf("bpf: remove endpoint %#x: %w", owner, err)
	}
	for _, k := range rec.keys() {
		var v xdpIpVal
		ok, err := lookup(d.ips, k, &v)
		if err == nil && ok && v.Owner == owner {
			err = deleteKey(d.ips, k)
		}
		if err != nil {
			return fmt.Errorf("bpf: remove endpoint %#x: IP %s: %w", owner, k.addr(), err)
		}
	}
	if err := deleteKey(d.endpoints, owner); err != nil {
		return fmt.Errorf("bpf: remove endpoint %#x: %w", owner, err)
	}
	return nil
}

// Endpoint returns what is registered for owner (for CNI CHECK).
func (d *Datapath) Endpoint(owner uint64) (Endpoint, bool, error) {
	var rec xdpEndpoint
	ok, err := lookup(d.endpoints, owner, &rec)
	if err != nil || !ok {
		return Endpoint{}, false, err
	}
	return decode(owner, &rec), true, nil
}

// Endpoints returns every registered endpoint, in no particular order.
func (d *Datapath) Endpoints() ([]Endpoint, error) {
	var (
		owner uint64
		rec   xdpEndpoint
		out   []Endpoint
	)
	it := d.endpoints.Iterate()
	for it.Next(&owner, &rec) {
		out = append(out, decode(owner, &rec))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: iterate warp_endpoints: %w", err)
	}
	return out, nil
}

// Counters returns the counters of the endpoint on hostIfIndex, summed over
// CPUs. An interface with no endpoint is an error wrapping ErrNotRegistered.
func (d *Datapath) Counters(hostIfIndex int) (Counters, error) {
	var per []xdpCounters
	ok, err := lookup(d.counters, uint32(hostIfIndex), &per)
	if err != nil {
		return Counters{}, fmt.Errorf("bpf: warp_counters: %w", err)
	}
	if !ok {
		return Counters{}, fmt.Errorf("bpf: counters of ifindex %d: %w", hostIfIndex, ErrNotRegistered)
	}
	var c Counters
	for _, p := range per {
		c.PassPackets += p.PassPackets
		c.PassBytes += p.PassBytes
		c.RedirectPackets += p.RedirectPackets
		c.RedirectBytes += p.RedirectBytes
		c.DropPackets += p.DropPackets
		c.DropBytes += p.DropBytes
	}
	return c, nil
}
