package podpath

import (
	"context"
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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/safchain/ethtool"

	"github.com/warpnet/warpnet/bpf/internal/topo"
	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/tests/harness"
)

// features lists the offload features of p's eth0 that are on.
func features(t *testing.T, p *topo.Pod) map[string]bool {
	t.Helper()
	var fs map[string]bool
	if err := p.NS.Do(func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		fs, err = e.Features("eth0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return fs
}

// Same-node pod-to-pod through bpf_redirect_peer: both families, real TCP
// with GSO and checksum offload left on, and none of it through the node's
// forwarding path.
func TestTCRedirect(t *testing.T) {
	tp := newTopo(t, 3)
	d := tp.open()
	a, b, c := tp.Pods[0], tp.Pods[1], tp.Pods[2]
	tp.register(d, a, 0xa, on(TC))
	tp.register(d, b, 0xb, on(TC))
	for _, p := range []*topo.Pod{a, b} {
		if fs := features(t, p); !fs["tx-checksum-ip-generic"] || !fs["tx-tcp-segmentation"] {
			t.Fatalf("the tc datapath touched the pod end's offloads: %v", fs)
		}
	}
	for _, dst := range []netip.Addr{b.IP4, b.IP6} {
		t.Run("fast path "+topo.FamilyName(dst), func(t *testing.T) {
			before := tp.counters(d, a)
			f4, f6 := tp.Node.Forwarded(t)
			ok, out := topo.Ping(t, a, dst)
			if !ok {
				t.Fatalf("ping %s: %s", dst, out)
			}
			// B's replies were redirected too: B sent them with 64, its
			// program decremented it on the way to A.
			if !strings.Contains(out, "ttl=63") && !strings.Contains(out, "hlim=63") {
				t.Errorf("replies do not show a TTL of 63:\n%s", out)
			}
			topo.TCPEcho(t, a, b, dst, 8<<20)
			after := tp.counters(d, a)
			if after.RedirectPackets < before.RedirectPackets+3 || after.RedirectBytes < before.RedirectBytes+8<<20 {
				t.Errorf("redirect counters of A did not grow: %+v -> %+v", before, after)
			}
			if after.DropPackets != before.DropPackets {
				t.Errorf("drops: %+v -> %+v", before, after)
			}
			// GSO stays on: 8 MiB in far fewer packets than MTU-sized
			// segments would take (about 5800).
			if n := after.RedirectPackets - before.RedirectPackets; n > 4000 {
				t.Errorf("%d packets for 8 MiB: GSO is off", n)
			}
			g4, g6 := tp.Node.Forwarded(t)
			if g4 != f4 || g6 != f6 {
				t.Errorf("the node forwarded packets: IPv4 %d -> %d, IPv6 %d -> %d", f4, g4, f6, g6)
			}
		})
	}

	t.Run("TTL 1 goes to the stack", func(t *testing.T) {
		for _, dst := range []netip.Addr{b.IP4, b.IP6} {
			before := tp.counters(d, a)
			_, out := topo.Ping(t, a, dst, "-t", "1")
			if !strings.Contains(out, "exceeded") {
				t.Errorf("ping -t 1 %s: no time exceeded from the node:\n%s", dst, out)
			}
			if after := tp.counters(d, a); after.RedirectPackets != before.RedirectPackets || after.PassPackets < before.PassPackets+3 {
				t.Errorf("ping -t 1 %s: counters %+v -> %+v, want 3 passed, none redirected", dst, before, after)
			}
		}
	})

	t.Run("IPv4 options go to the stack", func(t *testing.T) {
		// ping -R: record route, which the forwarding path fills in.
		before := tp.counters(d, a)
		ok, out := topo.Ping(t, a, b.IP4, "-R")
		if !ok || !strings.Contains(out, "RR:") {
			t.Fatalf("ping -R: %s", out)
		}
		if after := tp.counters(d, a); after.RedirectPackets != before.RedirectPackets || after.PassPackets < before.PassPackets+3 {
			t.Errorf("ping -R: counters %+v -> %+v, want 3 passed, none redirected", before, after)
		}
	})

	t.Run("to a pod without a fast path", func(t *testing.T) {
		// C is registered for anti-spoofing only, D not at all: both
		// are reached through the node's forwarding path.
		tp.register(d, c, 0xc, Features{Hook: TC, AntiSpoof: true})
		for _, dst := range []netip.Addr{c.IP4, c.IP6} {
			before := tp.counters(d, a)
			f4, f6 := tp.Node.Forwarded(t)
			topo.MustPing(t, a, dst)
			after := tp.counters(d, a)
			if after.RedirectPackets != before.RedirectPackets || after.PassPackets < before.PassPackets+3 {
				t.Errorf("ping %s: counters %+v -> %+v, want 3 passed", dst, before, after)
			}
			if g4, g6 := tp.Node.Forwarded(t); g4+g6 < f4+f6+6 {
				t.Errorf("ping %s: the node forwarded %d packets, want the 3 requests and 3 replies", dst, g4+g6-f4-f6)
			}
		}
	})

	t.Run("redirect off", func(t *testing.T) {
		tp.InNode(func() error { return d.AddEndpoint(endpoint(b, 0xb, Features{Hook: TC, AntiSpoof: true})) })
		defer tp.InNode(func() error { return d.AddEndpoint(endpoint(b, 0xb, on(TC))) })
		before := tp.counters(d, a)
		topo.MustPing(t, a, b.IP4)
		if after := tp.counters(d, a); after.RedirectPackets != before.RedirectPackets {
			t.Errorf("A redirected to B although B has redirect off: %+v -> %+v", before, after)
		}
	})
}

// A tc pod delivers to an XDP pod that has the fast path (both chose to
// skip the forwarding path); the XDP program never redirects to a tc pod,
// whose pod end has no XDP program and would drop the frames.
func TestTCAndXDPPods(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	tcPod, xdpPod := tp.Pods[0], tp.Pods[1]
	tp.register(d, tcPod, 0xa, on(TC))
	tp.register(d, xdpPod, 0xb, on(XDP))
	for _, dst := range []netip.Addr{xdpPod.IP4, xdpPod.IP6} {
		beforeTC, beforeXDP := tp.counters(d, tcPod), tp.counters(d, xdpPod)
		topo.MustPing(t, tcPod, dst)
		topo.TCPEcho(t, tcPod, xdpPod, dst, 1<<20)
		afterTC, afterXDP := tp.counters(d, tcPod), tp.counters(d, xdpPod)
		if afterTC.RedirectPackets < beforeTC.RedirectPackets+10 {
			t.Errorf("tc pod to XDP pod %s not redirected: %+v -> %+v", dst, beforeTC, afterTC)
		}
		if afterXDP.RedirectPackets != beforeXDP.RedirectPackets || afterXDP.PassPackets < beforeXDP.PassPackets+10 {
			t.Errorf("the XDP pod's replies to the tc pod were redirected: %+v -> %+v", beforeXDP, afterXDP)
		}
	}
}

// remoteNode is a second "node" behind an uplink of the topology's node:
// 10.250.0.0/24 and fd50::/64 between them, and the remote node's pods'
// networks 10.245.0.0/24 and fd45::/64 behind it (one address of each on
// its loopback), routed through it.
type remoteNode struct {
	ns       *harness.NetNS
	pod4     netip.Addr
	pod6     netip.Addr
	onLink4  netip.Addr // the remote node's uplink address: on a connected network
	prefixes []netip.Prefix
}

func newRemote(tp dpTopo) remoteNode {
	t, e := tp.T, tp.Env
	r := remoteNode{
		ns:   e.NetNS("remote"),
		pod4: netip.MustParseAddr("10.245.0.5"), pod6: netip.MustParseAddr("fd45::5"),
		onLink4: netip.MustParseAddr("10.250.0.2"),
		prefixes: []netip.Prefix{netip.MustParsePrefix("10.245.0.0/16"), netip.MustParsePrefix("fd45::/32"),
			netip.MustParsePrefix("10.250.0.0/24")},
	}
	e.Veth(tp.Node, "up0", r.ns, "eth0")
	e.Addr(tp.Node, "up0", "10.250.0.1/24")
	e.Addr(tp.Node, "up0", "fd50::1/64")
	e.Addr(r.ns, "eth0", "10.250.0.2/24")
	e.Addr(r.ns, "eth0", "fd50::2/64")
	e.Addr(r.ns, "lo", r.pod4.String()+"/32")
	e.Addr(r.ns, "lo", r.pod6.String()+"/128")
	tp.Node.Exec(t, "ip", "route", "add", "10.245.0.0/24", "via", "10.250.0.2")
	tp.Node.Exec(t, "ip", "-6", "route", "add", "fd45::/64", "via", "fd50::2")
	r.ns.Exec(t, "ip", "route", "add", "10.244.0.0/24", "via", "10.250.0.1")
	r.ns.Exec(t, "ip", "-6", "route", "add", "fd00::/64", "via", "fd50::1")
	return r
}

// udpSink counts the datagrams arriving on port in n, answering none.
func udpSink(t *testing.T, n *harness.NetNS, port int) func() int {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func() (err error) { pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan struct{}, 100000)
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	return func() int { return len(got) }
}

// sendUDP sends n datagrams from p to dst:port, where sink counts them,
// in batches that the sink takes in before the next one is sent (so that a
// busy machine does not overflow its socket buffer); received is the
// sink's count before.
func sendUDP(t *testing.T, p *topo.Pod, dst netip.Addr, port, n int, sink func() int, received int) {
	t.Helper()
	var c net.Conn
	if err := p.NS.Do(func() (err error) {
		c, err = net.Dial("udp", netip.AddrPortFrom(dst, uint16(port)).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for sent := 0; sent < n; {
		for range min(50, n-sent) {
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		harness.WaitFor(t, "the datagrams to arrive", 10*time.Second, func() bool { return sink() >= received+sent })
	}
}

// Packets to another node's pods go to the route's next hop with
// bpf_redirect_neigh, for the destinations in warp_neigh_dsts only; a
// destination on a connected network goes to the stack.
func TestTCNextHop(t *testing.T) {
	tp := newTopo(t, 1)
	d := tp.open()
	a := tp.Pods[0]
	r := newRemote(tp)
	tp.register(d, a, 0xa, on(TC))
	tp.InNode(func() error { return d.SetNeighDsts(r.prefixes) })
	remotePod := &topo.Pod{NS: r.ns}
	const port, n = 9999, 200
	sink := udpSink(t, r.ns, port)
	received := 0

	// First, while no connection of the pod's is open: the last ACKs of the
	// TCP transfers below may still leave the pod (redirected) after the
	// transfer returns, and would count here.
	t.Run("a destination on a connected network goes to the stack", func(t *testing.T) {
		before := tp.counters(d, a)
		topo.MustPing(t, a, r.onLink4)
		if after := tp.counters(d, a); after.RedirectPackets != before.RedirectPackets {
			t.Errorf("on-link destination redirected: %+v -> %+v", before, after)
		}
	})

	for _, dst := range []netip.Addr{r.pod4, r.pod6} {
		t.Run("to a remote pod "+topo.FamilyName(dst), func(t *testing.T) {
			before := tp.counters(d, a)
			f4, f6 := tp.Node.Forwarded(t)
			sendUDP(t, a, dst, port, n, sink, received)
			received += n
			after := tp.counters(d, a)
			if after.RedirectPackets < before.RedirectPackets+n {
				t.Errorf("redirect counters: %+v -> %+v, want %d more", before, after, n)
			}
			if g4, g6 := tp.Node.Forwarded(t); g4 != f4 || g6 != f6 {
				t.Errorf("the node forwarded what the program should have: IPv4 %d -> %d, IPv6 %d -> %d", f4, g4, f6, g6)
			}
			// Both ways with GSO: the replies come back through the stack.
			topo.MustPing(t, a, dst)
			topo.TCPEcho(t, a, remotePod, dst, 4<<20)
		})
	}

	t.Run("without the destination in warp_neigh_dsts", func(t *testing.T) {
		// The last packets of the TCP transfers above would still be
		// redirected (IPv6 stays in warp_neigh_dsts) and count here.
		harness.WaitFor(t, "the pod's TCP connections to close", 30*time.Second, func() bool {
			out, err := a.NS.Run(t.Context(), "ss", "-Htan", "exclude", "time-wait")
			return err == nil && strings.TrimSpace(out) == ""
		})
		tp.InNode(func() error { return d.SetNeighDsts(r.prefixes[1:]) }) // IPv6 and the uplink only
		if got, err := d.NeighDsts(); err != nil || !slices.Equal(got, []netip.Prefix{r.prefixes[2], r.prefixes[1]}) {
			t.Fatalf("NeighDsts = %v %v", got, err)
		}
		before := tp.counters(d, a)
		f4, _ := tp.Node.Forwarded(t)
		sendUDP(t, a, r.pod4, port, n, sink, received)
		received += n
		if after := tp.counters(d, a); after.RedirectPackets != before.RedirectPackets {
			t.Errorf("redirected although not in warp_neigh_dsts: %+v -> %+v", before, after)
		}
		if g4, _ := tp.Node.Forwarded(t); g4 < f4+n {
			t.Errorf("the node forwarded %d packets, want %d", g4-f4, n)
		}
	})
}

func TestSetNeighDsts(t *testing.T) {
	tp := newTopo(t, 0)
	d := tp.open()
	p := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	for _, c := range []struct{ set, want []netip.Prefix }{
		{p("10.244.0.0/16", "fd00:10:244::/48"), p("10.244.0.0/16", "fd00:10:244::/48")},
		{p("10.244.1.7/24", "::ffff:10.9.0.0/112", "10.244.0.0/16"), p("10.9.0.0/16", "10.244.0.0/16", "10.244.1.0/24")},
		{nil, nil},
	} {
		tp.InNode(func() error { return d.SetNeighDsts(c.set) })
		if got, err := d.NeighDsts(); err != nil || !slices.Equal(got, c.want) {
			t.Errorf("SetNeighDsts(%v): NeighDsts = %v %v, want %v", c.set, got, err, c.want)
		}
	}
	many := make([]netip.Prefix, MaxNeighDsts+1)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	}
	if err := d.SetNeighDsts(many); err == nil {
		t.Error("more than MaxNeighDsts prefixes accepted")
	}
	if err := d.SetNeighDsts([]netip.Prefix{{}}); err == nil {
		t.Error("an invalid prefix accepted")
	}
}

func TestTCAttachDetach(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	attached := func(owner uint64, idx int) bool {
		t.Helper()
		var ok bool
		tp.InNode(func() (err error) { ok, err = d.TCAttached(owner, idx); return err })
		return ok
	}
	pin := filepath.Join(tp.PinDir, linksDir, "000000000000000a")
	if attached(0xa, a.HostIdx) {
		t.Fatal("attached before AttachTC")
	}
	tp.register(d, a, 0xa, on(TC))
	if !attached(0xa, a.HostIdx) || attached(0xa, b.HostIdx) || attached(0xb, a.HostIdx) {
		t.Fatal("TCAttached does not say where the program runs")
	}
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("no link pin: %v", err)
	}
	// Idempotent: the same link stays.
	id := func() link.ID {
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer lk.Close()
		info, _ := lk.Info()
		return info.ID
	}
	first := id()
	tp.InNode(func() error { return d.AttachTC(0xa, a.HostIdx) })
	if id() != first {
		t.Error("a second AttachTC replaced the link")
	}
	// Another Open (a second plugin process) recognises the attachment,
	// and so does a handle that loads nothing.
	d2 := tp.open()
	existing, err := OpenExisting(tp.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer existing.Close()
	for _, h := range []*Datapath{d2, existing} {
		tp.InNode(func() error {
			if ok, err := h.TCAttached(0xa, a.HostIdx); !ok || err != nil {
				return fmt.Errorf("TCAttached through another handle: %v %v", ok, err)
			}
			return nil
		})
	}
	// The same owner on another interface: the old link goes.
	tp.InNode(func() error { return d.AttachTC(0xa, b.HostIdx) })
	if attached(0xa, a.HostIdx) || !attached(0xa, b.HostIdx) {
		t.Error("AttachTC on another interface did not move the link")
	}
	if q := tcxPrograms(t, tp, a.HostIdx); len(q) != 0 {
		t.Errorf("the old interface still runs %v", q)
	}
	tp.InNode(func() error { return d.AttachTC(0xa, a.HostIdx) })

	// RemoveTC detaches and unpins; repeatable; works without programs.
	tp.InNode(func() error { return existing.RemoveTC(0xa) })
	if attached(0xa, a.HostIdx) {
		t.Error("still attached after RemoveTC")
	}
	if q := tcxPrograms(t, tp, a.HostIdx); len(q) != 0 {
		t.Errorf("tcx ingress still runs %v after RemoveTC", q)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin left: %v", err)
	}
	tp.InNode(func() error { return existing.RemoveTC(0xa) })

	// A link whose device is gone is defunct: not attached, and removable.
	tp.InNode(func() error { return d.AttachTC(0xb, b.HostIdx) })
	tp.Node.Exec(t, "ip", "link", "del", b.HostName)
	if attached(0xb, b.HostIdx) {
		t.Error("a defunct link counts as attached")
	}
	tp.InNode(func() error { return d.RemoveTC(0xb) })
	if names := harness.PinNames(t, filepath.Join(tp.PinDir, linksDir)); len(names) != 0 {
		t.Errorf("links left: %v", names)
	}
}

// tcxPrograms lists the programs on ifindex's tcx ingress.
func tcxPrograms(t *testing.T, tp dpTopo, ifindex int) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	tp.InNode(func() error {
		q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range q.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	})
	return ids
}

// oldTCProgram stands in for the tc program of an older build: it passes
// everything (TCX_NEXT) and counts nothing, but is named like ours and
// uses warp_ifaces, as an older build's program would.
func oldTCProgram(t *testing.T, ifaces *ebpf.Map) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: tcProgName,
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.LoadMapPtr(asm.R1, ifaces.FD()),
			asm.Mov.Imm(asm.R0, -1), // TCX_NEXT
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// An upgrade with tc pods attached switches their links to the new program
// while a ping flood and an open TCP connection cross the swap.
func TestTCUpgrade(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	tp.register(d, a, 0xa, on(TC))
	tp.register(d, b, 0xb, on(TC))

	// The pins of an "old build": its program pinned and running in both
	// links, another build ID in warp_meta.
	old := oldTCProgram(t, d.objs.WarpIfaces)
	defer old.Close()
	oldID, _ := pinset.ProgID(old)
	if err := pinset.PinReplace(old, tp.PinDir+"/progs/"+tcProgName); err != nil {
		t.Fatal(err)
	}
	for _, owner := range []uint64{0xa, 0xb} {
		lk, err := link.LoadPinnedLink(d.linkPin(owner), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := lk.Update(old); err != nil {
			t.Fatal(err)
		}
		lk.Close()
	}
	m, err := pinset.ReadMeta(d.objs.WarpMeta)
	if err != nil {
		t.Fatal(err)
	}
	m.Build = [32]byte{'o', 'l', 'd'}
	if err := d.objs.WarpMeta.Put(uint32(0), &m); err != nil {
		t.Fatal(err)
	}
	before := tp.counters(d, a)
	d.Close()

	// A TCP connection opened through the old program (which passes
	// everything to the stack) and used again after the upgrade.
	var ln net.Listener
	if err := b.NS.Do(func() (err error) { ln, err = net.Listen("tcp", netip.AddrPortFrom(b.IP4, 0).String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(buf[:n])
		}
	}()
	var conn net.Conn
	if err := a.NS.Do(func() (err error) { conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func(msg string) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatalf("write on the long-lived connection: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := conn.Read(buf); err != nil || string(buf) != msg {
			t.Fatalf("read on the long-lived connection: %q %v", buf, err)
		}
	}
	roundTrip("before")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	wait := pingFlood(t, ctx, a.NS, b.IP4.String(), 300)
	var nd *Datapath
	tp.InNode(func() (err error) { nd, err = Open(tp.PinDir); return err })
	upgraded := time.Now()
	defer nd.Close()
	roundTrip("during")
	out, err := wait()
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Errorf("ping across the upgrade lost packets: %v\n%s", err, out)
	}
	if first, last := replyTimes(out); !first.Before(upgraded) || !last.After(upgraded) {
		t.Errorf("replies from %v to %v did not span the upgrade (done at %v)", first, last, upgraded)
	}
	roundTrip("after")

	newID, _ := pinset.ProgID(nd.objs.WarpTcHost)
	if newID == oldID {
		t.Fatal("Open kept the old program")
	}
	for _, p := range []struct {
		owner uint64
		pod   *topo.Pod
	}{{0xa, a}, {0xb, b}} {
		if ids := tcxPrograms(t, tp, p.pod.HostIdx); !slices.Equal(ids, []ebpf.ProgramID{ebpf.ProgramID(newID)}) {
			t.Errorf("%s runs %v, want the new %d (old %d)", p.pod.HostName, ids, newID, oldID)
		}
		tp.InNode(func() error {
			if ok, err := nd.TCAttached(p.owner, p.pod.HostIdx); !ok || err != nil {
				return fmt.Errorf("TCAttached(%s) = %v %v after the upgrade", p.pod.HostName, ok, err)
			}
			return nil
		})
	}
	mid := tp.counters(nd, a)
	if mid.PassPackets < before.PassPackets {
		t.Errorf("counters lost: %+v -> %+v", before, mid)
	}
	topo.TCPEcho(t, a, b, b.IP4, 1<<20)
	roundTrip("redirected")
	if after := tp.counters(nd, a); after.RedirectPackets < mid.RedirectPackets+10 {
		t.Errorf("the new program does not redirect: %+v -> %+v", mid, after)
	}
}

// warpd's north-south program may be on a pod's interface before the
// plugin attaches ours (warpd attached it at a sync between the veth's
// creation and the ADD's attach): ours goes before it anyway, so the
// replies it translates have passed our anti-spoofing. Elsewhere ours is
// appended after what is there.
func TestTCBeforeNorthSouth(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	// Stand-ins, passing everything: warpd's np_tc on a, another
	// program on b.
	stand := func(name string) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}}) // TCX_NEXT
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	ns, other := stand(pinset.NorthSouthTCProg), stand("other_tc")
	for _, x := range []struct {
		prog *ebpf.Program
		idx  int
	}{{ns, a.HostIdx}, {other, b.HostIdx}} {
		tp.InNode(func() error {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: x.idx, Program: x.prog, Attach: ebpf.AttachTCXIngress})
			if err == nil {
				t.Cleanup(func() { lk.Close() })
			}
			return err
		})
	}
	tp.register(d, a, 0xa, on(TC))
	tp.register(d, b, 0xb, on(TC))
	ours, err := ebpf.LoadPinnedProgram(d.obj.ProgPin(tcProgName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	id := func(p *ebpf.Program) ebpf.ProgramID {
		i, err := pinset.ProgID(p)
		if err != nil {
			t.Fatal(err)
		}
		return ebpf.ProgramID(i)
	}
	if got, want := tcxPrograms(t, tp, a.HostIdx), []ebpf.ProgramID{id(ours), id(ns)}; !slices.Equal(got, want) {
		t.Errorf("tcx ingress of a runs %v, want ours then the north-south program %v", got, want)
	}
	if got, want := tcxPrograms(t, tp, b.HostIdx), []ebpf.ProgramID{id(other), id(ours)}; !slices.Equal(got, want) {
		t.Errorf("tcx ingress of b runs %v, want the program that was there, then ours %v", got, want)
	}
}
