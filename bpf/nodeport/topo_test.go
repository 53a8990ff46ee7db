package nodeport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// The datapath's tests run real traffic through a small cluster built by
// hand in namespaces (nothing links to the machine's namespace):
//
//	client 10.200.0.50 ──┐
//	                      ├── segment "ul" (a bridge): 10.200.0.0/24, fd00:200::/64
//	node a 10.200.0.11 ──┤      pods 10.244.1.x, fd00:10:244:1::x behind warpNN veths
//	node b 10.200.0.12 ──┘      pods 10.244.2.x, fd00:10:244:2::x
//
// Nodes route each other's pod CIDRs natively (or through daemon/routing's
// VXLAN tunnel, tunnel()), as warpd's cluster network does. Each node has
// its own load balancer on a bpffs of the test's own.

const (
	nodePort = 30080
	podPort  = 8080
)

type tpod struct {
	name     string
	ns       *harness.NetNS
	host     string // host end in the node
	ip4, ip6 netip.Addr
}

type tnode struct {
	name     string
	n        int // 1, 2: its pod CIDR
	ns       *harness.NetNS
	ip4, ip6 netip.Addr
	lb       *LB
	root     string
	pods     []*tpod
	hook     Hook // on eth0
}

type tcluster struct {
	t      *testing.T
	env    *harness.Env
	seg    *harness.Segment
	client *harness.NetNS
	a, b   *tnode
}

// newCluster builds the client and nodes a and b with one pod each, and
// loads each node's load balancer with its programs on every interface:
// hook (XDP or TC) on eth0, tc on the pods' veths.
func newCluster(t *testing.T, hook Hook) *tcluster {
	t.Helper()
	env := harness.New(t)
	c := &tcluster{t: t, env: env}
	c.seg = env.Segment("ul", "10.200.0.0/24", "fd00:200::/64")
	c.client = env.NetNS("client")
	c.seg.Attach(c.client, "eth0", 50, true)
	c.a = c.addNode("a", 1, 11)
	c.b = c.addNode("b", 2, 12)
	for _, r := range []struct {
		n    *tnode
		peer *tnode
	}{{c.a, c.b}, {c.b, c.a}} {
		r.n.ns.Exec(t, "ip", "route", "add", fmt.Sprintf("10.244.%d.0/24", r.peer.n), "via", r.peer.ip4.String())
		r.n.ns.Exec(t, "ip", "-6", "route", "add", fmt.Sprintf("fd00:10:244:%d::/64", r.peer.n), "via", r.peer.ip6.String())
	}
	if hook == XDP {
		c.seg.NICLike()
	}
	for _, n := range []*tnode{c.a, c.b} {
		n.hook = hook
		c.addPod(n)
		c.loadLB(n)
	}
	return c
}

func (c *tcluster) addNode(name string, n, host int) *tnode {
	t := c.t
	nd := &tnode{name: name, n: n, ns: c.env.NetNS(name)}
	nd.ip4, nd.ip6 = c.seg.Attach(nd.ns, "eth0", host, true)
	nd.ns.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	nd.root = filepath.Join(c.env.BPFFS(), "warpnet")
	return nd
}

// addPod adds a pod to n, wired as warp-veth wires it, with a server on
// podPort that tells who answered and whom it saw.
func (c *tcluster) addPod(n *tnode) *tpod {
	t := c.t
	i := len(n.pods)
	p := &tpod{name: fmt.Sprintf("p%s%d", n.name, i), host: fmt.Sprintf("warp%s%d", n.name, i),
		ip4: netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", n.n, 10+i)),
		ip6: netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::%d", n.n, 10+i))}
	p.ns = c.env.NetNS(p.name)
	c.env.Veth(n.ns, p.host, p.ns, "eth0")
	hostMAC, podMAC := fmt.Sprintf("02:aa:00:%02x:%02x:01", n.n, i), fmt.Sprintf("02:aa:00:%02x:%02x:02", n.n, i)
	ip := func(ns *harness.NetNS, args ...string) { ns.Exec(t, append([]string{"ip"}, args...)...) }
	ip(n.ns, "link", "set", p.host, "address", hostMAC)
	ip(p.ns, "link", "set", "eth0", "address", podMAC)
	c.env.Addr(p.ns, "eth0", p.ip4.String()+"/32")
	c.env.Addr(p.ns, "eth0", p.ip6.String()+"/128")
	ip(p.ns, "route", "add", "169.254.1.1/32", "dev", "eth0", "scope", "link")
	ip(p.ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
	ip(p.ns, "neigh", "add", "169.254.1.1", "lladdr", hostMAC, "dev", "eth0", "nud", "permanent")
	ip(p.ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
	ip(p.ns, "-6", "neigh", "add", "fe80::1", "lladdr", hostMAC, "dev", "eth0", "nud", "permanent")
	ip(n.ns, "route", "add", p.ip4.String()+"/32", "dev", p.host)
	ip(n.ns, "neigh", "add", p.ip4.String(), "lladdr", podMAC, "dev", p.host, "nud", "permanent")
	ip(n.ns, "-6", "route", "add", p.ip6.String()+"/128", "dev", p.host)
	ip(n.ns, "-6", "neigh", "add", p.ip6.String(), "lladdr", podMAC, "dev", p.host, "nud", "permanent")
	whoServer(t, c.env, p.ns, p.name, podPort)
	n.pods = append(n.pods, p)
	if n.lb != nil {
		c.setInterfaces(n)
	}
	return p
}

// loadLB opens n's load balancer, configures it and attaches it.
func (c *tcluster) loadLB(n *tnode) {
	t := c.t
	lb, err := Open(n.root, Sizes{Frontends: 256, Services: 64, Backends: 256, Conns: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	n.lb = lb
	if err := lb.Configure(DefaultSettings); err != nil {
		t.Fatal(err)
	}
	c.setInterfaces(n)
}

// setInterfaces tells n's programs its interfaces and attaches them.
func (c *tcluster) setInterfaces(n *tnode) {
	t := c.t
	err := n.ns.Do(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		roles := map[int]Role{}
		for _, l := range links {
			a := l.Attrs()
			switch {
			case a.Name == "lo":
				continue
			case a.Name == "eth0":
				roles[a.Index] = External
			case strings.HasPrefix(a.Name, "warp") && l.Type() == "veth":
				roles[a.Index] = Pod
			case l.Type() == "vxlan":
				roles[a.Index] = TunnelDevice
			default:
				roles[a.Index] = Other
			}
		}
		if err := n.lb.SetInterfaces(roles); err != nil {
			return err
		}
		for idx, r := range roles {
			if r == External && n.hook == XDP {
				if err := n.lb.AttachXDP(idx); err != nil {
					return err
				}
			}
			if err := n.lb.AttachTC(idx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("load balancer of %s: %v", n.name, err)
	}
}

// tunnel makes a and b reach each other's pods through daemon/routing's
// VXLAN tunnel instead of native routes, and tells the load balancers.
func (c *tcluster) tunnel() {
	t := c.t
	nodes := []routing.Node{
		{Name: "a", Addrs: []netip.Addr{c.a.ip4}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}},
		{Name: "b", Addrs: []netip.Addr{c.b.ip4}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")}},
	}
	for _, n := range []*tnode{c.a, c.b} {
		n.ns.Exec(t, "ip", "route", "flush", "10.244.0.0/16")
		n.ns.Exec(t, "ip", "-6", "route", "del", fmt.Sprintf("fd00:10:244:%d::/64", 3-n.n))
		m, err := routing.New(routing.Config{Mode: routing.VXLAN, Self: n.name})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.ns.Do(func() error { _, err := m.Sync(nodes); return err }); err != nil {
			t.Fatalf("tunnel on %s: %v", n.name, err)
		}
		peer := c.b
		if n == c.b {
			peer = c.a
		}
		settings := DefaultSettings
		settings.Tunnel = &Tunnel{VNI: routing.DefaultVNI, Port: routing.DefaultPort, MAC: routing.VTEPMAC(n.name)}
		if err := n.lb.Configure(settings); err != nil {
			t.Fatal(err)
		}
		if err := n.lb.SetTunnelPeers(map[string]netip.Addr{routing.VTEPMAC(peer.name).String(): peer.ip4}); err != nil {
			t.Fatal(err)
		}
		c.setInterfaces(n)
	}
}

// whoServer answers TCP and UDP on port in ns with "<name> <peer>": who
// answered, and the client address it saw. TCP connections may send
// several messages; one whose first byte is '#' is echoed instead (bulk),
// as are UDP datagrams starting with '#'.
func whoServer(t *testing.T, e *harness.Env, ns *harness.NetNS, name string, port int) {
	var tl net.Listener
	var ul net.PacketConn
	err := ns.Do(func() (err error) {
		if tl, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("server in %s: %v", ns, err)
	}
	e.Defer("stop server in "+ns.Name, func() error { return errors.Join(tl.Close(), ul.Close()) })
	go func() {
		for {
			conn, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 64<<10)
				echo := false // a connection starting with '#' is echoed (bulk)
				for first := true; ; first = false {
					n, err := conn.Read(buf)
					if err != nil {
						return
					}
					if first && n > 0 && buf[0] == '#' {
						echo = true
					}
					if echo {
						if _, err := conn.Write(buf[:n]); err != nil {
							return
						}
						continue
					}
					fmt.Fprintf(conn, "%s %s", name, conn.RemoteAddr())
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 && buf[0] == '#' {
				ul.WriteTo(buf[:n], from)
				continue
			}
			ul.WriteTo([]byte(fmt.Sprintf("%s %s", name, from)), from)
		}
	}()
}

// who asks the frontend fe (from the client) who answers; it returns the
// server's name and the client address the server saw.
func (c *tcluster) who(network string, fe netip.AddrPort) (server, seen string, err error) {
	reply, err := c.client.Exchange(network, fe.String(), "who", 5*time.Second)
	if err != nil {
		return "", "", err
	}
	server, seen, _ = strings.Cut(reply, " ")
	return server, seen, nil
}

// mustWho is who that fails the test.
func (c *tcluster) mustWho(t *testing.T, network string, fe netip.AddrPort) (server, seen string) {
	t.Helper()
	server, seen, err := c.who(network, fe)
	if err != nil {
		t.Fatalf("%s to %v: %v", network, fe, err)
	}
	return server, seen
}

// service upserts a service into the load balancers of nodes, with the
// NodePort on each node's address of the family.
func (c *tcluster) service(t *testing.T, s Service, nodes ...*tnode) {
	t.Helper()
	for _, n := range nodes {
		svc := s
		a := n.ip4
		if s.IPv6 {
			a = n.ip6
		}
		svc.Frontends = append([]netip.AddrPort{netip.AddrPortFrom(a, nodePort)}, s.Frontends...)
		if err := n.lb.Upsert(svc); err != nil {
			t.Fatal(err)
		}
	}
}

func backendsOf(v6 bool, pods ...*tpod) []netip.AddrPort {
	var out []netip.AddrPort
	for _, p := range pods {
		a := p.ip4
		if v6 {
			a = p.ip6
		}
		out = append(out, netip.AddrPortFrom(a, podPort))
	}
	return out
}

func nodeAddr(n *tnode, v6 bool) netip.Addr {
	if v6 {
		return n.ip6
	}
	return n.ip4
}

func clientAddr(v6 bool) string {
	if v6 {
		return "fd00:200::50"
	}
	return "10.200.0.50"
}

// stat is the packet count of a verdict for a service on n.
func stat(t *testing.T, n *tnode, key ServiceKey, v Verdict) uint64 {
	t.Helper()
	stats, err := n.lb.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		if s.Service == key && s.Verdict == v {
			return s.Packets
		}
	}
	return 0
}

// families runs fn for each address family and protocol.
func families(t *testing.T, fn func(t *testing.T, v6 bool, proto l4.Protocol)) {
	for _, v6 := range []bool{false, true} {
		for _, proto := range []l4.Protocol{l4.TCP, l4.UDP} {
			name := fmt.Sprintf("%s/%s", map[bool]string{false: "IPv4", true: "IPv6"}[v6], proto)
			t.Run(name, func(t *testing.T) { fn(t, v6, proto) })
		}
	}
}

func network(proto l4.Protocol) string {
	if proto == l4.UDP {
		return "udp"
	}
	return "tcp"
}

// ctxTimeout is a bounded context for commands.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
