package podpath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// The tc program hands a packet to the next hop of its route itself
// (bpf_redirect_neigh) only for destinations in warp_neigh_dsts: that
// path skips the node's netfilter hooks, so it must not carry traffic that
// the node masquerades or that something may translate in PREROUTING.
// The caller names the destinations for which that is true: the cluster's
// pod CIDRs (warpd publishes them in the node's facts). Everything else
// takes the stack.

// lpmKey encodes p as a key of warp_neigh_dsts: the prefix length counts
// the family byte and padding (32 bits) too.
func lpmKey(p netip.Prefix) podLpmKey {
	return podLpmKey{Prefixlen: uint32(32 + p.Bits()), Ip: ipKey(p.Addr())}
}

func (k podLpmKey) prefix() netip.Prefix {
	return netip.PrefixFrom(k.Ip.addr(), int(k.Prefixlen)-32)
}

// SetNeighDsts makes prefixes the destinations the tc program may send to
// their next hop itself (see above), replacing the previous set: new
// prefixes are added before stale ones are removed, so a prefix in both
// never stops working. Prefixes are masked; at most MaxNeighDsts. The set
// is the node's, not a pod's: endpoints come and go without touching it.
func (d *Datapath) SetNeighDsts(prefixes []netip.Prefix) error {
	if err := d.writable(); err != nil {
		return err
	}
	m := d.objs.WarpNeighDsts
	if m == nil {
		return errors.New("podpath: warp_neigh_dsts is not pinned yet (Open creates it)")
	}
	want := map[podLpmKey]bool{}
	for _, p := range prefixes {
		if !p.IsValid() {
			return fmt.Errorf("podpath: invalid prefix %v", p)
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return fmt.Errorf("podpath: prefix %v covers more than IPv4-mapped addresses", p)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		want[lpmKey(p.Masked())] = true
	}
	if len(want) > MaxNeighDsts {
		return fmt.Errorf("podpath: %d prefixes, at most %d fit", len(want), MaxNeighDsts)
	}
	release, err := d.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	defer release()
	have, err := neighKeys(m)
	if err != nil {
		return err
	}
	for k := range want {
		if !slices.Contains(have, k) {
			if err := m.Put(k, uint32(0)); err != nil {
				return fmt.Errorf("podpath: warp_neigh_dsts: add %v: %w", k.prefix(), err)
			}
		}
	}
	for _, k := range have {
		if !want[k] {
			if err := deleteKey(m, k); err != nil {
				return fmt.Errorf("podpath: warp_neigh_dsts: remove %v: %w", k.prefix(), err)
			}
		}
	}
	return nil
}

// NeighDsts returns the destinations SetNeighDsts set, sorted; none on pins
// of a build without the map.
func (d *Datapath) NeighDsts() ([]netip.Prefix, error) {
	if d.objs.WarpNeighDsts == nil {
		return nil, nil
	}
	keys, err := neighKeys(d.objs.WarpNeighDsts)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, k := range keys {
		out = append(out, k.prefix())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out, nil
}

func neighKeys(m *ebpf.Map) ([]podLpmKey, error) {
	var (
		k    podLpmKey
		v    uint32
		keys []podLpmKey
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("podpath: iterate warp_neigh_dsts: %w", err)
	}
	return keys, nil
}
