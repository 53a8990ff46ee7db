package harness

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
)

// Segment is a simulated L2 network between nodes (a "switch"): a bridge in
// a namespace of its own, with an IPv4 and an IPv6 subnet. Nodes attach to
// it with Attach; a Router joins segments. Nothing of it touches the
// machine's namespace.
type Segment struct {
	Name   string
	V4, V6 netip.Prefix
	ns     *NetNS
	env    *Env
	ports  int
	links  []segmentLink // attached with Attach
	// nicLike: NICLike was called; links attached later are made so too
	nicLike bool
}

// Segment creates an L2 segment with the given subnets (e.g. "10.200.0.0/24",
// "fd00:200::/64"; v6 may be ""). Address .1 of each subnet is reserved for
// a Router.
func (e *Env) Segment(name, v4, v6 string) *Segment {
	e.t.Helper()
	s := &Segment{Name: name, ns: e.NetNS("seg-" + name), env: e}
	var err error
	if s.V4, err = netip.ParsePrefix(v4); err != nil {
		e.fatalf("Segment %s: %v", name, err)
	}
	if v6 != "" {
		if s.V6, err = netip.ParsePrefix(v6); err != nil {
			e.fatalf("Segment %s: %v", name, err)
		}
	}
	e.Bridge(s.ns, "br0")
	return s
}

// Switch is the segment's own namespace, holding its bridge (br0) and the
// switch ends of the nodes' links (p1, p2, ... in the order of Attach), for
// tests that tune the simulated NICs' peers.
func (s *Segment) Switch() *NetNS { return s.ns }

// Gateway is the address of the segment's router (host .1) in the family.
func (s *Segment) Gateway(v4 bool) netip.Addr {
	p := s.V4
	if !v4 {
		p = s.V6
	}
	if !p.IsValid() {
		return netip.Addr{}
	}
	return p.Addr().Next()
}

// Host is host number host of the segment's subnet in the family. IPv6
// hosts read like IPv4 ones: host 50 of fd00:200::/64 is fd00:200::50, as
// of 10.200.0.0/24 it is 10.200.0.50.
func (s *Segment) Host(host int, v4 bool) netip.Addr {
	p := s.V4
	if !v4 {
		p = s.V6
		if n, err := strconv.ParseUint(strconv.Itoa(host), 16, 64); err == nil {
			host = int(n)
		}
	}
	if !p.IsValid() {
		return netip.Addr{}
	}
	a := p.Addr()
	for range host {
		a = a.Next()
	}
	return a
}

// Attach connects n to the segment through a veth named ifName in n, with
// host number host of each subnet, and a default route via the segment's
// router (host .1) unless host is 1 or noDefault is set. It returns n's
// addresses.
func (s *Segment) Attach(n *NetNS, ifName string, host int, noDefault ...bool) (v4, v6 netip.Addr) {
	s.env.t.Helper()
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	s.env.Veth(n, ifName, s.ns, port)
	if err := runIP("-n", s.ns.Name, "link", "set", port, "master", "br0"); err != nil {
		s.env.fatalf("%v", err)
	}
	l := segmentLink{ns: n, ifName: ifName, port: port}
	s.links = append(s.links, l)
	if s.nicLike {
		s.makeNICLike(l)
	}
	v4, v6 = s.Host(host, true), s.Host(host, false)
	s.env.Addr(n, ifName, netip.PrefixFrom(v4, s.V4.Bits()).String())
	if v6.IsValid() {
		s.env.Addr(n, ifName, netip.PrefixFrom(v6, s.V6.Bits()).String())
	}
	if host != 1 && (len(noDefault) == 0 || !noDefault[0]) {
		if err := runIP("-n", n.Name, "route", "add", "default", "via", s.Gateway(true).String()); err != nil {
			s.env.fatalf("%v", err)
		}
		if v6.IsValid() {
			if err := runIP("-n", n.Name, "-6", "route", "add", "default", "via", s.Gateway(false).String()); err != nil {
				s.env.fatalf("%v", err)
			}
		}
	}
	return v4, v6
}

// Router creates a namespace that forwards between the segments, holding
// host .1 of each (the nodes' default gateway).
func (e *Env) Router(name string, segs ...*Segment) *NetNS {
	e.t.Helper()
	r := e.NetNS(name)
	for i, s := range segs {
		s.Attach(r, fmt.Sprintf("r%d", i), 1)
	}
	r.Exec(e.t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return r
}

// Plug moves the existing link named link from the namespace at nsPath into
// the segment and attaches it to the segment's switch: a cable from
// something the harness did not create (a simulated PF's port) to this
// segment.
func (s *Segment) Plug(nsPath, link string) {
	s.env.t.Helper()
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	for _, args := range [][]string{
		{"-n", filepath.Base(nsPath), "link", "set", link, "netns", s.ns.Name, "name", port},
		{"-n", s.ns.Name, "link", "set", port, "master", "br0", "up"},
	} {
		if err := runIP(args...); err != nil {
			s.env.fatalf("%v", err)
		}
	}
}
