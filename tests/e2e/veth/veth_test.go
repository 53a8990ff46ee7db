// Package veth_test drives the built bin/warp-veth (with bin/warp-ipam and
// the reference host-local as IPAM) through the CNI protocol on a simulated
// node: a network namespace with no link to the machine's own, with pods as
// namespaces hanging off it.
package veth_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/plugins/veth/plugin"
	"github.com/warpnet/warpnet/tests/harness"
)

const network = "e2e-veth"

// Node addresses: on the node's loopback, so pods reach "the node" without
// the node needing any uplink.
const (
	nodeV4 = "10.99.0.1"
	nodeV6 = "fd99::1"
)

type node struct {
	t       *testing.T
	env     *harness.Env
	ns      *harness.NetNS
	veth    *harness.Plugin
	ipam    *harness.Plugin
	dataDir string
	bpffs   string
}

func newNode(t *testing.T) *node {
	env := harness.New(t)
	n := &node{t: t, env: env, ns: env.NetNS("node"), dataDir: filepath.Join(env.TempDir, "ipam")}
	n.veth = env.Plugin(t, "warp-veth").In(n.ns)
	n.ipam = env.Plugin(t, "warp-ipam").In(n.ns)
	env.Addr(n.ns, "lo", nodeV4+"/32")
	env.Addr(n.ns, "lo", nodeV6+"/128")
	n.bpffs = env.BPFFS()
	return n
}

// conf is a warp-veth configuration with dual-stack warp-ipam; fields are
// merged over the defaults (set "ipam" or "xdp" to replace them).
func (n *node) conf(fields map[string]any) []byte {
	base := map[string]any{
		"cniVersion": "1.1.0",
		"bpffsRoot":  n.bpffs, // no "xdp" key: the plugin's default (off)
		"ipam": map[string]any{
			"type": "warp-ipam", "dataDir": n.dataDir,
			"ranges": [][]map[string]any{{{"subnet": "10.60.0.0/24"}}, {{"subnet": "fd60::/64"}}},
		},
	}
	for k, v := range fields {
		base[k] = v
	}
	return harness.ConfigJSON(n.t, harness.NetConf(network, "warp-veth", base))
}

func (n *node) call(cmd, id string, pod *harness.NetNS, conf []byte) harness.Call {
	c := harness.Call{Command: cmd, ContainerID: id, IfName: "eth0", Config: conf}
	if pod != nil {
		c.Netns = pod.Path
	}
	return c
}

func (n *node) add(id string, pod *harness.NetNS, conf []byte) *current.Result {
	n.t.Helper()
	return harness.ParseResult(n.t, n.veth.MustSucceed(n.t, n.call("ADD", id, pod, conf)))
}

// hostLinks lists the node's warp host ends.
func (n *node) hostLinks() []string {
	n.t.Helper()
	var names []string
	err := n.ns.Do(func() error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "warp") {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return names
}

// hostRoutes lists the node's host routes (/32, /128) in the main table,
// except lo's (the node's own addresses): the routes warp-veth adds towards
// its pods.
func (n *node) hostRoutes() []string {
	n.t.Helper()
	var out []string
	err := n.ns.Do(func() error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		routes, err := netlinksafe.RouteList(nil, netlink.FAMILY_ALL)
		for _, r := range routes {
			if r.Dst != nil && r.LinkIndex != lo.Attrs().Index {
				if ones, bits := r.Dst.Mask.Size(); ones == bits {
					out = append(out, r.Dst.String())
				}
			}
		}
		return err
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// podLinks lists the links in a pod namespace other than lo.
func podLinks(t *testing.T, pod *harness.NetNS) []string {
	t.Helper()
	var names []string
	err := pod.Do(func() error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// reserved lists warp-ipam's reservations on disk.
func (n *node) reserved() []string { return harness.IPAMReservations(n.dataDir, network) }

// assertClean checks that no attachment left anything on the node: host
// ends, host routes, or warp-ipam's files (addresses, index, temporaries).
func (n *node) assertClean(what string) {
	n.t.Helper()
	if l := n.hostLinks(); len(l) != 0 {
		n.t.Errorf("%s: host links left: %v", what, l)
	}
	if r := n.hostRoutes(); len(r) != 0 {
		n.t.Errorf("%s: host routes left: %v", what, r)
	}
	if f := harness.IPAMFiles(n.dataDir, network); len(f) != 0 {
		n.t.Errorf("%s: warp-ipam files left: %v", what, f)
	}
}

// hostAddrIn reports whether v is a /32 or /128 inside subnet.
func hostAddrIn(v any, subnet string) bool {
	s, _ := v.(string)
	p, err := netip.ParsePrefix(s)
	return err == nil && p.IsSingleIP() && netip.MustParsePrefix(subnet).Contains(p.Addr())
}

func podIP(t *testing.T, r *current.Result, v6 bool) string {
	for _, ip := range r.IPs {
		if (ip.Address.IP.To4() == nil) == v6 {
			return ip.Address.IP.String()
		}
	}
	t.Fatalf("result has no IPv6=%v address: %v", v6, r.IPs)
	return ""
}

// Pod-to-pod, pod-to-node and node-to-pod with real TCP and UDP, IPv4 and IPv6.
func TestConnectivity(t *testing.T) {
	n := newNode(t)
	pod1, pod2 := n.env.NetNS("pod1"), n.env.NetNS("pod2")
	conf := n.conf(nil)
	r1, r2 := n.add("c1", pod1, conf), n.add("c2", pod2, conf)
	port := n.env.EchoServer(pod2, "pod2", 0)
	n.env.EchoServer(n.ns, "node", port)
	n.env.EchoServer(pod1, "pod1", port)
	for _, v6 := range []bool{false, true} {
		nodeIP := nodeV4
		if v6 {
			nodeIP = nodeV6
		}
		paths := []struct {
			name, want string
			from       *harness.NetNS
			to         string
		}{
			{"pod-to-pod", "pod2", pod1, podIP(t, r2, v6)},
			{"pod-to-node", "node", pod1, nodeIP},
			{"node-to-pod", "pod1", n.ns, podIP(t, r1, v6)},
		}
		for _, p := range paths {
			for _, proto := range []string{"tcp", "udp"} {
				t.Run(fmt.Sprintf("%s/%s/v6=%v", p.name, proto, v6), func(t *testing.T) {
					addr := net.JoinHostPort(p.to, fmt.Sprint(port))
					if got := p.from.MustExchange(t, proto, addr, "hello"); got != p.want {
						t.Fatalf("answered by %s, want %s", got, p.want)
					}
				})
			}
		}
	}
}

func TestResultAndCheck(t *testing.T) {
	n := newNode(t)
	pod := n.env.NetNS("pod")
	conf := n.conf(map[string]any{"mtu": 1400})
	res := n.add("c1", pod, conf)
	if len(res.Interfaces) != 2 || res.Interfaces[1].Sandbox != pod.Path || res.Interfaces[1].Name != "eth0" ||
		!strings.HasPrefix(res.Interfaces[0].Name, "warp") || len(res.Interfaces[0].Name) != 15 {
		t.Fatalf("interfaces = %+v", res.Interfaces)
	}
	if got := fmt.Sprint(res.IPs[0].Address.String(), " ", res.IPs[0].Gateway, " ", res.IPs[1].Address.String(), " ", res.IPs[1].Gateway); got != "10.60.0.2/32 169.254.1.1 fd60::2/128 fe80::1" {
		t.Fatalf("ips = %s", got)
	}
	// The pod end: MTU, MAC, and its routes.
	out := pod.Exec(t, "ip", "-d", "link", "show", "eth0")
	if !strings.Contains(out, "mtu 1400") || !strings.Contains(out, res.Interfaces[1].Mac) {
		t.Errorf("pod link: %s", out)
	}
	if out := pod.Exec(t, "ip", "route"); !strings.Contains(out, "default via 169.254.1.1 dev eth0 onlink") {
		t.Errorf("pod routes: %s", out)
	}
	if out := n.ns.Exec(t, "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"); out != "1\n1\n" {
		t.Errorf("forwarding: %q", out)
	}

	n.veth.MustSucceed(t, n.call("CHECK", "c1", pod, harness.WithPrevResult(t, conf, res)))
	// Tampering is noticed.
	pod.Exec(t, "ip", "route", "del", "default")
	e := n.veth.MustFail(t, n.call("CHECK", "c1", pod, harness.WithPrevResult(t, conf, res)), types.ErrInternal)
	if !strings.Contains(e.Msg, "default route") {
		t.Errorf("CHECK message %q", e.Msg)
	}
}

func TestDelIsIdempotentAndTolerant(t *testing.T) {
	n := newNode(t)
	conf := n.conf(nil)
	pod := n.env.NetNS("pod")
	n.add("c1", pod, conf)
	n.veth.MustSucceed(t, n.call("DEL", "c1", pod, conf))
	n.veth.MustSucceed(t, n.call("DEL", "c1", pod, conf))
	n.assertClean("after DEL")

	// DEL after the pod namespace is gone (the pair died with it), and
	// DEL with no namespace at all.
	gone := n.env.NetNS("gone")
	n.add("c2", gone, conf)
	if _, err := n.ns.Run(t.Context(), "ip", "netns", "delete", gone.Name); err != nil {
		t.Fatal(err)
	}
	n.veth.MustSucceed(t, n.call("DEL", "c2", gone, conf))
	n.veth.MustSucceed(t, n.call("DEL", "c2", nil, conf))
	n.assertClean("after DEL of a vanished pod")
}

// Fault 4: a configuration edited after ADD so that it no longer parses
// (a runtime keeps the old pod's DEL with the new file) must not keep the
// pod's veth, routes, BPF entries, tc link and addresses forever while the
// runtime retries DEL: DEL reads only the IPAM section and bpffsRoot.
func TestDelAfterConfigBecameInvalid(t *testing.T) {
	n := newNode(t)
	var dp *podpath.Datapath // opened once the first pod pinned the maps
	for i, c := range []struct {
		datapath string
		broken   map[string]any
		code     uint // of ADD with the broken configuration
	}{
		{"xdp", map[string]any{"mtu": "abc"}, types.ErrDecodingFailure},
		{"xdp", map[string]any{"xdp": "yes"}, types.ErrDecodingFailure},
		{"xdp", map[string]any{"xdp": map[string]any{"redirect": 7}, "mtu": 20}, types.ErrDecodingFailure},
		{"tc", map[string]any{"redirect": "quantum"}, types.ErrInvalidNetworkConfig},
		{"tc", map[string]any{"redirect": 3, "antiSpoof": "maybe"}, types.ErrDecodingFailure},
	} {
		broken := c.broken
		t.Run(fmt.Sprint(c.datapath, broken), func(t *testing.T) {
			id, pod := fmt.Sprintf("c%d", i), n.env.NetNS(fmt.Sprintf("pod%d", i))
			n.add(id, pod, n.conf(datapaths[c.datapath]))
			if dp == nil {
				dp = n.datapath()
			}
			owner := plugin.Derive(id, "eth0").Owner
			if _, ok, _ := dp.Endpoint(owner); !ok {
				t.Fatal("no endpoint after ADD")
			}
			bad := n.conf(broken)
			n.veth.MustFail(t, n.call("ADD", "other", n.env.NetNS(fmt.Sprintf("other%d", i)), bad), c.code)
			n.veth.MustSucceed(t, n.call("DEL", id, pod, bad))
			n.assertClean("DEL with " + string(bad))
			if l := podLinks(t, pod); len(l) != 0 {
				t.Errorf("pod links left: %v", l)
			}
			if _, ok, _ := dp.Endpoint(owner); ok {
				t.Error("endpoint left")
			}
			if l := n.linkPins(); len(l) != 0 {
				t.Errorf("tc link pins left: %v", l)
			}
			n.veth.MustSucceed(t, n.call("DEL", id, pod, bad))
		})
	}
	// What DEL does need must still be valid, and the error names it.
	for _, tc := range []struct {
		field string
		conf  []byte
		code  uint
	}{
		{"ipam", n.conf(map[string]any{"ipam": map[string]any{}}), types.ErrInvalidNetworkConfig},
		{"bpffsRoot", n.conf(map[string]any{"bpffsRoot": 7}), types.ErrDecodingFailure},
	} {
		if e := n.veth.MustFail(t, n.call("DEL", "c0", nil, tc.conf), tc.code); !strings.Contains(e.Msg, tc.field) {
			t.Errorf("message %q does not name %s", e.Msg, tc.field)
		}
	}
}

func TestBadInput(t *testing.T) {
	n := newNode(t)
	pod := n.env.NetNS("pod")
	cases := []struct {
		name   string
		fields map[string]any
		code   uint
		field  string
	}{
		{"wrong type", map[string]any{"mtu": "big"}, types.ErrDecodingFailure, "mtu"},
		{"invalid mtu", map[string]any{"mtu": 20}, types.ErrInvalidNetworkConfig, "mtu"},
		{"missing ipam", map[string]any{"ipam": map[string]any{}}, types.ErrInvalidNetworkConfig, "ipam"},
		{"bad xdp", map[string]any{"xdp": "yes"}, types.ErrDecodingFailure, "xdp"},
		{"mtu too small for IPv6", map[string]any{"mtu": 1200}, types.ErrInvalidNetworkConfig, "mtu"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := n.veth.MustFail(t, n.call("ADD", "bad", pod, n.conf(tc.fields)), tc.code)
			if !strings.Contains(e.Msg, tc.field) {
				t.Errorf("message %q does not name %q", e.Msg, tc.field)
			}
			n.assertClean(tc.name)
		})
	}
	t.Run("interface already in the pod", func(t *testing.T) {
		pod.Exec(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other")
		e := n.veth.MustFail(t, n.call("ADD", "bad", pod, n.conf(nil)), types.ErrInvalidEnvironmentVariables)
		if !strings.Contains(e.Msg, "CNI_IFNAME") {
			t.Errorf("message %q does not name CNI_IFNAME", e.Msg)
		}
		n.assertClean("interface already present")
	})
	t.Run("second ADD of the same attachment", func(t *testing.T) {
		other := n.env.NetNS("pod2")
		n.add("twice", other, n.conf(nil))
		n.veth.MustFail(t, n.call("ADD", "twice", other, n.conf(nil)), 101)
		n.veth.MustSucceed(t, n.call("DEL", "twice", other, n.conf(nil)))
		n.assertClean("after the second ADD and DEL")
	})
}

// Each failure point after IPAM must undo everything before it.
func TestFailedAddLeavesNothing(t *testing.T) {
	n := newNode(t)
	t.Run("IPAM fails", func(t *testing.T) {
		full := map[string]any{"type": "warp-ipam", "dataDir": n.dataDir, "ranges": [][]map[string]any{{{"subnet": "10.61.0.0/30", "rangeEnd": "10.61.0.1"}}}}
		n.veth.MustFail(t, n.call("ADD", "f1", n.env.NetNS("p1"), n.conf(map[string]any{"ipam": full})), types.ErrTryAgainLater)
		n.assertClean("IPAM failure")
	})
	t.Run("pod side fails", func(t *testing.T) {
		pod := n.env.NetNS("p2")
		pod.Exec(t, "sysctl", "-w", "net.ipv6.conf.default.disable_ipv6=1")
		n.veth.MustFail(t, n.call("ADD", "f2", pod, n.conf(nil)), types.ErrInternal)
		n.assertClean("pod-side failure")
	})
	t.Run("host side fails", func(t *testing.T) {
		// Something on the node already routes the address IPAM hands out
		// first from a fresh range.
		fresh := map[string]any{"type": "warp-ipam", "dataDir": n.dataDir, "ranges": [][]map[string]any{{{"subnet": "10.64.0.0/24"}}}}
		n.ns.Exec(t, "ip", "route", "add", "10.64.0.2/32", "dev", "lo")
		e := n.veth.MustFail(t, n.call("ADD", "f3", n.env.NetNS("p3"), n.conf(map[string]any{"ipam": fresh})), types.ErrInternal)
		if !strings.Contains(e.Msg, "already has a route") {
			t.Errorf("message %q", e.Msg)
		}
		n.ns.Exec(t, "ip", "route", "del", "10.64.0.2/32", "dev", "lo")
		n.assertClean("host-side failure")
	})
}

// warp-veth works with any IPAM plugin: here the reference host-local.
func TestOtherIPAM(t *testing.T) {
	harness.RequireTools(t, "/usr/lib/cni/host-local")
	n := newNode(t)
	pod := n.env.NetNS("pod")
	conf := n.conf(map[string]any{"cniVersion": "1.0.0", "ipam": map[string]any{
		"type": "host-local", "dataDir": n.dataDir, "ranges": [][]map[string]any{{{"subnet": "10.62.0.0/24"}}}}})
	res := n.add("c1", pod, conf)
	port := n.env.EchoServer(pod, "pod", 0)
	n.ns.MustExchange(t, "tcp", net.JoinHostPort(podIP(t, res, false), fmt.Sprint(port)), "hi")
	n.veth.MustSucceed(t, n.call("DEL", "c1", pod, conf))
	n.assertClean("host-local")
}

// Every spec version from 0.1.0 on: ADD's result in that version's shape
// (0.1.0/0.2.0: "ip4"/"ip6" objects without interfaces; 0.3.x and later:
// "interfaces" and "ips"), CHECK from 0.4.0, and DEL.
func TestVerbsAndVersions(t *testing.T) {
	n := newNode(t)
	versions := []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	out := n.veth.MustSucceed(t, harness.Call{Command: "VERSION", Config: []byte(`{"cniVersion":"1.1.0"}`)})
	for _, v := range versions {
		if !strings.Contains(string(out), `"`+v+`"`) {
			t.Fatalf("VERSION lacks %s: %s", v, out)
		}
	}
	for i, v := range versions {
		t.Run(v, func(t *testing.T) {
			pod := n.env.NetNS(fmt.Sprintf("v%d", i))
			conf := n.conf(map[string]any{"cniVersion": v})
			stdout := n.veth.MustSucceed(t, n.call("ADD", "ver", pod, conf))
			var res map[string]any
			json.Unmarshal(stdout, &res)
			if res["cniVersion"] != v {
				t.Fatalf("result version %v: %s", res["cniVersion"], stdout)
			}
			if v < "0.3.0" {
				ip4, _ := res["ip4"].(map[string]any)
				ip6, _ := res["ip6"].(map[string]any)
				if ip4 == nil || ip6 == nil || !hostAddrIn(ip4["ip"], "10.60.0.0/24") || ip4["gateway"] != "169.254.1.1" ||
					!hostAddrIn(ip6["ip"], "fd60::/64") || ip6["gateway"] != "fe80::1" || res["interfaces"] != nil {
					t.Fatalf("want ip4 and ip6 with the /32 and /128 and the link-local gateway: %s", stdout)
				}
			} else if ips, _ := res["ips"].([]any); len(ips) != 2 || len(res["interfaces"].([]any)) != 2 {
				t.Fatalf("want two interfaces and two ips: %s", stdout)
			}
			if v >= "0.4.0" {
				var m map[string]any
				json.Unmarshal(conf, &m)
				m["prevResult"] = res
				n.veth.MustSucceed(t, n.call("CHECK", "ver", pod, harness.ConfigJSON(t, m)))
			}
			n.veth.MustSucceed(t, n.call("DEL", "ver", pod, conf))
			n.assertClean("DEL in " + v)
			if l := podLinks(t, pod); len(l) != 0 {
				t.Fatalf("pod links left: %v", l)
			}
		})
	}
	n.assertClean("after the versions")

	// STATUS and GC are forwarded to IPAM.
	small := map[string]any{"type": "warp-ipam", "dataDir": n.dataDir, "ranges": [][]map[string]any{{{"subnet": "10.63.0.0/29", "rangeEnd": "10.63.0.2"}}}}
	conf := n.conf(map[string]any{"ipam": small})
	n.veth.MustSucceed(t, harness.Call{Command: "STATUS", Config: conf})
	n.add("s1", n.env.NetNS("s1"), conf)
	n.veth.MustFail(t, harness.Call{Command: "STATUS", Config: conf}, 50)
	gc := n.conf(map[string]any{"ipam": small, "cni.dev/valid-attachments": []map[string]string{}})
	n.veth.MustSucceed(t, harness.Call{Command: "GC", Config: gc})
	n.veth.MustSucceed(t, harness.Call{Command: "STATUS", Config: conf})
}
