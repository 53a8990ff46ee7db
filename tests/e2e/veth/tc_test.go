package veth_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/plugins/veth/plugin"
	"github.com/warpnet/warpnet/tests/harness"
)

// The clients of the ClusterIP test are this binary re-executed in the
// pods' cgroup (harness.Main).
func TestMain(m *testing.M) { harness.Main(m) }

// tcOn is the tc datapath with everything on.
var tcOn = map[string]any{"redirect": "tc"}

// linkPins lists the node's pinned tc links.
func (n *node) linkPins() []string {
	n.t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.bpffs, "links"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		n.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// exchanges runs one TCP and one UDP exchange from pod to addr:port.
func exchanges(t *testing.T, from *harness.NetNS, ip string, port int, want string) {
	t.Helper()
	for _, proto := range []string{"tcp", "udp"} {
		if got := from.MustExchange(t, proto, net.JoinHostPort(ip, fmt.Sprint(port)), "hello"); got != want {
			t.Fatalf("%s to %s answered by %s, want %s", proto, ip, got, want)
		}
	}
}

// warp-veth with "redirect": "tc": pod-to-pod on the node goes through the
// tc program (bpf_redirect_peer) and never through the node's forwarding
// path, while pods in plain mode on the same node do go through it;
// pod-to-node and node-to-pod work; CHECK sees the program; DEL leaves
// nothing.
func TestTCDatapath(t *testing.T) {
	n := newNode(t)
	conf, plain := n.conf(tcOn), n.conf(nil)
	pods := map[string]*harness.NetNS{}
	res := map[string]*current.Result{}
	for _, name := range []string{"tc1", "tc2", "plain1", "plain2"} {
		c := conf
		if strings.HasPrefix(name, "plain") {
			c = plain
		}
		pods[name] = n.env.NetNS(name)
		res[name] = n.add(name, pods[name], c)
		n.env.EchoServer(pods[name], name, 7070)
	}
	n.env.EchoServer(n.ns, "node", 7070)
	dp := n.datapath()
	h1 := n.hostIndex(res["tc1"])

	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("pod to pod skips the forwarding path/v6=%v", v6), func(t *testing.T) {
			before := n.counters(dp, h1)
			f4, f6 := n.ns.Forwarded(t)
			exchanges(t, pods["tc1"], podIP(t, res["tc2"], v6), 7070, "tc2")
			exchanges(t, pods["tc2"], podIP(t, res["tc1"], v6), 7070, "tc1")
			if g4, g6 := n.ns.Forwarded(t); g4 != f4 || g6 != f6 {
				t.Errorf("the node forwarded tc pods' packets: IPv4 %d -> %d, IPv6 %d -> %d", f4, g4, f6, g6)
			}
			if after := n.counters(dp, h1); after.RedirectPackets < before.RedirectPackets+4 {
				t.Errorf("tc1's redirect counter: %+v -> %+v", before, after)
			}
			// The same exchanges between plain pods are forwarded.
			f4, f6 = n.ns.Forwarded(t)
			exchanges(t, pods["plain1"], podIP(t, res["plain2"], v6), 7070, "plain2")
			if g4, g6 := n.ns.Forwarded(t); g4+g6 < f4+f6+4 {
				t.Errorf("plain pods: the node forwarded %d packets, want at least 4", g4+g6-f4-f6)
			}
		})
		t.Run(fmt.Sprintf("tc and plain pods, pod and node/v6=%v", v6), func(t *testing.T) {
			nodeIP := nodeV4
			if v6 {
				nodeIP = nodeV6
			}
			exchanges(t, pods["tc1"], podIP(t, res["plain1"], v6), 7070, "plain1")
			exchanges(t, pods["plain1"], podIP(t, res["tc1"], v6), 7070, "tc1")
			exchanges(t, pods["tc1"], nodeIP, 7070, "node")
			exchanges(t, n.ns, podIP(t, res["tc1"], v6), 7070, "tc1")
		})
	}

	t.Run("no XDP on the pod end", func(t *testing.T) {
		out := pods["tc1"].Exec(t, "ip", "-d", "link", "show", "eth0")
		if strings.Contains(out, "xdp") {
			t.Errorf("the tc datapath put XDP on the pod end: %s", out)
		}
	})

	t.Run("spoofed source is dropped and counted", func(t *testing.T) {
		dst := net.JoinHostPort(podIP(t, res["tc2"], false), "7070")
		pods["tc1"].Exec(t, "ip", "addr", "add", "10.60.0.250/32", "dev", "eth0")
		before := n.counters(dp, h1)
		conn := sendFrom(t, pods["tc1"], "10.60.0.250", dst)
		waitCounters(t, dp, h1, "the drop counter to grow", func(c podpath.Counters) bool { return c.DropPackets > before.DropPackets })
		if echoed(conn, time.Second) {
			t.Fatal("a datagram from a spoofed source got an answer")
		}
	})

	t.Run("CHECK sees the program, and its absence", func(t *testing.T) {
		check := n.call("CHECK", "tc2", pods["tc2"], harness.WithPrevResult(t, conf, res["tc2"]))
		n.veth.MustSucceed(t, check)
		// The link's pin is all that keeps the program attached.
		owner := plugin.Derive("tc2", "eth0").Owner
		if err := os.Remove(filepath.Join(n.bpffs, "links", fmt.Sprintf("%016x", owner))); err != nil {
			t.Fatal(err)
		}
		if e := n.veth.MustFail(t, check, types.ErrInternal); !strings.Contains(e.Msg, "tc") || !strings.Contains(e.Msg, "not attached") {
			t.Errorf("CHECK message %q does not say the tc program is missing", e.Msg)
		}
		if err := n.ns.Do(func() error {
			full, err := podpath.Open(n.bpffs)
			if err != nil {
				return err
			}
			defer full.Close()
			return full.AttachTC(owner, n.hostIndex(res["tc2"]))
		}); err != nil {
			t.Fatal(err)
		}
		n.veth.MustSucceed(t, check)
		// A configuration that asks for other features does not match.
		other := harness.WithPrevResult(t, n.conf(map[string]any{"redirect": "tc", "antiSpoof": false}), res["tc2"])
		if e := n.veth.MustFail(t, n.call("CHECK", "tc2", pods["tc2"], other), types.ErrInternal); !strings.Contains(e.Msg, "differs") {
			t.Errorf("CHECK with other features: %q", e.Msg)
		}
	})

	t.Run("DEL leaves no link, route, program, pin or map entry", func(t *testing.T) {
		for _, name := range []string{"tc1", "tc2", "plain1", "plain2"} {
			c := conf
			if strings.HasPrefix(name, "plain") {
				c = plain
			}
			n.veth.MustSucceed(t, n.call("DEL", name, pods[name], c))
			n.veth.MustSucceed(t, n.call("DEL", name, pods[name], c))
			if l := podLinks(t, pods[name]); len(l) != 0 {
				t.Errorf("%s: pod links left: %v", name, l)
			}
		}
		n.assertClean("DEL of tc pods")
		if eps, err := dp.Endpoints(); err != nil || len(eps) != 0 {
			t.Errorf("endpoints left: %v %v", eps, err)
		}
		if l := n.linkPins(); len(l) != 0 {
			t.Errorf("tc link pins left: %v", l)
		}
		if l := n.tcLinks(); l != 0 {
			t.Errorf("%d tcx links still run this node's tc program", l)
		}
	})
}

// Anti-spoofing alone ("redirect": "none", "antiSpoof": true) attaches the
// tc program without its fast path, for pods whose traffic must cross the
// node's netfilter; and "antiSpoof": false turns the checks off.
func TestTCFeatureSwitches(t *testing.T) {
	n := newNode(t)
	guard := n.conf(map[string]any{"redirect": "none", "antiSpoof": true})
	g1, g2 := n.env.NetNS("g1"), n.env.NetNS("g2")
	r1, r2 := n.add("g1", g1, guard), n.add("g2", g2, guard)
	dp := n.datapath()
	h1 := n.hostIndex(r1)
	port := n.env.EchoServer(g2, "g2", 0)
	dst := net.JoinHostPort(podIP(t, r2, false), fmt.Sprint(port))

	if ep, ok, err := dp.Endpoint(plugin.Derive("g1", "eth0").Owner); err != nil || !ok ||
		ep.Features != (podpath.Features{Hook: podpath.TC, AntiSpoof: true}) {
		t.Fatalf("endpoint %+v %v %v", ep, ok, err)
	}
	before := n.counters(dp, h1)
	f4, _ := n.ns.Forwarded(t)
	g1.MustExchange(t, "tcp", dst, "policed")
	after := n.counters(dp, h1)
	if after.RedirectPackets != before.RedirectPackets || after.PassPackets <= before.PassPackets {
		t.Fatalf("anti-spoofing only: %+v -> %+v", before, after)
	}
	if g4, _ := n.ns.Forwarded(t); g4 <= f4 {
		t.Error("anti-spoofing only: the node did not forward the traffic")
	}
	g1.Exec(t, "ip", "addr", "add", "10.60.0.250/32", "dev", "eth0")
	before = n.counters(dp, h1)
	sendFrom(t, g1, "10.60.0.250", dst)
	waitCounters(t, dp, h1, "the drop counter to grow", func(c podpath.Counters) bool { return c.DropPackets > before.DropPackets })

	o1 := n.env.NetNS("o1")
	r3 := n.add("o1", o1, n.conf(map[string]any{"redirect": "tc", "antiSpoof": false}))
	h3 := n.hostIndex(r3)
	o1.Exec(t, "ip", "addr", "add", "10.60.0.251/32", "dev", "eth0")
	before = n.counters(dp, h3)
	sendFrom(t, o1, "10.60.0.251", dst)
	waitCounters(t, dp, h3, "the datagram to be counted", func(c podpath.Counters) bool {
		return c.PassPackets+c.RedirectPackets > before.PassPackets+before.RedirectPackets
	})
	if after := n.counters(dp, h3); after.DropPackets != before.DropPackets {
		t.Fatalf("with antiSpoof off: %+v -> %+v", before, after)
	}
}

// tcLinks counts the bpf_links of the machine whose program uses this
// node's warp_ifaces map: its tc program's links, attached or defunct.
func (n *node) tcLinks() int {
	n.t.Helper()
	ifaces, err := ebpf.LoadPinnedMap(filepath.Join(n.bpffs, "maps", "warp_ifaces"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		n.t.Fatal(err)
	}
	defer ifaces.Close()
	info, err := ifaces.Info()
	if err != nil {
		n.t.Fatal(err)
	}
	mapID, _ := info.ID()
	count := 0
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		li, err := it.Link.Info()
		if err != nil {
			continue
		}
		prog, err := ebpf.NewProgramFromID(li.Program)
		if err != nil {
			continue
		}
		if pi, err := prog.Info(); err == nil {
			if ids, _ := pi.MapIDs(); slices.Contains(ids, mapID) {
				count++
			}
		}
		prog.Close()
	}
	if err := it.Err(); err != nil {
		n.t.Fatal(err)
	}
	return count
}

func TestTCBadInput(t *testing.T) {
	n := newNode(t)
	pod := n.env.NetNS("pod")
	for _, tc := range []struct {
		name   string
		fields map[string]any
		code   uint
		field  string
	}{
		{"unknown redirect", map[string]any{"redirect": "xdp"}, types.ErrInvalidNetworkConfig, "redirect"},
		{"redirect of the wrong type", map[string]any{"redirect": true}, types.ErrDecodingFailure, "redirect"},
		{"antiSpoof of the wrong type", map[string]any{"redirect": "tc", "antiSpoof": "yes"}, types.ErrDecodingFailure, "antiSpoof"},
		{"tc and xdp", map[string]any{"redirect": "tc", "xdp": true}, types.ErrInvalidNetworkConfig, "redirect"},
		{"antiSpoof with xdp", map[string]any{"antiSpoof": true, "xdp": true}, types.ErrInvalidNetworkConfig, "antiSpoof"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := n.veth.MustFail(t, n.call("ADD", "bad", pod, n.conf(tc.fields)), tc.code)
			if !strings.Contains(e.Msg, tc.field) {
				t.Errorf("message %q does not name %q", e.Msg, tc.field)
			}
			n.assertClean(tc.name)
			if l := n.linkPins(); len(l) != 0 {
				t.Errorf("link pins left: %v", l)
			}
		})
	}
	// A failure in the tc step undoes everything, the steps before too.
	notBPFFS := t.TempDir()
	e := n.veth.MustFail(t, n.call("ADD", "f", pod, n.conf(map[string]any{"redirect": "tc", "bpffsRoot": notBPFFS})), types.ErrInternal)
	if !strings.Contains(e.Msg, "tc") {
		t.Errorf("message %q does not say tc", e.Msg)
	}
	n.assertClean("tc failure")
}

// ClusterIPs through warpd's socket load balancer work for tc pods (the
// translation happens at connect, before a packet exists), with warpd and
// the pod datapath sharing one bpffs root.
func TestTCClusterIP(t *testing.T) {
	harness.RequireTools(t, filepath.Join(harness.BinDir(), "warpd"))
	n := newNode(t)
	cg := n.env.Cgroup("pods")
	conf := n.conf(tcOn)
	ips := map[string]string{}
	var client *harness.NetNS
	for _, name := range []string{"b1", "b2", "client"} {
		pod := n.env.NetNS(name)
		r := n.add(name, pod, conf)
		ips[name] = podIP(t, r, false)
		if name == "client" {
			client = pod
		} else {
			n.env.EchoServer(pod, name, 8080)
		}
	}
	file := filepath.Join(n.env.TempDir, "services.yaml")
	if err := os.WriteFile(file, []byte(harness.ServiceYAML("default", "web", "10.96.0.10", "TCP", 80, 8080, ips["b1"], ips["b2"])), 0o644); err != nil {
		t.Fatal(err)
	}
	n.ns.Start(t, filepath.Join(harness.BinDir(), "warpd"), "--services-file", file, "--cgroup-root", cg.Path,
		"--bpffs-root", n.bpffs, "--node-name", "node1", "--routing", "none", "--listen", "")
	harness.WaitFor(t, "warpd to program the service", 20*time.Second, func() bool {
		svcs, _ := servicelb.PinnedServices(n.bpffs)
		return slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return len(s.Backends) == 2 })
	})
	dp := n.datapath()
	ep, _, _ := dp.Endpoint(plugin.Derive("client", "eth0").Owner)
	before := n.counters(dp, ep.HostIfIndex)
	r := cg.RunClient(t, harness.Dials{Netns: client.Path, Network: "tcp", Addr: "10.96.0.10:80", Count: 40})
	if failed := r.Failed(); len(failed) > 0 {
		t.Fatalf("%d of 40 connections through the ClusterIP failed, first: %s", len(failed), failed[0].Err)
	}
	if seen := r.Servers(); seen["b1"] == 0 || seen["b2"] == 0 {
		t.Errorf("answers %v, want both backends", seen)
	}
	if after := n.counters(dp, ep.HostIfIndex); after.RedirectPackets < before.RedirectPackets+40 {
		t.Errorf("the client's connections were not redirected: %+v -> %+v", before, after)
	}
}
