// Package masquerade gives pods egress to the world outside the cluster:
// traffic from the cluster's pod CIDRs to any address outside the cluster's
// pod and service CIDRs leaves with the node's address (SNAT by
// masquerading), as the nodes' underlay would not route replies to pod
// addresses. It owns one nftables table, `inet warpnet`, and never touches
// another: each Sync replaces the table's whole content in one netlink
// transaction, so there is no moment without the rule, and removing the
// table (Remove, or --masquerade=false) removes everything warpd added.
//
// The rule, for IPv4 and IPv6 alike:
//
//	saddr ∈ @pods  ∧  saddr ∉ @nomasq  ∧  daddr ∉ @cluster  ∧  daddr ∉ @nomasq  →  masquerade
//
// where pods are the cluster's pod CIDRs, cluster is pods ∪ service CIDRs,
// and nomasq is the operator's list of networks that must see (or keep) pod
// addresses, such as routed underlays and SR-IOV VLANs.
package masquerade

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table warpd owns (family inet).
const TableName = "warpnet"

// Config is the desired masquerading.
type Config struct {
	// PodCIDRs are the cluster's pod CIDRs: traffic from them is masqueraded.
	PodCIDRs []netip.Prefix
	// ServiceCIDRs are never masquerade destinations (nor are PodCIDRs).
	ServiceCIDRs []netip.Prefix
	// NoMasquerade are networks traffic from or to which is never
	// masqueraded.
	NoMasquerade []netip.Prefix
}

var table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}

// Sync makes table inet warpnet hold exactly cfg's rule, in the network
// namespace of the calling thread.
func Sync(cfg Config) error {
	for _, p := range slices.Concat(cfg.PodCIDRs, cfg.ServiceCIDRs, cfg.NoMasquerade) {
		if !p.IsValid() || p.Bits() == 0 {
			return fmt.Errorf("masquerade: %v is not a usable CIDR", p)
		}
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masquerade: nftables: %w", err)
	}
	// Create the table if it is missing (a no-op otherwise), so that the
	// replacing transaction below can delete it unconditionally.
	c.AddTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade: create table inet %s: %w", TableName, err)
	}
	c.DelTable(table)
	c.AddTable(table)
	var errs []error
	for _, fam := range []struct {
		v4      bool
		nfproto byte
		keyType nftables.SetDatatype
		saddr   uint32 // offsets in the network header
		daddr   uint32
		length  uint32
	}{
		{true, unix.NFPROTO_IPV4, nftables.TypeIPAddr, 12, 16, 4},
		{false, unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 8, 24, 16},
	} {
		suffix := "4"
		if !fam.v4 {
			suffix = "6"
		}
		sets := map[string][]netip.Prefix{
			"pods" + suffix:    ofFamily(cfg.PodCIDRs, fam.v4),
			"cluster" + suffix: ofFamily(slices.Concat(cfg.PodCIDRs, cfg.ServiceCIDRs), fam.v4),
			"nomasq" + suffix:  ofFamily(cfg.NoMasquerade, fam.v4),
		}
		byName := map[string]*nftables.Set{}
		for _, name := range []string{"pods" + suffix, "cluster" + suffix, "nomasq" + suffix} {
			s := &nftables.Set{Table: table, Name: name, KeyType: fam.keyType, Interval: true}
			if err := c.AddSet(s, intervalElements(sets[name])); err != nil {
				errs = append(errs, fmt.Errorf("masquerade: set %s: %w", name, err))
			}
			byName[name] = s
		}
		lookup := func(offset uint32, set string, invert bool) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: fam.length},
				&expr.Lookup{SourceRegister: 1, SetName: set, SetID: byName[set].ID, Invert: invert},
			}
		}
		chain := c.AddChain(&nftables.Chain{Name: "postrouting" + suffix, Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.nfproto}},
		}
		exprs = append(exprs, lookup(fam.saddr, "pods"+suffix, false)...)
		exprs = append(exprs, lookup(fam.saddr, "nomasq"+suffix, true)...)
		exprs = append(exprs, lookup(fam.daddr, "cluster"+suffix, true)...)
		exprs = append(exprs, lookup(fam.daddr, "nomasq"+suffix, true)...)
		exprs = append(exprs, &expr.Counter{}, &expr.Masq{})
		c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs})
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade: replace table inet %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes table inet warpnet, if it exists.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masquerade: nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("masquerade: list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }) {
		return nil
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade: delete table inet %s: %w", TableName, err)
	}
	return nil
}

func ofFamily(ps []netip.Prefix, v4 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Unmap().Is4() == v4 {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
		}
	}
	return out
}

// intervalElements encodes prefixes for an interval set: merged ranges
// [start, end], each as a start element and an interval-end element at
// end+1 (none when the range reaches the end of the address space).
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	type span struct{ lo, hi netip.Addr }
	var spans []span
	for _, p := range ps {
		spans = append(spans, span{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(spans, func(a, b span) int { return a.lo.Compare(b.lo) })
	var merged []span
	for _, s := range spans {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if next := last.hi.Next(); !next.IsValid() || s.lo.Compare(next) <= 0 {
				if s.hi.Compare(last.hi) > 0 {
					last.hi = s.hi
				}
				continue
			}
		}
		merged = append(merged, s)
	}
	var out []nftables.SetElement
	for _, s := range merged {
		out = append(out, nftables.SetElement{Key: s.lo.AsSlice()})
		if end := s.hi.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
