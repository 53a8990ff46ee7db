// Package config parses and validates warp-ipam's network configuration.
//
// The accepted keys are a superset of host-local's (ranges, the legacy single
// range, routes, dataDir, resolvConf, the ips and ipRanges capabilities,
// args.cni.ips and CNI_ARGS IP=), so an operator switches an existing network
// from host-local by changing "type" only. warp-ipam adds exclude, dns,
// detectConflicts and probeTimeout.
//
// Every failure is a *types.Error whose message names the offending field, so
// that the runtime's event log tells the operator what to fix.
package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/internal/cniargs"
	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/nodefacts"
)

// DefaultDataDir is where reservations live unless dataDir says otherwise; it
// is host-local's default so that existing reservations carry over.
const DefaultDataDir = "/var/lib/cni/networks"

// DefaultProbeTimeout bounds conflict detection per address. RFC 5227's own
// timings (seconds) are far too slow for a pod ADD; on one L2 segment an
// owner answers within a millisecond.
const DefaultProbeTimeout = 200 * time.Millisecond

// Range is one contiguous allocation span inside a subnet.
type Range struct {
	Subnet  netip.Prefix
	Start   netip.Addr // first allocatable address, inclusive
	End     netip.Addr // last allocatable address, inclusive
	Gateway netip.Addr // never handed out
	Pool    string     // the IPPool the range comes from (kubernetes store); "" otherwise
}

// Contains reports whether addr lies in [Start, End].
func (r Range) Contains(addr netip.Addr) bool {
	return addr.BitLen() == r.Start.BitLen() && r.Start.Compare(addr) <= 0 && addr.Compare(r.End) <= 0
}

// NetworkOrBroadcast reports whether addr is the subnet's network address
// or, for IPv4, its broadcast address. Neither is ever handed out, even when
// rangeStart or rangeEnd includes it: dynamic allocation skips them and a
// fixed request for one is refused, so both paths agree.
func (r Range) NetworkOrBroadcast(addr netip.Addr) bool {
	if addr == r.Subnet.Addr() {
		return true
	}
	return addr.Is4() && r.Subnet.Contains(addr) && !r.Subnet.Contains(addr.Next())
}

// RangeSet is the list of ranges one address is drawn from; a pod gets one
// address per range set (that is how dual-stack is expressed).
type RangeSet []Range

// Contains reports whether any range of the set holds addr.
func (s RangeSet) Contains(addr netip.Addr) bool {
	for _, r := range s {
		if r.Contains(addr) {
			return true
		}
	}
	return false
}

// String lists the set's ranges as start-end pairs, for messages.
func (s RangeSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.Start.String() + "-" + r.End.String()
		if r.Pool != "" {
			parts[i] = "IPPool " + r.Pool + " " + parts[i]
		}
	}
	return strings.Join(parts, ", ")
}

// RangeFor returns the range of the set holding addr.
func (s RangeSet) RangeFor(addr netip.Addr) (Range, bool) {
	for _, r := range s {
		if r.Contains(addr) {
			return r, true
		}
	}
	return Range{}, false
}

// Config is the validated configuration of one ADD/DEL/CHECK/STATUS/GC call.
type Config struct {
	CNIVersion string
	Network    string // the network name; reservations are kept per network

	Ranges          []RangeSet
	Routes          []*types.Route
	DNS             types.DNS
	DataDir         string
	Exclude         []netip.Prefix // single IPs are stored as /32 or /128
	DetectConflicts bool
	ProbeTimeout    time.Duration

	// Requested holds fixed addresses asked for by the runtime (ips
	// capability, args.cni.ips, CNI_ARGS IP=), each matched to the index of
	// the range set that holds it.
	Requested map[int]netip.Addr
	// Requests are those addresses as asked for, each with the field it
	// came from; the kubernetes store matches them (with the pod's
	// ipam.warpnet.io/ip annotation) once the pools are known.
	Requests []Request

	// Store is StoreLocal (reservations on the node's disk) or
	// StoreKubernetes (cluster-wide, in the API server; Kube holds its keys).
	Store string
	Kube  Kube

	// ValidAttachments is only set for GC: the attachments to keep.
	ValidAttachments []types.GCAttachment
}

// The stores warp-ipam keeps reservations in ("store" in the configuration).
const (
	StoreLocal      = "local"
	StoreKubernetes = "kubernetes"
)

// DefaultKubeTimeout bounds the API server work of one ADD or DEL; past it
// ADD fails with "try again later" and DEL queues the release.
const DefaultKubeTimeout = 10 * time.Second

// Kube is the configuration of the kubernetes store.
type Kube struct {
	Kubeconfig string        // path; "" = kube.DefaultKubeconfig
	Pools      []string      // candidate IPPools, in order (pool or pools)
	NodeName   string        // this node; "" = the one warpd publishes (in NodeFacts), else the hostname
	NodeFacts  string        // where warpd publishes the node's facts; "" = nodefacts.DefaultPath
	PodFacts   string        // where warpd publishes the node's pods; "" = kube.DefaultPodFactsDir
	Timeout    time.Duration // bound on the API work of one call
}

// Request is one fixed address asked for, and where it was asked.
type Request struct {
	Field string
	Addr  netip.Addr
}

// Excluded reports whether addr must never be handed out.
func (c *Config) Excluded(addr netip.Addr) bool {
	for _, p := range c.Exclude {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

type rangeJSON struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

type ipamJSON struct {
	Type string `json:"type"`
	// The kubernetes store's keys (storeJSON reads store and the keys DEL
	// needs).
	Pool  string   `json:"pool"`
	Pools []string `json:"pools"`
	// The legacy single range that host-local still accepts at the top of
	// the ipam section.
	rangeJSON
	Ranges          [][]rangeJSON  `json:"ranges"`
	Routes          []*types.Route `json:"routes"`
	DataDir         string         `json:"dataDir"`
	ResolvConf      string         `json:"resolvConf"`
	Exclude         []string       `json:"exclude"`
	DNS             *types.DNS     `json:"dns"`
	DetectConflicts *bool          `json:"detectConflicts"`
	ProbeTimeout    string         `json:"probeTimeout"`
	NodeFacts       string         `json:"nodeFacts"`
}

type netJSON struct {
	CNIVersion    string    `json:"cniVersion"`
	Name          string    `json:"name"`
	IPAM          *ipamJSON `json:"ipam"`
	RuntimeConfig struct {
		IPs      []string      `json:"ips"`
		IPRanges [][]rangeJSON `json:"ipRanges"`
	} `json:"runtimeConfig"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

// storeJSON is the part of the configuration that locates reservations.
type storeJSON struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	IPAM       *struct {
		DataDir    string `json:"dataDir"`
		Store      string `json:"store"`
		Kubeconfig string `json:"kubeconfig"`
		NodeName   string `json:"nodeName"`
		NodeFacts  string `json:"nodeFacts"`
		PodFacts   string `json:"podFacts"`
		Timeout    string `json:"timeout"`
	} `json:"ipam"`
	ValidAttachments  []types.GCAttachment `json:"cni.dev/valid-attachments"`
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments"`
}

// LoadStore parses only what locating the reservations needs (network name
// and dataDir). DEL and GC use it so that an attachment can be released even
// when the rest of the configuration has since become invalid.
func LoadStore(stdin []byte) (*Config, error) {
	var n storeJSON
	if err := cnierr.Decode(stdin, &n); err != nil {
		return nil, err
	}
	if n.IPAM == nil {
		return nil, cnierr.Invalid("ipam", "missing: the network configuration has no ipam section")
	}
	if n.Name == "" {
		return nil, cnierr.Invalid("name", "missing: reservations are kept per network name")
	}
	if strings.ContainsAny(n.Name, "/\x00") || n.Name == "." || n.Name == ".." {
		return nil, cnierr.Invalid("name", "%q cannot be used as a directory name", n.Name)
	}
	c := &Config{CNIVersion: n.CNIVersion, Network: n.Name, DataDir: n.IPAM.DataDir}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	// A relative path would be resolved against whatever directory the
	// runtime happens to run the plugin in.
	if !filepath.IsAbs(c.DataDir) {
		return nil, cnierr.Invalid("ipam.dataDir", "%q is not an absolute path", c.DataDir)
	}
	c.ValidAttachments = append(append([]types.GCAttachment{}, n.ValidAttachments...), n.LegacyAttachments...)
	switch n.IPAM.Store {
	case "", StoreLocal:
		c.Store = StoreLocal
	case StoreKubernetes:
		c.Store = StoreKubernetes
		c.Kube = Kube{Kubeconfig: n.IPAM.Kubeconfig, NodeName: n.IPAM.NodeName, NodeFacts: n.IPAM.NodeFacts, PodFacts: n.IPAM.PodFacts, Timeout: DefaultKubeTimeout}
		if c.Kube.NodeFacts != "" && !filepath.IsAbs(c.Kube.NodeFacts) {
			return nil, cnierr.Invalid("ipam.nodeFacts", "%q is not an absolute path", c.Kube.NodeFacts)
		}
		if c.Kube.PodFacts != "" && !filepath.IsAbs(c.Kube.PodFacts) {
			return nil, cnierr.Invalid("ipam.podFacts", "%q is not an absolute path", c.Kube.PodFacts)
		}
		if c.Kube.Kubeconfig != "" && !filepath.IsAbs(c.Kube.Kubeconfig) {
			return nil, cnierr.Invalid("ipam.kubeconfig", "%q is not an absolute path", c.Kube.Kubeconfig)
		}
		if n.IPAM.Timeout != "" {
			d, err := time.ParseDuration(n.IPAM.Timeout)
			if err != nil || d < 100*time.Millisecond || d > 5*time.Minute {
				return nil, cnierr.Invalid("ipam.timeout", "%q must be a duration between 100ms and 5m, e.g. \"10s\"", n.IPAM.Timeout)
			}
			c.Kube.Timeout = d
		}
	default:
		return nil, cnierr.Invalid("ipam.store", "%q is not a store: use %q (the default: this node's disk) or %q (cluster-wide IPPools)", n.IPAM.Store, StoreLocal, StoreKubernetes)
	}
	return c, nil
}

// Load parses and validates the whole configuration. envArgs is CNI_ARGS.
func Load(stdin []byte, envArgs string) (*Config, error) {
	c, err := LoadStore(stdin)
	if err != nil {
		return nil, err
	}
	var n netJSON
	if err := cnierr.Decode(stdin, &n); err != nil {
		return nil, err
	}
	ij := n.IPAM
	if c.Store == StoreKubernetes {
		return c, c.loadKube(&n, envArgs)
	}
	if ij.Pool != "" || ij.Pools != nil {
		return nil, cnierr.Invalid("ipam.pools", "pools need \"store\": %q", StoreKubernetes)
	}

	// Range sets, in host-local's order: runtime ipRanges, legacy range, ranges.
	type namedSet struct {
		field string
		set   []rangeJSON
	}
	var sets []namedSet
	for i, s := range n.RuntimeConfig.IPRanges {
		sets = append(sets, namedSet{fmt.Sprintf("runtimeConfig.ipRanges[%d]", i), s})
	}
	if ij.Subnet != "" {
		sets = append(sets, namedSet{"ipam", []rangeJSON{ij.rangeJSON}})
	} else if ij.RangeStart != "" || ij.RangeEnd != "" || ij.Gateway != "" {
		return nil, cnierr.Invalid("ipam.subnet", "missing: rangeStart/rangeEnd/gateway at the top of ipam need a subnet")
	}
	for i, s := range ij.Ranges {
		sets = append(sets, namedSet{fmt.Sprintf("ipam.ranges[%d]", i), s})
	}
	if len(sets) == 0 {
		return nil, cnierr.Invalid("ipam.ranges", "missing: give at least one range set, e.g. [[{\"subnet\": \"10.10.0.0/16\"}]]")
	}
	for _, ns := range sets {
		if len(ns.set) == 0 {
			return nil, cnierr.Invalid(ns.field, "empty range set")
		}
		if slices.ContainsFunc(ns.set, func(r rangeJSON) bool { return r.Subnet == PodCIDR }) {
			expanded, err := podCIDRSets(ns.field, ns.set, ij.NodeFacts)
			if err != nil {
				return nil, err
			}
			c.Ranges = append(c.Ranges, expanded...)
			continue
		}
		var rs RangeSet
		for j, rj := range ns.set {
			field := fmt.Sprintf("%s[%d]", ns.field, j)
			if ns.field == "ipam" {
				field = "ipam"
			}
			r, err := parseRange(field, rj)
			if err != nil {
				return nil, err
			}
			if len(rs) > 0 && rs[0].Subnet.Addr().Is4() != r.Subnet.Addr().Is4() {
				return nil, cnierr.Invalid(field+".subnet", "%s mixes address families within one range set", r.Subnet)
			}
			rs = append(rs, r)
		}
		c.Ranges = append(c.Ranges, rs)
	}
	if err := checkOverlaps(c.Ranges); err != nil {
		return nil, err
	}
	if err := c.parseCommon(ij); err != nil {
		return nil, err
	}
	if err := c.parseRequested(&n, envArgs); err != nil {
		return nil, err
	}
	if err := c.MatchRequested(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseCommon parses the keys both stores take: exclude, routes, DNS and
// conflict detection.
func (c *Config) parseCommon(ij *ipamJSON) error {
	for i, s := range ij.Exclude {
		p, err := parsePrefixOrAddr(s)
		if err != nil {
			return cnierr.Invalid(fmt.Sprintf("ipam.exclude[%d]", i), "%q is neither an IP address nor a CIDR", s)
		}
		c.Exclude = append(c.Exclude, p)
	}

	for i, r := range ij.Routes {
		if r == nil || r.Dst.IP == nil {
			return cnierr.Invalid(fmt.Sprintf("ipam.routes[%d].dst", i), "missing")
		}
	}
	c.Routes = ij.Routes

	if ij.ResolvConf != "" {
		dns, err := parseResolvConf(ij.ResolvConf)
		if err != nil {
			return cnierr.Invalid("ipam.resolvConf", "%v", err)
		}
		c.DNS = *dns
	}
	if ij.DNS != nil {
		mergeDNS(&c.DNS, *ij.DNS)
	}

	c.DetectConflicts = ij.DetectConflicts == nil || *ij.DetectConflicts
	c.ProbeTimeout = DefaultProbeTimeout
	if ij.ProbeTimeout != "" {
		d, err := time.ParseDuration(ij.ProbeTimeout)
		if err != nil || d <= 0 || d > 10*time.Second {
			return cnierr.Invalid("ipam.probeTimeout", "%q must be a duration between 1ms and 10s, e.g. \"200ms\"", ij.ProbeTimeout)
		}
		c.ProbeTimeout = d
	}

	return nil
}

// loadKube parses the kubernetes store's configuration: pools instead of
// ranges (their ranges, exclusions, gateways, routes and DNS come from the
// IPPools once the pod is known).
func (c *Config) loadKube(n *netJSON, envArgs string) error {
	ij := n.IPAM
	switch {
	case ij.Subnet != "" || ij.Ranges != nil:
		return cnierr.Invalid("ipam.ranges", "the kubernetes store takes its ranges from IPPools; name them with \"pool\" or \"pools\"")
	case n.RuntimeConfig.IPRanges != nil:
		return cnierr.Invalid("runtimeConfig.ipRanges", "the kubernetes store takes its ranges from IPPools; use the pod annotation %s instead", "ipam.warpnet.io/pool")
	case ij.Pool != "" && ij.Pools != nil:
		return cnierr.Invalid("ipam.pool", "give either pool or pools, not both")
	}
	if ij.Pool != "" {
		c.Kube.Pools = []string{ij.Pool}
	}
	for i, p := range ij.Pools {
		if p == "" {
			return cnierr.Invalid(fmt.Sprintf("ipam.pools[%d]", i), "empty pool name")
		}
		c.Kube.Pools = append(c.Kube.Pools, p)
	}
	if err := c.parseCommon(ij); err != nil {
		return err
	}
	return c.parseRequested(n, envArgs)
}

// PodCIDR as a range's subnet stands for this node's pod CIDRs, as warpd
// publishes them (internal/nodefacts): one range set per address family the
// node has, so that one configuration serves every node.
const PodCIDR = "podCIDR"

// podCIDRSets expands a range set whose subnet is PodCIDR. Until warpd has
// published the node's pod CIDRs, ADD cannot succeed: code 11, try again.
func podCIDRSets(field string, set []rangeJSON, factsPath string) ([]RangeSet, error) {
	if len(set) != 1 {
		return nil, cnierr.Invalid(field, "a range set with subnet %q must hold that one range", PodCIDR)
	}
	if rj := set[0]; rj.RangeStart != "" || rj.RangeEnd != "" || rj.Gateway != "" {
		return nil, cnierr.Invalid(field+"[0]", "subnet %q takes no rangeStart, rangeEnd or gateway (they differ per node)", PodCIDR)
	}
	if factsPath == "" {
		factsPath = nodefacts.DefaultPath
	} else if !filepath.IsAbs(factsPath) {
		return nil, cnierr.Invalid("ipam.nodeFacts", "%q is not an absolute path", factsPath)
	}
	facts, err := nodefacts.Read(factsPath)
	if err == nil && len(facts.PodCIDRs) == 0 {
		err = fmt.Errorf("%s lists no pod CIDR for node %q (does the Node have spec.podCIDRs?)", factsPath, facts.Node)
	}
	if err != nil {
		return nil, cnierr.New(types.ErrTryAgainLater, "%s[0].subnet: %q needs this node's pod CIDRs, which warpd publishes: %v", field, PodCIDR, err)
	}
	var out []RangeSet
	for i, p := range facts.PodCIDRs {
		r, err := parseRange(fmt.Sprintf("%s[0] (pod CIDR %d of node %s)", field, i, facts.Node), rangeJSON{Subnet: p.String()})
		if err != nil {
			return nil, err
		}
		out = append(out, RangeSet{r})
	}
	return out, nil
}

// ParseRange parses one range as the configuration's ranges are parsed
// (defaults, checks and messages naming field); the kubernetes store
// builds its ranges from IPPools with it.
func ParseRange(field, subnet, start, end, gateway string) (Range, error) {
	return parseRange(field, rangeJSON{Subnet: subnet, RangeStart: start, RangeEnd: end, Gateway: gateway})
}

// CheckOverlaps refuses range sets whose ranges overlap.
func CheckOverlaps(sets []RangeSet) error { return checkOverlaps(sets) }

func parseRange(field string, rj rangeJSON) (Range, error) {
	if rj.Subnet == "" {
		return Range{}, cnierr.Invalid(field+".subnet", "missing")
	}
	p, err := netip.ParsePrefix(rj.Subnet)
	if err != nil {
		return Range{}, cnierr.Invalid(field+".subnet", "%q is not a CIDR", rj.Subnet)
	}
	if p.Addr().Is4In6() {
		return Range{}, cnierr.Invalid(field+".subnet", "%q: use plain IPv4 notation", rj.Subnet)
	}
	if p != p.Masked() {
		return Range{}, cnierr.Invalid(field+".subnet", "%s has host bits set; the network address is %s", p, p.Masked())
	}
	if p.Bits() == 0 {
		return Range{}, cnierr.Invalid(field+".subnet", "%s covers every address (loopback, multicast, the node's own); give the pods' subnet", p)
	}
	if p.Bits() > p.Addr().BitLen()-2 {
		return Range{}, cnierr.Invalid(field+".subnet", "%s is too small to allocate from (at most /%d)", p, p.Addr().BitLen()-2)
	}
	r := Range{Subnet: p}
	addr := func(name, s string, def netip.Addr) (netip.Addr, error) {
		if s == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return a, cnierr.Invalid(field+"."+name, "%q is not an IP address", s)
		}
		a = a.Unmap()
		if !p.Contains(a) {
			return a, cnierr.Invalid(field+"."+name, "%s is not in subnet %s", a, p)
		}
		return a, nil
	}
	if r.Start, err = addr("rangeStart", rj.RangeStart, p.Addr().Next()); err != nil {
		return r, err
	}
	if r.End, err = addr("rangeEnd", rj.RangeEnd, lastUsable(p)); err != nil {
		return r, err
	}
	if r.Gateway, err = addr("gateway", rj.Gateway, p.Addr().Next()); err != nil {
		return r, err
	}
	if r.End.Less(r.Start) {
		return r, cnierr.Invalid(field+".rangeEnd", "%s is before rangeStart %s", r.End, r.Start)
	}
	return r, nil
}

// lastUsable is the last address of p, less the IPv4 broadcast address.
func lastUsable(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(0xff >> (8 - n))
		hostBits -= n
	}
	last, _ := netip.AddrFromSlice(b)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	return last
}

func checkOverlaps(sets []RangeSet) error {
	type located struct {
		set, idx int
		r        Range
	}
	var all []located
	for i, s := range sets {
		for j, r := range s {
			all = append(all, located{i, j, r})
		}
	}
	for a := 0; a < len(all); a++ {
		for b := a + 1; b < len(all); b++ {
			x, y := all[a], all[b]
			if x.r.Start.BitLen() != y.r.Start.BitLen() {
				continue
			}
			if !(x.r.End.Less(y.r.Start) || y.r.End.Less(x.r.Start)) {
				return cnierr.Invalid("ipam.ranges", "range %d.%d (%s-%s) overlaps range %d.%d (%s-%s)",
					x.set, x.idx, x.r.Start, x.r.End, y.set, y.idx, y.r.Start, y.r.End)
			}
		}
	}
	return nil
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseRequested collects fixed addresses from every source the runtime may
// use into c.Requests.
func (c *Config) parseRequested(n *netJSON, envArgs string) error {
	args, err := cniargs.Parse(envArgs)
	if err != nil {
		return err
	}
	for _, a := range args.IP {
		c.Requests = append(c.Requests, Request{"CNI_ARGS IP", a})
	}
	type jsonIP struct{ field, value string }
	var fromJSON []jsonIP
	if n.Args != nil && n.Args.CNI != nil {
		for i, v := range n.Args.CNI.IPs {
			fromJSON = append(fromJSON, jsonIP{fmt.Sprintf("args.cni.ips[%d]", i), v})
		}
	}
	for i, v := range n.RuntimeConfig.IPs {
		fromJSON = append(fromJSON, jsonIP{fmt.Sprintf("runtimeConfig.ips[%d]", i), v})
	}
	for _, j := range fromJSON {
		s := strings.TrimSpace(j.value)
		if i := strings.IndexByte(s, '/'); i >= 0 {
			s = s[:i] // the ips capability carries a prefix length; the range decides it
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return cnierr.Invalid(j.field, "%q is not an IP address", j.value)
		}
		c.Requests = append(c.Requests, Request{j.field, a.Unmap()})
	}
	return nil
}

// MatchRequested matches every address of c.Requests to the range set
// holding it (into c.Requested), refusing one outside every range, excluded,
// a gateway, a network or broadcast address, or a second one for a set.
func (c *Config) MatchRequested() error {
	if len(c.Requests) == 0 {
		return nil
	}
	c.Requested = map[int]netip.Addr{}
	for _, r := range c.Requests {
		a := r.Addr
		set := -1
		for i, rs := range c.Ranges {
			if rs.Contains(a) {
				set = i
				break
			}
		}
		if set < 0 {
			return cnierr.Invalid(r.Field, "%s is not inside any configured range (%s)", a, c.describeRanges())
		}
		rng, _ := c.Ranges[set].RangeFor(a)
		switch {
		case rng.Gateway == a:
			return cnierr.Invalid(r.Field, "%s is the gateway of its range", a)
		case rng.NetworkOrBroadcast(a):
			return cnierr.Invalid(r.Field, "%s is the network or broadcast address of subnet %s", a, rng.Subnet)
		case c.Excluded(a):
			return cnierr.Invalid(r.Field, "%s is listed in %s", a, c.excludeSource(a))
		}
		if prev, dup := c.Requested[set]; dup && prev != a {
			return cnierr.Invalid(r.Field, "%s and %s are both in range set %d; a pod gets one address per range set", prev, a, set)
		}
		c.Requested[set] = a
	}
	return nil
}

// excludeSource names where the exclusion of a came from, for messages.
func (c *Config) excludeSource(a netip.Addr) string {
	if c.Store == StoreKubernetes {
		for _, rs := range c.Ranges {
			if r, ok := rs.RangeFor(a); ok && r.Pool != "" {
				return "the exclusions of IPPool " + r.Pool
			}
		}
	}
	return "ipam.exclude"
}

func (c *Config) describeRanges() string {
	parts := make([]string, len(c.Ranges))
	for i, s := range c.Ranges {
		parts[i] = s.String()
	}
	return strings.Join(parts, "; ")
}

// mergeDNS lets the explicit dns section override what resolvConf gave,
// field by field.
func mergeDNS(dst *types.DNS, src types.DNS) {
	if len(src.Nameservers) > 0 {
		dst.Nameservers = src.Nameservers
	}
	if src.Domain != "" {
		dst.Domain = src.Domain
	}
	if len(src.Search) > 0 {
		dst.Search = src.Search
	}
	if len(src.Options) > 0 {
		dst.Options = src.Options
	}
}
