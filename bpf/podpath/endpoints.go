package podpath

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/rollback"
)

// Flags of iface.flags / endpoint.flags (F_* in pod.h): Redirect is
// flagRedirect for XDP pods and flagPeer for tc pods, so that the XDP
// program never redirects to a tc pod, whose pod end runs no XDP.
const (
	flagRedirect  = 1 << 0
	flagAntiSpoof = 1 << 1
	flagTC        = 1 << 2
	flagPeer      = 1 << 3
)

func (f Features) flags() uint32 {
	var v uint32
	if f.AntiSpoof {
		v |= flagAntiSpoof
	}
	switch f.Hook {
	case TC:
		v |= flagTC
		if f.Redirect {
			v |= flagPeer
		}
	default:
		if f.Redirect {
			v |= flagRedirect
		}
	}
	return v
}

func featuresOf(flags uint32) Features {
	f := Features{AntiSpoof: flags&flagAntiSpoof != 0, Redirect: flags&flagRedirect != 0}
	if flags&flagTC != 0 {
		f.Hook, f.Redirect = TC, flags&flagPeer != 0
	}
	return f
}

// ipKey encodes an address as the key of warp_ips: family byte, three zero
// bytes, then the address as pinset encodes it.
func ipKey(a netip.Addr) podIpKey {
	addr, family := pinset.EncodeAddr(a)
	return podIpKey{Family: family, Addr: addr}
}

func (k podIpKey) addr() netip.Addr { return pinset.DecodeAddr(k.Addr, k.Family) }

// encode validates ep and returns its warp_endpoints record.
func encode(ep Endpoint) (podEndpoint, error) {
	var rec podEndpoint
	if ep.Owner == 0 {
		return rec, errors.New("podpath: endpoint owner must not be 0")
	}
	if ep.Features.Hook != XDP && ep.Features.Hook != TC {
		return rec, fmt.Errorf("podpath: unknown hook %v", ep.Features.Hook)
	}
	if ep.HostIfIndex <= 0 || ep.HostIfIndex > 1<<31-1 {
		return rec, fmt.Errorf("podpath: invalid host ifindex %d", ep.HostIfIndex)
	}
	for _, m := range []struct {
		what string
		mac  net.HardwareAddr
		dst  *[6]uint8
	}{{"pod", ep.PodMAC, &rec.PodMac}, {"host", ep.HostMAC, &rec.HostMac}} {
		if len(m.mac) != 6 {
			return rec, fmt.Errorf("podpath: %s MAC %q: want 6 bytes, have %d", m.what, m.mac, len(m.mac))
		}
		if m.mac[0]&1 != 0 || bytes.Equal(m.mac, make([]byte, 6)) {
			return rec, fmt.Errorf("podpath: %s MAC %s is not a unicast address", m.what, m.mac)
		}
		copy(m.dst[:], m.mac)
	}
	if len(ep.IPs) == 0 || len(ep.IPs) > MaxIPsPerEndpoint {
		return rec, fmt.Errorf("podpath: endpoint needs 1 to %d IPs, has %d", MaxIPsPerEndpoint, len(ep.IPs))
	}
	seen := map[netip.Addr]bool{}
	for i, a := range ep.IPs {
		a = a.Unmap()
		switch {
		case !a.IsValid():
			return rec, fmt.Errorf("podpath: IP #%d is not set", i)
		case a.Zone() != "":
			return rec, fmt.Errorf("podpath: IP %s has a zone", a)
		case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast():
			// Unspecified and link-local sources get special treatment
			// in the program (DHCP, DAD, ND) and are never forwarded.
			return rec, fmt.Errorf("podpath: IP %s cannot be a pod address", a)
		case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return rec, fmt.Errorf("podpath: IP %s cannot be a pod address", a)
		case seen[a]:
			return rec, fmt.Errorf("podpath: IP %s is listed twice", a)
		}
		seen[a] = true
		rec.Ips[i] = ipKey(a)
	}
	rec.HostIfindex = uint32(ep.HostIfIndex)
	rec.Flags = ep.Features.flags()
	rec.N_ips = uint32(len(ep.IPs))
	return rec, nil
}

func decode(owner uint64, rec *podEndpoint) Endpoint {
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

func (rec *podEndpoint) keys() []podIpKey {
	n := min(int(rec.N_ips), len(rec.Ips))
	return rec.Ips[:n]
}

// lookup reads key into *val and reports whether it exists.
func lookup[K any, V any](m *ebpf.Map, key K, val *V) (bool, error) {
	err := m.Lookup(key, val)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

// txPut writes key=val and pushes how to restore the previous state. V is
// the map's value type (a slice of it for per-CPU maps).
func txPut[K any, V any](undo *rollback.Stack, m *ebpf.Map, key K, val V) error {
	var prev V
	existed, err := lookup(m, key, &prev)
	if err != nil {
		return fmt.Errorf("podpath: %s: lookup %v: %w", mapName(m), key, err)
	}
	if err := m.Put(key, val); err != nil {
		return fmt.Errorf("podpath: %s: update %v: %w", mapName(m), key, err)
	}
	undo.Push(fmt.Sprintf("restore %s %v", mapName(m), key), func() error {
		if existed {
			return m.Put(key, prev)
		}
		return deleteKey(m, key)
	})
	return nil
}

// txDelete deletes key (absent is fine) and, with an undo stack, pushes how
// to restore it.
func txDelete[K any, V any](undo *rollback.Stack, m *ebpf.Map, key K) error {
	var prev V
	existed, err := lookup(m, key, &prev)
	if err != nil {
		return fmt.Errorf("podpath: %s: lookup %v: %w", mapName(m), key, err)
	}
	if !existed {
		return nil
	}
	if err := deleteKey(m, key); err != nil {
		return fmt.Errorf("podpath: %s: delete %v: %w", mapName(m), key, err)
	}
	if undo != nil {
		undo.Push(fmt.Sprintf("restore %s %v", mapName(m), key), func() error { return m.Put(key, prev) })
	}
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
	return fmt.Sprintf("podpath: %s is registered to owner %#x; remove that endpoint first", e.What, e.Owner)
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
	if err := d.writable(); err != nil {
		return err
	}
	rec, err := encode(ep)
	if err != nil {
		return err
	}
	release, err := d.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	defer release()
	ifaces, ips, endpoints := d.objs.WarpIfaces, d.objs.WarpIps, d.objs.WarpEndpoints
	counters, devmap := d.objs.WarpCounters, d.objs.WarpDevmap

	ifindex := rec.HostIfindex
	var ifc podIface
	if ok, err := lookup(ifaces, ifindex, &ifc); err != nil {
		return fmt.Errorf("podpath: warp_ifaces: %w", err)
	} else if ok && ifc.Owner != ep.Owner {
		return &ConflictError{What: fmt.Sprintf("ifindex %d", ifindex), Owner: ifc.Owner}
	}
	for _, k := range rec.keys() {
		var v podIpVal
		if ok, err := lookup(ips, k, &v); err != nil {
			return fmt.Errorf("podpath: warp_ips: %w", err)
		} else if ok && v.Owner != ep.Owner {
			return &ConflictError{What: "IP " + k.addr().String(), Owner: v.Owner}
		}
	}
	var prev podEndpoint
	hadPrev, err := lookup(endpoints, ep.Owner, &prev)
	if err != nil {
		return fmt.Errorf("podpath: warp_endpoints: %w", err)
	}

	var undo rollback.Stack
	defer func() {
		if err != nil {
			if rerr := undo.Run(); rerr != nil {
				err = rollback.With(err, fmt.Errorf("%w; RemoveEndpoint(%#x) cleans up", rerr, ep.Owner))
			}
		}
	}()
	journal := rec
	if hadPrev {
		// Moving to another interface: clear the old one while the
		// record still names it.
		if old := prev.HostIfindex; old != ifindex {
			if err := d.removeIface(&undo, old, ep.Owner); err != nil {
				return err
			}
		}
		// Until the stale addresses are gone, the record lists them too.
		journal = mergeJournal(rec, prev)
	}
	if err := txPut(&undo, endpoints, ep.Owner, journal); err != nil {
		return err
	}
	var cur []podCounters
	if ok, err := lookup(counters, ifindex, &cur); err != nil {
		return fmt.Errorf("podpath: warp_counters: %w", err)
	} else if !ok {
		zero := make([]podCounters, ebpf.MustPossibleCPU())
		if err := txPut(&undo, counters, ifindex, zero); err != nil {
			return err
		}
	}
	if ep.Features.Redirect && ep.Features.Hook == XDP {
		if err := txPut(&undo, devmap, ifindex, ifindex); err != nil {
			return fmt.Errorf("%w (is ifindex %d a device in the calling thread's network namespace?)", err, ifindex)
		}
	} else if err := txDelete[uint32, uint32](&undo, devmap, ifindex); err != nil {
		return err
	}
	for _, k := range rec.keys() {
		if err := txPut(&undo, ips, k, podIpVal{Ifindex: ifindex, Owner: ep.Owner}); err != nil {
			return err
		}
	}
	if err := txPut(&undo, ifaces, ifindex, podIface{
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
			var v podIpVal
			if ok, err := lookup(ips, k, &v); err != nil {
				return err
			} else if ok && v.Owner == ep.Owner {
				if err := txDelete[podIpKey, podIpVal](&undo, ips, k); err != nil {
					return err
				}
			}
		}
		if err := txPut(&undo, endpoints, ep.Owner, rec); err != nil {
			return err
		}
	}
	return nil
}

// mergeJournal returns rec listing also prev's addresses (as far as they
// fit: beyond MaxIPsPerEndpoint, a crash in the middle of the update could
// leave an address behind).
func mergeJournal(rec, prev podEndpoint) podEndpoint {
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

// removeIface removes the per-interface entries of ifindex if they belong
// to owner (or to nobody), pushing their undos if undo is not nil.
func (d *Datapath) removeIface(undo *rollback.Stack, ifindex uint32, owner uint64) error {
	var ifc podIface
	ok, err := lookup(d.objs.WarpIfaces, ifindex, &ifc)
	if err != nil {
		return err
	}
	if ok && ifc.Owner != owner {
		return nil // taken over by another endpoint
	}
	if err := txDelete[uint32, podIface](undo, d.objs.WarpIfaces, ifindex); err != nil {
		return err
	}
	if err := txDelete[uint32, uint32](undo, d.objs.WarpDevmap, ifindex); err != nil {
		return err
	}
	return txDelete[uint32, []podCounters](undo, d.objs.WarpCounters, ifindex)
}

// RemoveEndpoint removes every entry belonging to owner: interface, devmap,
// counters, addresses and the record itself. Entries that meanwhile belong to
// another owner are left alone. It is tolerant (an unknown owner is not an
// error) and repeatable: if it fails half-way, the record stays and the next
// call finishes the job.
func (d *Datapath) RemoveEndpoint(owner uint64) error {
	if err := d.writable(); err != nil {
		return err
	}
	release, err := d.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	defer release()
	var rec podEndpoint
	ok, err := lookup(d.objs.WarpEndpoints, owner, &rec)
	if err != nil {
		return fmt.Errorf("podpath: warp_endpoints: %w", err)
	}
	if !ok {
		return nil
	}
	// Deletions only: nothing is rolled back, the record stays until the
	// end so that a repeated call finishes the job.
	if err := d.removeIface(nil, rec.HostIfindex, owner); err != nil {
		return fmt.Errorf("podpath: remove endpoint %#x: %w", owner, err)
	}
	for _, k := range rec.keys() {
		var v podIpVal
		ok, err := lookup(d.objs.WarpIps, k, &v)
		if err == nil && ok && v.Owner == owner {
			err = deleteKey(d.objs.WarpIps, k)
		}
		if err != nil {
			return fmt.Errorf("podpath: remove endpoint %#x: IP %s: %w", owner, k.addr(), err)
		}
	}
	if err := deleteKey(d.objs.WarpEndpoints, owner); err != nil {
		return fmt.Errorf("podpath: remove endpoint %#x: %w", owner, err)
	}
	return nil
}

// Endpoint returns what is registered for owner (for CNI CHECK).
func (d *Datapath) Endpoint(owner uint64) (Endpoint, bool, error) {
	var rec podEndpoint
	ok, err := lookup(d.objs.WarpEndpoints, owner, &rec)
	if err != nil || !ok {
		return Endpoint{}, false, err
	}
	return decode(owner, &rec), true, nil
}

// Endpoints returns every registered endpoint, in no particular order.
func (d *Datapath) Endpoints() ([]Endpoint, error) {
	var (
		owner uint64
		rec   podEndpoint
		out   []Endpoint
	)
	it := d.objs.WarpEndpoints.Iterate()
	for it.Next(&owner, &rec) {
		out = append(out, decode(owner, &rec))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("podpath: iterate warp_endpoints: %w", err)
	}
	return out, nil
}

// Counters returns the counters of the endpoint on hostIfIndex, summed over
// CPUs. An interface with no endpoint is an error wrapping ErrNotRegistered.
func (d *Datapath) Counters(hostIfIndex int) (Counters, error) {
	var per []podCounters
	ok, err := lookup(d.objs.WarpCounters, uint32(hostIfIndex), &per)
	if err != nil {
		return Counters{}, fmt.Errorf("podpath: warp_counters: %w", err)
	}
	if !ok {
		return Counters{}, fmt.Errorf("podpath: counters of ifindex %d: %w", hostIfIndex, ErrNotRegistered)
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
