package routing_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/tests/harness"
)

// topo is four simulated nodes: n1-n3 on one L2 segment, n4 on another
// subnet behind a router. Each node has one pod (a namespace with a /32 and
// a /128 routed to it, as warp-veth does) in its pod CIDR.
type topo struct {
	env   *harness.Env
	nodes []routing.Node
	ns    map[string]*harness.NetNS
	pods  map[string]*harness.NetNS
	podIP map[string][2]string
}

func newTopo(t *testing.T) *topo {
	env := harness.New(t)
	tp := &topo{env: env, ns: map[string]*harness.NetNS{}, pods: map[string]*harness.NetNS{}, podIP: map[string][2]string{}}
	l2 := env.Segment("l2", "10.200.0.0/24", "fd00:200::/64")
	far := env.Segment("far", "10.201.0.0/24", "fd00:201::/64")
	env.Router("router", l2, far)
	for i := 1; i <= 4; i++ {
		name := fmt.Sprintf("n%d", i)
		n := env.NetNS(name)
		seg := l2
		if i == 4 {
			seg = far
		}
		v4, v6 := seg.Attach(n, "eth0", 10+i)
		n.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
		p4, p6 := fmt.Sprintf("10.244.%d.10", i), fmt.Sprintf("fd00:244:%d::10", i)
		pod := env.NetNS(name + "-pod")
		env.Veth(n, "pod0", pod, "eth0")
		n.Exec(t, "ip", "addr", "add", "169.254.1.1/32", "dev", "pod0")
		n.Exec(t, "ip", "-6", "addr", "add", "fe80::1/64", "dev", "pod0", "nodad")
		n.Exec(t, "ip", "route", "add", p4+"/32", "dev", "pod0")
		n.Exec(t, "ip", "-6", "route", "add", p6+"/128", "dev", "pod0")
		pod.Exec(t, "ip", "addr", "add", p4+"/32", "dev", "eth0")
		pod.Exec(t, "ip", "-6", "addr", "add", p6+"/128", "dev", "eth0", "nodad")
		pod.Exec(t, "ip", "route", "add", "169.254.1.1", "dev", "eth0")
		pod.Exec(t, "ip", "route", "add", "default", "via", "169.254.1.1")
		pod.Exec(t, "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
		tp.ns[name], tp.pods[name], tp.podIP[name] = n, pod, [2]string{p4, p6}
		tp.nodes = append(tp.nodes, routing.Node{Name: name, Addrs: []netip.Addr{v4, v6}, PodCIDRs: []netip.Prefix{
			netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)), netip.MustParsePrefix(fmt.Sprintf("fd00:244:%d::/64", i))}})
	}
	return tp
}

// sync runs a Manager for node name in its namespace.
func (tp *topo) sync(t *testing.T, name string, mode routing.Mode, nodes []routing.Node) routing.Status {
	t.Helper()
	m, err := routing.New(routing.Config{Mode: mode, Self: name})
	if err != nil {
		t.Fatal(err)
	}
	var st routing.Status
	if err := tp.ns[name].Do(func() error { st, err = m.Sync(nodes); return err }); err != nil {
		t.Fatalf("sync %s: %v", name, err)
	}
	return st
}

// pingAll pings every other pod from every pod, over IPv4 and IPv6.
func (tp *topo) pingAll(t *testing.T) {
	t.Helper()
	for from, pod := range tp.pods {
		for to, ips := range tp.podIP {
			if from == to {
				continue
			}
			for _, ip := range ips {
				if _, err := pod.Run(t.Context(), "ping", "-c1", "-W5", ip); err != nil {
					t.Errorf("pod of %s -> pod of %s (%s): %v", from, to, ip, err)
				}
			}
		}
	}
}

func peerModes(st routing.Status) string {
	var parts []string
	for _, p := range st.Peers {
		mode := "native"
		if p.Tunnel {
			mode = "tunnel"
		}
		if p.Problem != "" {
			mode = "problem"
		}
		parts = append(parts, p.Name+"="+mode)
	}
	return strings.Join(parts, " ")
}

func TestAutoMixedCluster(t *testing.T) {
	tp := newTopo(t)
	for _, n := range tp.nodes {
		st := tp.sync(t, n.Name, routing.Auto, tp.nodes)
		want := map[string]string{
			"n1": "n2=native n3=native n4=tunnel", "n2": "n1=native n3=native n4=tunnel",
			"n3": "n1=native n2=native n4=tunnel", "n4": "n1=tunnel n2=tunnel n3=tunnel",
		}[n.Name]
		if got := peerModes(st); got != want {
			t.Errorf("%s: peers %s, want %s", n.Name, got, want)
		}
		if st.MTU != 1500-50 {
			t.Errorf("%s: MTU %d, want 1450 (1500 less VXLAN over IPv4)", n.Name, st.MTU)
		}
	}
	tp.pingAll(t)
	routes := tp.ns["n1"].Exec(t, "ip", "route", "show", "proto", "119")
	for _, want := range []string{"10.244.2.0/24 via 10.200.0.12 dev eth0", "10.244.4.0/24 via 10.244.4.0 dev warp-vxlan"} {
		if !strings.Contains(routes, want) {
			t.Errorf("n1 routes lack %q:\n%s", want, routes)
		}
	}

	// A second sync changes nothing.
	if st := tp.sync(t, "n1", routing.Auto, tp.nodes); st.Added+st.Removed != 0 {
		t.Errorf("idempotent sync changed %d/%d entries", st.Added, st.Removed)
	}

	// Adoption after a restart: our stale route goes, other software's
	// routes stay (another protocol number, another table).
	n1 := tp.ns["n1"]
	n1.Exec(t, "ip", "route", "add", "10.98.0.0/24", "via", "10.200.0.12", "proto", "119")
	n1.Exec(t, "ip", "route", "add", "10.99.0.0/24", "via", "10.200.0.12", "proto", "static")
	n1.Exec(t, "ip", "route", "add", "10.97.0.0/24", "via", "10.200.0.12", "proto", "119", "table", "100")
	st := tp.sync(t, "n1", routing.Auto, tp.nodes)
	if st.Removed != 1 || st.Added != 0 {
		t.Errorf("adoption: added %d, removed %d; want only the stale route removed", st.Added, st.Removed)
	}
	main := n1.Exec(t, "ip", "route", "show")
	if strings.Contains(main, "10.98.0.0/24") || !strings.Contains(main, "10.99.0.0/24") {
		t.Errorf("after adoption:\n%s", main)
	}
	if !strings.Contains(n1.Exec(t, "ip", "route", "show", "table", "100"), "10.97.0.0/24") {
		t.Error("a route in another table was removed")
	}

	// A node leaves: its routes go, and with the last tunnel peer the
	// tunnel device (with its neighbour and FDB entries).
	tp.sync(t, "n1", routing.Auto, tp.nodes[:3])
	if out := n1.Exec(t, "ip", "route", "show", "proto", "119"); strings.Contains(out, "10.244.4.0") || !strings.Contains(out, "10.244.3.0/24") {
		t.Errorf("routes after n4 left:\n%s", out)
	}
	if out := n1.Exec(t, "ip", "-o", "link"); strings.Contains(out, "warp-vxlan") {
		t.Errorf("tunnel device kept without tunnel peers:\n%s", out)
	}
	// A peer's address changes: the route follows.
	moved := slices.Clone(tp.nodes[:3])
	moved[1].Addrs = []netip.Addr{netip.MustParseAddr("10.200.0.22"), netip.MustParseAddr("fd00:200::22")}
	tp.ns["n2"].Exec(t, "ip", "addr", "add", "10.200.0.22/24", "dev", "eth0")
	tp.sync(t, "n1", routing.Auto, moved)
	if out := n1.Exec(t, "ip", "route", "show", "proto", "119"); !strings.Contains(out, "10.244.2.0/24 via 10.200.0.22") {
		t.Errorf("route after n2 moved:\n%s", out)
	}
}

func TestVXLANEverywhere(t *testing.T) {
	tp := newTopo(t)
	for _, n := range tp.nodes {
		if got := peerModes(tp.sync(t, n.Name, routing.VXLAN, tp.nodes)); strings.Contains(got, "native") || strings.Contains(got, "problem") {
			t.Errorf("%s: %s", n.Name, got)
		}
	}
	tp.pingAll(t)
}

func TestNativeOnly(t *testing.T) {
	tp := newTopo(t)
	// Native mode cannot reach n4 (another subnet): it says so, routes the
	// rest, and removes a tunnel device left by an earlier mode.
	tp.sync(t, "n1", routing.VXLAN, tp.nodes)
	st := tp.sync(t, "n1", routing.Native, tp.nodes)
	if got := peerModes(st); got != "n2=native n3=native n4=problem" {
		t.Errorf("peers %s", got)
	}
	if st.MTU != 1500 {
		t.Errorf("MTU %d, want 1500", st.MTU)
	}
	if out := tp.ns["n1"].Exec(t, "ip", "-o", "link"); strings.Contains(out, "warp-vxlan") {
		t.Errorf("tunnel device left in native mode:\n%s", out)
	}
	tp.sync(t, "n2", routing.Native, tp.nodes)
	if _, err := tp.pods["n1"].Run(t.Context(), "ping", "-c1", "-W5", tp.podIP["n2"][0]); err != nil {
		t.Error(err)
	}
}
