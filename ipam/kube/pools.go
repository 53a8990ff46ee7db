package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/ipam/config"
)

// Ranges converts a pool into the allocator's ranges (its spec.ranges, or
// the whole subnet) and exclusions. Errors name the pool and the field.
func (p *IPPool) Ranges() (config.RangeSet, []netip.Prefix, error) {
	field := "IPPool " + p.Name + ": spec"
	var rs config.RangeSet
	spans := p.Spec.Ranges
	if len(spans) == 0 {
		spans = []PoolRange{{}}
	}
	for i, s := range spans {
		f := field
		if len(p.Spec.Ranges) > 0 {
			f = fmt.Sprintf("%s.ranges[%d]", field, i)
		}
		r, err := config.ParseRange(f, p.Spec.Subnet, s.Start, s.End, p.Spec.Gateway)
		if err != nil {
			return nil, nil, err
		}
		r.Pool = p.Name
		rs = append(rs, r)
	}
	if err := config.CheckOverlaps([]config.RangeSet{rs}); err != nil {
		return nil, nil, cnierr.Invalid(field+".ranges", "%s", err.(*types.Error).Msg)
	}
	var excl []netip.Prefix
	for i, e := range p.Spec.Exclude {
		pf, err := parsePrefixOrAddr(e)
		if err != nil {
			return nil, nil, cnierr.Invalid(fmt.Sprintf("%s.exclude[%d]", field, i), "%q is neither an IP address nor a CIDR", e)
		}
		excl = append(excl, pf)
	}
	return rs, excl, nil
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// Subnet is the pool's subnet (invalid if it does not parse).
func (p *IPPool) Subnet() netip.Prefix {
	pf, _ := netip.ParsePrefix(p.Spec.Subnet)
	return pf
}

// older orders pools by age, then name: of two overlapping pools the older
// one is used (the admission policy should have refused the newer one).
func older(a, b *IPPool) bool {
	if ta, tb := a.Created(), b.Created(); !ta.Equal(tb) {
		return ta.Before(tb)
	}
	return a.Name < b.Name
}

// Overlapping returns the older pool that p overlaps, if any.
func Overlapping(p *IPPool, all []IPPool) (*IPPool, bool) {
	ps := p.Subnet()
	for i := range all {
		q := &all[i]
		if q.Name == p.Name || !older(q, p) {
			continue
		}
		if qs := q.Subnet(); qs.IsValid() && ps.IsValid() && qs.Overlaps(ps) {
			return q, true
		}
	}
	return nil, false
}

// PodRequest reads what the pod's annotations ask for on interface ifName:
// ipam.warpnet.io/pool (pool names, comma-separated) and ipam.warpnet.io/ip
// (addresses, comma-separated). Either may instead be a JSON object keyed by
// interface name, whose values are a string or a list of strings, for pods
// with several warp-ipam interfaces (Multus secondary networks):
//
//	ipam.warpnet.io/pool: '{"net1": "storage", "net2": ["trading-v4", "trading-v6"]}'
//
// An interface the object does not name gets nothing from that annotation.
func PodRequest(annotations map[string]string, ifName string) (pools []string, ips []netip.Addr, err error) {
	if v, ok := annotations[AnnotationPool]; ok {
		if pools, err = annotationList(AnnotationPool, v, ifName); err != nil {
			return nil, nil, err
		}
	}
	if v, ok := annotations[AnnotationIP]; ok {
		list, err := annotationList(AnnotationIP, v, ifName)
		if err != nil {
			return nil, nil, err
		}
		for _, s := range list {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, nil, cnierr.Invalid("pod annotation "+AnnotationIP, "%q is not an IP address", s)
			}
			ips = append(ips, a.Unmap())
		}
	}
	return pools, ips, nil
}

func annotationList(key, v, ifName string) ([]string, error) {
	field := "pod annotation " + key
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "{") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return nil, cnierr.Invalid(field, "not a JSON object of interface name to value(s): %v", err)
		}
		raw, ok := m[ifName]
		if !ok {
			return nil, nil
		}
		field += "[" + ifName + "]"
		var one string
		if json.Unmarshal(raw, &one) == nil {
			v = one
		} else {
			var list []string
			if err := json.Unmarshal(raw, &list); err != nil {
				return nil, cnierr.Invalid(field, "must be a string or a list of strings")
			}
			v = strings.Join(list, ",")
		}
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, cnierr.Invalid(field, "is empty")
	}
	return out, nil
}

// Selection is what one pod interface draws from, after Select.
type Selection struct {
	// Pools by name, of those the ranges came from.
	Pools map[string]*IPPool
	// Skipped says, for each candidate pool that was not used, why.
	Skipped []string
}

// ErrNoPool is wrapped by Select's error when a named pool does not exist
// (in the pools it was given: a cached list may predate the pool).
var ErrNoPool = errors.New("no such IPPool")

// Select resolves the pools a pod's interface draws from into cfg: the
// candidates (the pod's ipam.warpnet.io/pool annotation, else the
// configuration's pool or pools) that exist, do not overlap an older pool,
// and whose node and namespace selectors match, grouped by address family in
// order. Each family becomes one range set, so a pod gets one address per
// family (as from host-local's range sets, an address from one of the
// family's pools, tried in order). Addresses asked for by the annotation
// ipam.warpnet.io/ip join cfg.Requests. all are the cluster's pools; cfg
// is only changed when Select succeeds.
func Select(ctx context.Context, c *Client, cfg *config.Config, pod *Pod, node, ifName string, all []IPPool) (*Selection, error) {
	names, ips, err := PodRequest(pod.Annotations, ifName)
	if err != nil {
		return nil, err
	}
	field := "pod annotation " + AnnotationPool
	if names == nil {
		names, field = cfg.Kube.Pools, "ipam.pools"
	}
	if len(names) == 0 {
		return nil, cnierr.Invalid("ipam.pools", "missing: name the IPPools with \"pool\" or \"pools\", or annotate pod %s/%s with %s", pod.Namespace, pod.Name, AnnotationPool)
	}
	byName := map[string]*IPPool{}
	for i := range all {
		byName[all[i].Name] = &all[i]
	}
	sel := &Selection{Pools: map[string]*IPPool{}}
	var nodeLabels, nsLabels map[string]string
	var v4, v6 config.RangeSet
	var exclude []netip.Prefix
	for _, name := range names {
		p, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("%w: %w", ErrNoPool, cnierr.Invalid(field, "IPPool %q does not exist (kubectl get ippools.%s)", name, Group))
		}
		if q, bad := Overlapping(p, all); bad {
			sel.Skipped = append(sel.Skipped, fmt.Sprintf("IPPool %s (%s) overlaps the older IPPool %s (%s)", p.Name, p.Spec.Subnet, q.Name, q.Spec.Subnet))
			continue
		}
		if p.Spec.NodeSelector != nil {
			if nodeLabels == nil {
				if nodeLabels, err = c.NodeLabels(ctx, node); err != nil {
					return nil, fmt.Errorf("node %s (for IPPool %s's nodeSelector): %w", node, p.Name, err)
				}
			}
			if ok, err := matches(p.Spec.NodeSelector, nodeLabels); err != nil {
				return nil, cnierr.Invalid("IPPool "+p.Name+": spec.nodeSelector", "%v", err)
			} else if !ok {
				sel.Skipped = append(sel.Skipped, fmt.Sprintf("IPPool %s does not serve node %s (nodeSelector)", p.Name, node))
				continue
			}
		}
		if p.Spec.NamespaceSelector != nil && pod.Namespace != "" { // STATUS has no pod
			if nsLabels == nil {
				if nsLabels, err = c.NamespaceLabels(ctx, pod.Namespace); err != nil {
					return nil, fmt.Errorf("namespace %s (for IPPool %s's namespaceSelector): %w", pod.Namespace, p.Name, err)
				}
			}
			if ok, err := matches(p.Spec.NamespaceSelector, nsLabels); err != nil {
				return nil, cnierr.Invalid("IPPool "+p.Name+": spec.namespaceSelector", "%v", err)
			} else if !ok {
				sel.Skipped = append(sel.Skipped, fmt.Sprintf("IPPool %s does not serve namespace %s (namespaceSelector)", p.Name, pod.Namespace))
				continue
			}
		}
		rs, excl, err := p.Ranges()
		if err != nil {
			return nil, err
		}
		if rs[0].Subnet.Addr().Is4() {
			v4 = append(v4, rs...)
		} else {
			v6 = append(v6, rs...)
		}
		exclude = append(exclude, excl...)
		sel.Pools[p.Name] = p
	}
	var ranges []config.RangeSet
	for _, rs := range []config.RangeSet{v4, v6} {
		if len(rs) > 0 {
			ranges = append(ranges, rs)
		}
	}
	if len(ranges) == 0 {
		return nil, cnierr.Invalid(field, "no pool of %s serves pod %s/%s on node %s: %s", strings.Join(names, ", "), pod.Namespace, pod.Name, node, strings.Join(sel.Skipped, "; "))
	}
	if err := config.CheckOverlaps(ranges); err != nil {
		return nil, err
	}
	cfg.Ranges = append(cfg.Ranges, ranges...)
	cfg.Exclude = append(cfg.Exclude, exclude...)
	for _, ip := range ips {
		cfg.Requests = append(cfg.Requests, config.Request{Field: "pod annotation " + AnnotationIP, Addr: ip})
	}
	return sel, nil
}

func matches(s *LabelSelector, l map[string]string) (bool, error) { return s.Matches(l) }

// Result returns the routes and DNS of the pools the addresses came from,
// after the configuration's own: routes are added (without duplicates), and
// a pool's DNS overrides the configuration's field by field.
func (s *Selection) Result(cfg *config.Config, used []string) ([]*types.Route, types.DNS) {
	routes := slices.Clone(cfg.Routes)
	dns := cfg.DNS
	seen := map[string]bool{}
	for _, r := range routes {
		seen[r.String()] = true
	}
	dnsSet := false
	for _, name := range used {
		p := s.Pools[name]
		if p == nil {
			continue
		}
		for _, pr := range p.Spec.Routes {
			_, dst, err := net.ParseCIDR(pr.Dst)
			if err != nil {
				fmt.Fprintf(os.Stderr, "warp-ipam: IPPool %s: spec.routes: %q is not a CIDR; route skipped\n", name, pr.Dst)
				continue
			}
			r := &types.Route{Dst: *dst}
			if pr.GW != "" {
				r.GW = net.ParseIP(pr.GW)
			}
			if !seen[r.String()] {
				seen[r.String()] = true
				routes = append(routes, r)
			}
		}
		if d := p.Spec.DNS; d != nil && !dnsSet {
			dnsSet = true
			if len(d.Nameservers) > 0 {
				dns.Nameservers = d.Nameservers
			}
			if d.Domain != "" {
				dns.Domain = d.Domain
			}
			if len(d.Search) > 0 {
				dns.Search = d.Search
			}
			if len(d.Options) > 0 {
				dns.Options = d.Options
			}
		}
	}
	return routes, dns
}
