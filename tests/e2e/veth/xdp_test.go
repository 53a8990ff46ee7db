package veth_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/plugins/veth/plugin"
	"github.com/warpnet/warpnet/tests/harness"
)

// datapath opens the node's pinned XDP maps (as warp-veth's DEL does:
// nothing is loaded).
func (n *node) datapath() *podpath.Datapath {
	n.t.Helper()
	dp, err := podpath.OpenExisting(n.bpffs)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { dp.Close() })
	return dp
}

func (n *node) hostIndex(r *current.Result) int {
	n.t.Helper()
	var idx int
	if err := n.ns.Do(func() error {
		l, err := netlink.LinkByName(r.Interfaces[0].Name)
		if err == nil {
			idx = l.Attrs().Index
		}
		return err
	}); err != nil {
		n.t.Fatal(err)
	}
	return idx
}

func (n *node) counters(dp *podpath.Datapath, hostIndex int) podpath.Counters {
	n.t.Helper()
	c, err := dp.Counters(hostIndex)
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// sendFrom sends one UDP datagram from src (an address the pod may or may
// not own) inside pod to dst; the echo, if any, arrives on the returned
// connection.
func sendFrom(t *testing.T, pod *harness.NetNS, src, dst string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	if err := pod.Do(func() (err error) {
		conn, err = net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(mustAddrPort(dst)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	return conn
}

// echoed reports whether an answer arrives on conn within wait. Wait long
// when an answer is expected; when none is, first wait for the event that
// proves the datagram's fate (a counter), so that a short wait suffices.
func echoed(conn *net.UDPConn, wait time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(wait))
	_, err := conn.Read(make([]byte, 64))
	return err == nil
}

// waitCounters waits until the host end's counters satisfy cond.
func waitCounters(t *testing.T, dp *podpath.Datapath, hostIndex int, what string, cond func(podpath.Counters) bool) {
	t.Helper()
	harness.WaitFor(t, what, 10*time.Second, func() bool {
		c, err := dp.Counters(hostIndex)
		return err == nil && cond(c)
	})
}

func TestXDPRedirectAntiSpoofAndCounters(t *testing.T) {
	n := newNode(t)
	pod1, pod2 := n.env.NetNS("pod1"), n.env.NetNS("pod2")
	conf := n.conf(map[string]any{"xdp": true})
	r1, r2 := n.add("c1", pod1, conf), n.add("c2", pod2, conf)
	dp := n.datapath()
	h1 := n.hostIndex(r1)
	port := n.env.EchoServer(pod2, "pod2", 0)

	// Both ends carry our programs, and CHECK agrees.
	for _, pod := range []*harness.NetNS{pod1, pod2} {
		if out := pod.Exec(t, "ip", "link", "show", "eth0"); !strings.Contains(out, "xdp") {
			t.Errorf("pod end without XDP: %s", out)
		}
	}
	if out := n.ns.Exec(t, "ip", "link", "show", r1.Interfaces[0].Name); !strings.Contains(out, "xdp ") && !strings.Contains(out, "xdpdrv") {
		t.Errorf("host end without native XDP: %s", out)
	}
	n.veth.MustSucceed(t, n.call("CHECK", "c2", pod2, harness.WithPrevResult(t, conf, r2)))
	// CHECK notices a host end that lost its program.
	if err := n.ns.Do(func() error { return podpath.Detach(n.hostIndex(r2)) }); err != nil {
		t.Fatal(err)
	}
	if e := n.veth.MustFail(t, n.call("CHECK", "c2", pod2, harness.WithPrevResult(t, conf, r2)), 999); !strings.Contains(e.Msg, "xdp") {
		t.Errorf("CHECK message %q does not say xdp", e.Msg)
	}
	if err := n.ns.Do(func() error {
		full, err := podpath.Open(n.bpffs) // the node's namespace: Open may upgrade there
		if err != nil {
			return err
		}
		defer full.Close()
		return full.AttachHost(n.hostIndex(r2))
	}); err != nil {
		t.Fatal(err)
	}

	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("redirect/v6=%v", v6), func(t *testing.T) {
			before := n.counters(dp, h1)
			for _, proto := range []string{"tcp", "udp"} {
				pod1.MustExchange(t, proto, net.JoinHostPort(podIP(t, r2, v6), fmt.Sprint(port)), "fast")
			}
			after := n.counters(dp, h1)
			if after.RedirectPackets <= before.RedirectPackets || after.RedirectBytes <= before.RedirectBytes {
				t.Fatalf("redirect counters did not grow: %+v -> %+v", before, after)
			}
		})
	}

	t.Run("spoofed source IP is dropped and counted", func(t *testing.T) {
		dst := net.JoinHostPort(podIP(t, r2, false), fmt.Sprint(port))
		if !echoed(sendFrom(t, pod1, podIP(t, r1, false), dst), 10*time.Second) {
			t.Fatal("the pod's own address does not get through")
		}
		pod1.Exec(t, "ip", "addr", "add", "10.60.0.250/32", "dev", "eth0")
		before := n.counters(dp, h1)
		conn := sendFrom(t, pod1, "10.60.0.250", dst)
		waitCounters(t, dp, h1, "the drop counter to grow", func(c podpath.Counters) bool { return c.DropPackets > before.DropPackets })
		if echoed(conn, time.Second) {
			t.Fatal("a datagram from a spoofed source got an answer")
		}
	})

	t.Run("spoofed source MAC is dropped", func(t *testing.T) {
		pod1.Exec(t, "ip", "link", "set", "eth0", "address", "0a:de:ad:be:ef:01")
		defer pod1.Exec(t, "ip", "link", "set", "eth0", "address", r1.Interfaces[1].Mac)
		before := n.counters(dp, h1)
		conn := sendFrom(t, pod1, podIP(t, r1, false), net.JoinHostPort(podIP(t, r2, false), fmt.Sprint(port)))
		waitCounters(t, dp, h1, "the drop counter to grow", func(c podpath.Counters) bool { return c.DropPackets > before.DropPackets })
		if echoed(conn, time.Second) {
			t.Fatal("a datagram with a spoofed MAC got an answer")
		}
	})

	t.Run("DEL removes the map entries", func(t *testing.T) {
		owner := plugin.Derive("c1", "eth0").Owner
		if _, ok, _ := dp.Endpoint(owner); !ok {
			t.Fatal("no endpoint before DEL")
		}
		n.veth.MustSucceed(t, n.call("DEL", "c1", pod1, conf))
		n.veth.MustSucceed(t, n.call("DEL", "c1", pod1, conf))
		if _, ok, _ := dp.Endpoint(owner); ok {
			t.Fatal("endpoint left after DEL")
		}
	})
}

// Features switch off one by one, and without XDP nothing is attached.
func TestXDPFeatureSwitches(t *testing.T) {
	n := newNode(t)
	pod1, pod2 := n.env.NetNS("pod1"), n.env.NetNS("pod2")
	conf := n.conf(map[string]any{"xdp": map[string]any{"redirect": false, "antiSpoof": false}})
	r1, r2 := n.add("c1", pod1, conf), n.add("c2", pod2, conf)
	dp := n.datapath()
	h1 := n.hostIndex(r1)
	port := n.env.EchoServer(pod2, "pod2", 0)
	dst := net.JoinHostPort(podIP(t, r2, false), fmt.Sprint(port))

	before := n.counters(dp, h1)
	pod1.MustExchange(t, "tcp", dst, "slow")
	after := n.counters(dp, h1)
	if after.RedirectPackets != before.RedirectPackets || after.PassPackets <= before.PassPackets {
		t.Fatalf("with redirect off: %+v -> %+v", before, after)
	}
	// With antiSpoof off a foreign source passes XDP (nothing routes the
	// answer back to it, so only the counters can tell).
	pod1.Exec(t, "ip", "addr", "add", "10.60.0.250/32", "dev", "eth0")
	before = n.counters(dp, h1)
	sendFrom(t, pod1, "10.60.0.250", dst)
	waitCounters(t, dp, h1, "the pass counter to grow", func(c podpath.Counters) bool { return c.PassPackets > before.PassPackets })
	if after := n.counters(dp, h1); after.DropPackets != before.DropPackets {
		t.Fatalf("with antiSpoof off: %+v -> %+v", before, after)
	}

	for i, xdp := range []any{nil, false} { // no key (the default), and off explicitly
		id := fmt.Sprintf("off%d", i)
		r := n.add(id, n.env.NetNS(id), n.conf(map[string]any{"xdp": xdp}))
		if out := n.ns.Exec(t, "ip", "link", "show", r.Interfaces[0].Name); strings.Contains(out, "xdp") {
			t.Fatalf("xdp %v still attached a program: %s", xdp, out)
		}
		if _, ok, _ := dp.Endpoint(plugin.Derive(id, "eth0").Owner); ok {
			t.Fatalf("xdp %v still registered an endpoint", xdp)
		}
	}
}

// The XDP step is the last one of ADD: when it fails, the link and the
// address are gone too, and no map entry is left.
func TestXDPFailureRollsBack(t *testing.T) {
	n := newNode(t)
	notBPFFS := t.TempDir() // a plain directory: pinning fails
	e := n.veth.MustFail(t, n.call("ADD", "f", n.env.NetNS("pod"), n.conf(map[string]any{"xdp": true, "bpffsRoot": notBPFFS})), 999)
	if !strings.Contains(e.Msg, "xdp") {
		t.Errorf("message %q does not say xdp", e.Msg)
	}
	n.assertClean("XDP failure")
}

// A DEL on a node whose bpffs root exists but holds no pod datapath state
// (warpd pinned its load balancer there, or made just the directory)
// removes the pod and loads nothing: no programs, maps or links appear.
func TestDELLoadsNoXDP(t *testing.T) {
	for _, lbPins := range []bool{false, true} {
		t.Run(fmt.Sprintf("lb-pins=%v", lbPins), func(t *testing.T) {
			n := newNode(t)
			if lbPins {
				lb, err := servicelb.Open(n.bpffs, servicelb.Sizes{})
				if err != nil {
					t.Fatal(err)
				}
				lb.Close()
			}
			before := harness.PinNames(t, n.bpffs)
			pod := n.env.NetNS("pod")
			conf := n.conf(nil) // no "xdp": off
			n.add("c1", pod, conf)
			n.veth.MustSucceed(t, n.call("DEL", "c1", pod, conf))
			n.veth.MustSucceed(t, n.call("DEL", "c1", pod, conf))
			n.assertClean("DEL")
			if after := harness.PinNames(t, n.bpffs); !slices.Equal(after, before) {
				t.Errorf("DEL of a pod without XDP changed %s: %v -> %v", n.bpffs, before, after)
			}
			for _, d := range []string{"maps", "progs", "links"} {
				if _, err := os.Stat(filepath.Join(n.bpffs, d)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("DEL created pod datapath pins: %s/%s (%v)", n.bpffs, d, err)
				}
			}
		})
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
