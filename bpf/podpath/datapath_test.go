package podpath

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/safchain/ethtool"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/internal/topo"
	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/tests/harness"
)

var allOn = Features{Redirect: true, AntiSpoof: true}

// --- unit tests (no root) ---

func TestSpecMatchesGo(t *testing.T) {
	spec, err := loadPod()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		max        uint32
		key, value any
	}{
		podMapWarpIfaces:    {MaxEndpoints, uint32(0), podIface{}},
		podMapWarpIps:       {maxIPs, podIpKey{}, podIpVal{}},
		podMapWarpEndpoints: {MaxEndpoints, uint64(0), podEndpoint{}},
		podMapWarpDevmap:    {MaxEndpoints, uint32(0), uint32(0)},
		podMapWarpCounters:  {MaxEndpoints, uint32(0), podCounters{}},
		podMapWarpMeta:      {1, uint32(0), pinset.Meta{}},
		podMapWarpNeighDsts: {MaxNeighDsts, podLpmKey{}, uint32(0)},
	}
	if len(spec.Maps) != len(want) {
		t.Errorf("ELF has %d maps, want %d", len(spec.Maps), len(want))
	}
	for name, w := range want {
		ms := spec.Maps[name]
		if ms == nil {
			t.Errorf("map %s missing", name)
			continue
		}
		if ms.MaxEntries != w.max {
			t.Errorf("%s: max_entries %d, Go constant says %d", name, ms.MaxEntries, w.max)
		}
		if ms.Pinning != ebpf.PinByName {
			t.Errorf("%s: not pinned by name", name)
		}
		if k, v := binary.Size(w.key), binary.Size(w.value); uint32(k) != ms.KeySize || uint32(v) != ms.ValueSize {
			t.Errorf("%s: key/value size %d/%d, Go types have %d/%d", name, ms.KeySize, ms.ValueSize, k, v)
		}
	}
	if n := len(podEndpoint{}.Ips); n != MaxIPsPerEndpoint {
		t.Errorf("endpoint record holds %d IPs, MaxIPsPerEndpoint is %d", n, MaxIPsPerEndpoint)
	}
	for _, p := range []string{hostProgName, podProgName} {
		if ps := spec.Programs[p]; ps == nil || ps.Type != ebpf.XDP {
			t.Errorf("program %s missing or not XDP", p)
		}
	}
	if ps := spec.Programs[tcProgName]; ps == nil || ps.Type != ebpf.SchedCLS || ps.AttachType != ebpf.AttachTCXIngress {
		t.Errorf("program %s missing or not for tcx ingress", tcProgName)
	}
}

func TestIPKey(t *testing.T) {
	for _, s := range []string{"10.244.0.10", "fd00::10", "2001:db8::1", "1.2.3.4"} {
		a := netip.MustParseAddr(s)
		k := ipKey(a)
		if got := k.addr(); got != a {
			t.Errorf("%s: round trip gives %s", a, got)
		}
		if k.Pad != [3]uint8{} {
			t.Errorf("%s: padding not zero", a)
		}
	}
	k := ipKey(netip.MustParseAddr("1.2.3.4"))
	if k.Family != pinset.FamilyV4 || k.Addr != [16]byte{1, 2, 3, 4} {
		t.Errorf("IPv4 key is not family 4 + plain 4 bytes: %+v", k)
	}
	// An IPv4-mapped address is the IPv4 address.
	if k2 := ipKey(netip.MustParseAddr("::ffff:1.2.3.4").Unmap()); k2 != k {
		t.Errorf("mapped address encodes differently: %+v", k2)
	}
}

func TestEncodeValidation(t *testing.T) {
	good := Endpoint{
		Owner: 1, HostIfIndex: 5,
		PodMAC:  net.HardwareAddr{2, 0, 0, 0, 0, 1},
		HostMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		IPs:     []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
	}
	if _, err := encode(good); err != nil {
		t.Fatalf("valid endpoint rejected: %v", err)
	}
	bad := map[string]func(*Endpoint){
		"owner 0":         func(e *Endpoint) { e.Owner = 0 },
		"ifindex 0":       func(e *Endpoint) { e.HostIfIndex = 0 },
		"short pod MAC":   func(e *Endpoint) { e.PodMAC = e.PodMAC[:5] },
		"nil host MAC":    func(e *Endpoint) { e.HostMAC = nil },
		"multicast MAC":   func(e *Endpoint) { e.PodMAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} },
		"no IPs":          func(e *Endpoint) { e.IPs = nil },
		"too many IPs":    func(e *Endpoint) { e.IPs = slices.Repeat(e.IPs[:1], MaxIPsPerEndpoint+1) },
		"duplicate IP":    func(e *Endpoint) { e.IPs = append(e.IPs, e.IPs[0]) },
		"invalid IP":      func(e *Endpoint) { e.IPs = []netip.Addr{{}} },
		"unspecified IP":  func(e *Endpoint) { e.IPs = []netip.Addr{netip.IPv4Unspecified()} },
		"link-local IP":   func(e *Endpoint) { e.IPs = []netip.Addr{netip.MustParseAddr("fe80::1")} },
		"zoned IP":        func(e *Endpoint) { e.IPs = []netip.Addr{netip.MustParseAddr("fd00::1%eth0")} },
		"multicast IP":    func(e *Endpoint) { e.IPs = []netip.Addr{netip.MustParseAddr("224.0.0.1")} },
		"mapped dup of 4": func(e *Endpoint) { e.IPs = append(e.IPs, netip.MustParseAddr("::ffff:10.0.0.1")) },
	}
	for name, mutate := range bad {
		ep := good
		ep.IPs = slices.Clone(good.IPs)
		mutate(&ep)
		if _, err := encode(ep); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// --- datapath tests (root) ---

// txOn lists the TX checksum features on in p's eth0.
func txOn(t *testing.T, p *topo.Pod) []string {
	t.Helper()
	var on []string
	if err := p.NS.Do(func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		on, err = txChecksumFeatures(e, "eth0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return on
}

func TestRedirect(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	if on := txOn(t, a); len(on) == 0 {
		t.Fatal("a veth without TX checksum offload: the test below proves nothing")
	}
	tp.register(d, a, 0xa, allOn)
	tp.register(d, b, 0xb, allOn)
	for _, p := range []*topo.Pod{a, b} {
		if on := txOn(t, p); len(on) > 0 {
			t.Fatalf("TX checksum offload still on after AttachPod: %v", on)
		}
	}

	for _, dst := range []netip.Addr{b.IP4, b.IP6} {
		t.Run("fast path "+topo.FamilyName(dst), func(t *testing.T) {
			before := tp.counters(d, a)
			ok, out := topo.Ping(t, a, dst)
			if !ok {
				t.Fatalf("ping %s: %s", dst, out)
			}
			// B's replies were redirected too: B sent them with 64,
			// the program decremented it on the way to A.
			if !strings.Contains(out, "ttl=63") {
				t.Errorf("replies do not show ttl=63:\n%s", out)
			}
			topo.TCPEcho(t, a, b, dst, 4<<20)
			after := tp.counters(d, a)
			if after.RedirectPackets < before.RedirectPackets+100 || after.RedirectBytes < before.RedirectBytes+4<<20 {
				t.Errorf("redirect counters of A did not grow: %+v -> %+v", before, after)
			}
			if after.DropPackets != before.DropPackets {
				t.Errorf("drops: %+v -> %+v", before, after)
			}
			t.Logf("A's counters: %+v -> %+v", before, after)
		})
	}

	t.Run("TTL 1 goes to the stack", func(t *testing.T) {
		for _, dst := range []netip.Addr{b.IP4, b.IP6} {
			before := tp.counters(d, a)
			_, out := topo.Ping(t, a, dst, "-t", "1")
			if !strings.Contains(out, "exceeded") {
				t.Errorf("ping -t 1 %s: no time exceeded from the node:\n%s", dst, out)
			}
			// "time exceeded" came from the node, so the stack had the
			// packets; the redirect counter is not compared, because late
			// segments of the previous subtest's TCP teardown may still be
			// redirected meanwhile.
			after := tp.counters(d, a)
			if after.PassPackets < before.PassPackets+3 {
				t.Errorf("ping -t 1 %s: counters %+v -> %+v, want at least 3 more passed", dst, before, after)
			}
		}
	})

	t.Run("redirect off", func(t *testing.T) {
		tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, Features{AntiSpoof: true})) })
		if ep, ok, err := d.Endpoint(0xa); err != nil || !ok || ep.Features.Redirect || !ep.Features.AntiSpoof {
			t.Fatalf("Endpoint after update: %+v %v %v", ep, ok, err)
		}
		for _, dst := range []netip.Addr{b.IP4, b.IP6} {
			beforeA, beforeB := tp.counters(d, a), tp.counters(d, b)
			topo.MustPing(t, a, dst)
			topo.TCPEcho(t, a, b, dst, 1<<20)
			afterA, afterB := tp.counters(d, a), tp.counters(d, b)
			if afterA.RedirectPackets != beforeA.RedirectPackets || afterA.PassPackets < beforeA.PassPackets+100 {
				t.Errorf("A with redirect off: %+v -> %+v", beforeA, afterA)
			}
			// B still has redirect on, but A (the destination) has not.
			if afterB.RedirectPackets != beforeB.RedirectPackets {
				t.Errorf("B redirected to A although A has redirect off: %+v -> %+v", beforeB, afterB)
			}
		}
		tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, allOn)) })
		before := tp.counters(d, a)
		topo.MustPing(t, a, b.IP4)
		if after := tp.counters(d, a); after.RedirectPackets < before.RedirectPackets+3 {
			t.Errorf("redirect back on: %+v -> %+v", before, after)
		}
	})
}

// TestJumboMTU checks that the multi-buffer ("xdp.frags") programs attach
// to veths with an MTU a single-buffer program would refuse (above about
// 3.5 KB) and that large packets are redirected.
func TestJumboMTU(t *testing.T) {
	tp := newTopo(t, 2)
	for _, p := range tp.Pods {
		tp.Node.Exec(t, "ip", "link", "set", p.HostName, "mtu", "9000")
		p.NS.Exec(t, "ip", "link", "set", "eth0", "mtu", "9000")
	}
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	tp.register(d, a, 0xa, allOn)
	tp.register(d, b, 0xb, allOn)
	before := tp.counters(d, a)
	topo.MustPing(t, a, b.IP4, "-s", "8900", "-M", "do")
	topo.MustPing(t, a, b.IP6, "-s", "8900", "-M", "do")
	topo.TCPEcho(t, a, b, b.IP4, 4<<20)
	after := tp.counters(d, a)
	if after.RedirectPackets < before.RedirectPackets+6 || after.RedirectBytes < before.RedirectBytes+6*8900 {
		t.Errorf("jumbo frames not redirected: %+v -> %+v", before, after)
	}
}

// TestAntiSpoof runs the same checks against both programs: the checks are
// one code path in pod.c, but each program feeds it its own way.
func TestAntiSpoof(t *testing.T) {
	for _, hook := range []Hook{XDP, TC} {
		t.Run(hook.String(), func(t *testing.T) { testAntiSpoof(t, hook) })
	}
}

func testAntiSpoof(t *testing.T, hook Hook) {
	allOn := on(hook)
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	tp.register(d, a, 0xa, allOn)
	tp.register(d, b, 0xb, allOn)

	// A second address in pod A that is not registered, routed back to A by
	// the node so that replies could arrive if the packets got through.
	spoof4, spoof6 := netip.MustParseAddr("10.244.0.99"), netip.MustParseAddr("fd00::99")
	tp.Env.Addr(a.NS, "eth0", spoof4.String()+"/32")
	tp.Env.Addr(a.NS, "eth0", spoof6.String()+"/128")
	tp.Node.Exec(t, "ip", "route", "add", spoof4.String()+"/32", "dev", a.HostName)
	tp.Node.Exec(t, "ip", "-6", "route", "add", spoof6.String()+"/128", "dev", a.HostName)

	t.Run("foreign source IP", func(t *testing.T) {
		for _, c := range []struct{ src, dst netip.Addr }{{spoof4, b.IP4}, {spoof6, b.IP6}} {
			before := tp.counters(d, a)
			if ok, out := topo.Ping(t, a, c.dst, "-I", c.src.String()); ok {
				t.Errorf("ping from unregistered %s got through:\n%s", c.src, out)
			}
			after := tp.counters(d, a)
			if after.DropPackets < before.DropPackets+3 {
				t.Errorf("drop counter: %+v -> %+v", before, after)
			}
			if after.RedirectPackets != before.RedirectPackets {
				t.Errorf("spoofed packets redirected: %+v -> %+v", before, after)
			}
		}
		// The registered addresses still work.
		topo.MustPing(t, a, b.IP4)
		topo.MustPing(t, a, b.IP6)
	})

	t.Run("anti-spoofing off", func(t *testing.T) {
		tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, Features{Hook: hook, Redirect: true})) })
		defer tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, allOn)) })
		for _, c := range []struct{ src, dst netip.Addr }{{spoof4, b.IP4}, {spoof6, b.IP6}} {
			before := tp.counters(d, a)
			topo.MustPing(t, a, c.dst, "-I", c.src.String())
			if after := tp.counters(d, a); after.DropPackets != before.DropPackets {
				t.Errorf("drops with anti-spoofing off: %+v -> %+v", before, after)
			}
		}
	})

	t.Run("foreign source MAC", func(t *testing.T) {
		a.NS.Exec(t, "ip", "link", "set", "eth0", "address", "02:aa:00:00:99:99")
		defer a.NS.Exec(t, "ip", "link", "set", "eth0", "address", a.PodMAC.String())
		before := tp.counters(d, a)
		if ok, out := topo.Ping(t, a, b.IP4); ok {
			t.Errorf("ping with a foreign MAC got through:\n%s", out)
		}
		if after := tp.counters(d, a); after.DropPackets < before.DropPackets+3 {
			t.Errorf("drop counter: %+v -> %+v", before, after)
		}
	})

	// What a pod legitimately sends besides its own unicast traffic, and
	// look-alikes that must be dropped. Background traffic of the pod (MLD
	// reports, router solicitations) only ever adds to "passed".
	gw4 := netip.MustParseAddr("169.254.1.1")
	llA := netip.MustParseAddr("fe80::aa:ff:fe00:2") // any link-local source will do
	nsGroup, nsMAC := solicitedNode(netip.MustParseAddr("fe80::1"))
	otherMAC := net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 1}
	frames := []struct {
		name  string
		frame []byte
		pass  bool
	}{
		{"ARP request", ethFrame(broadcastMAC, a.PodMAC, 0x0806, arpRequest(a.PodMAC, a.IP4, gw4)), true},
		{"ARP probe", ethFrame(broadcastMAC, a.PodMAC, 0x0806, arpRequest(a.PodMAC, netip.IPv4Unspecified(), a.IP4)), true},
		{"ARP from foreign IP", ethFrame(broadcastMAC, a.PodMAC, 0x0806, arpRequest(a.PodMAC, spoof4, gw4)), false},
		{"ARP with foreign sender MAC", ethFrame(broadcastMAC, a.PodMAC, 0x0806, arpRequest(otherMAC, a.IP4, gw4)), false},
		{"ARP from foreign MAC", ethFrame(broadcastMAC, otherMAC, 0x0806, arpRequest(a.PodMAC, a.IP4, gw4)), false},
		{"DHCP discover", ethFrame(broadcastMAC, a.PodMAC, 0x0800,
			ipv4UDP(netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68, 67)), true},
		{"UDP from 0.0.0.0, not DHCP", ethFrame(broadcastMAC, a.PodMAC, 0x0800,
			ipv4UDP(netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), 1234, 67)), false},
		{"UDP from own IP", ethFrame(a.HostMAC, a.PodMAC, 0x0800, ipv4UDP(a.IP4, b.IP4, 1234, 9)), true},
		{"UDP from foreign IP", ethFrame(a.HostMAC, a.PodMAC, 0x0800, ipv4UDP(spoof4, b.IP4, 1234, 9)), false},
		{"ND solicitation from link-local", ethFrame(nsMAC, a.PodMAC, 0x86dd, ipv6ICMP(llA, nsGroup, 135)), true},
		{"DAD from ::", ethFrame(nsMAC, a.PodMAC, 0x86dd, ipv6ICMP(netip.IPv6Unspecified(), nsGroup, 135)), true},
		{"ND from link-local, foreign MAC", ethFrame(nsMAC, otherMAC, 0x86dd, ipv6ICMP(llA, nsGroup, 135)), false},
		{"IPv6 from foreign global", ethFrame(nsMAC, a.PodMAC, 0x86dd, ipv6ICMP(spoof6, nsGroup, 135)), false},
		{"VLAN-tagged", ethFrame(a.HostMAC, a.PodMAC, 0x8100, append([]byte{0, 5, 0x08, 0x00}, ipv4UDP(a.IP4, b.IP4, 1, 9)...)), false},
		{"runt", ethFrame(a.HostMAC, a.PodMAC, 0x0800, []byte{0x45}), false},
	}
	t.Run("raw frames", func(t *testing.T) {
		// Each frame is followed by a marker the program always drops;
		// the host end receives them in order (one NAPI queue), so once
		// the marker is counted the frame was too: no settling time.
		marker := frames[len(frames)-2].frame // VLAN-tagged
		for _, f := range frames {
			before := tp.counters(d, a)
			sendRaw(t, a, f.frame)
			sendRaw(t, a, marker)
			want := uint64(1) // the marker
			if !f.pass {
				want++
			}
			var after Counters
			harness.WaitFor(t, f.name+" and the marker to be counted", 5*time.Second, func() bool {
				after = tp.counters(d, a)
				return after.DropPackets >= before.DropPackets+want
			})
			if dropped := after.DropPackets - before.DropPackets; dropped != want {
				t.Errorf("%s: %d drops with the marker, want %d (counters %+v -> %+v)", f.name, dropped, want, before, after)
			}
		}
	})

	t.Run("raw frames, anti-spoofing off", func(t *testing.T) {
		tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, Features{Hook: hook, Redirect: true})) })
		defer tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, allOn)) })
		before := tp.counters(d, a)
		for _, f := range frames {
			sendRaw(t, a, f.frame)
		}
		harness.WaitFor(t, "frames to be counted", 5*time.Second, func() bool {
			after := tp.counters(d, a)
			return after.PassPackets+after.RedirectPackets >= before.PassPackets+before.RedirectPackets+uint64(len(frames))
		})
		if after := tp.counters(d, a); after.DropPackets != before.DropPackets {
			t.Errorf("drops with anti-spoofing off: %+v -> %+v", before, after)
		}
	})
}

// mapKeys lists the keys of every map but warp_meta, for comparing states.
func mapKeys(t *testing.T, d *Datapath) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for name, m := range map[string]*ebpf.Map{
		"ifaces": d.objs.WarpIfaces, "ips": d.objs.WarpIps, "endpoints": d.objs.WarpEndpoints, "devmap": d.objs.WarpDevmap, "counters": d.objs.WarpCounters,
	} {
		var keys []string
		key := make([]byte, m.KeySize())
		it := m.Iterate()
		var val []byte
		if m.Type() == ebpf.PerCPUHash {
			var per [][]byte
			for it.Next(&key, &per) {
				keys = append(keys, fmt.Sprintf("%x", key))
			}
		} else {
			for it.Next(&key, &val) {
				keys = append(keys, fmt.Sprintf("%x", key))
			}
		}
		if err := it.Err(); err != nil {
			t.Fatalf("iterate %s: %v", name, err)
		}
		slices.Sort(keys)
		out[name] = keys
	}
	return out
}

func totalKeys(s map[string][]string) int {
	n := 0
	for _, k := range s {
		n += len(k)
	}
	return n
}

func TestEndpointLifecycle(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	empty := mapKeys(t, d)
	if totalKeys(empty) != 0 {
		t.Fatalf("fresh maps not empty: %v", empty)
	}

	tp.register(d, a, 0xa, allOn)
	s := mapKeys(t, d)
	for name, n := range map[string]int{"ifaces": 1, "ips": 2, "endpoints": 1, "devmap": 1, "counters": 1} {
		if len(s[name]) != n {
			t.Errorf("after AddEndpoint, %s has %d entries, want %d: %v", name, len(s[name]), n, s)
		}
	}
	ep, ok, err := d.Endpoint(0xa)
	if err != nil || !ok {
		t.Fatalf("Endpoint: %v %v", ok, err)
	}
	want := endpoint(a, 0xa, allOn)
	if ep.HostIfIndex != want.HostIfIndex || ep.PodMAC.String() != want.PodMAC.String() ||
		ep.HostMAC.String() != want.HostMAC.String() || !slices.Equal(ep.IPs, want.IPs) || ep.Features != want.Features {
		t.Errorf("Endpoint = %+v, want %+v", ep, want)
	}

	t.Run("AddEndpoint leaves nothing on failure", func(t *testing.T) {
		before := mapKeys(t, d)
		bEp := endpoint(b, 0xb, allOn)
		cases := map[string]Endpoint{}
		e := bEp
		e.PodMAC = e.PodMAC[:5]
		cases["short MAC"] = e
		e = bEp
		e.IPs = nil
		cases["no IPs"] = e
		e = bEp
		e.IPs = []netip.Addr{b.IP4, a.IP6} // a's address
		cases["IP of another owner"] = e
		e = bEp
		e.HostIfIndex = a.HostIdx
		cases["ifindex of another owner"] = e
		// Fails half-way: the DEVMAP_HASH refuses an ifindex with no
		// device, after the record and the counters were written.
		e = bEp
		e.HostIfIndex = 99999
		cases["no such device"] = e
		for name, ep := range cases {
			var err error
			tp.InNode(func() error { err = d.AddEndpoint(ep); return nil })
			if err == nil {
				t.Errorf("%s: AddEndpoint succeeded", name)
				continue
			}
			t.Logf("%s: %v", name, err)
			if after := mapKeys(t, d); !mapsEqual(before, after) {
				t.Errorf("%s: maps changed:\nbefore %v\nafter  %v", name, before, after)
			}
		}
		var ce *ConflictError
		tp.InNode(func() error { err = d.AddEndpoint(cases["IP of another owner"]); return nil })
		if !errors.As(err, &ce) || ce.Owner != 0xa {
			t.Errorf("conflict error: %v", err)
		}
	})

	t.Run("update drops stale addresses", func(t *testing.T) {
		ep := endpoint(a, 0xa, Features{AntiSpoof: true})
		ep.IPs = []netip.Addr{a.IP4}
		tp.InNode(func() error { return d.AddEndpoint(ep) })
		s := mapKeys(t, d)
		if len(s["ips"]) != 1 || len(s["devmap"]) != 0 || len(s["ifaces"]) != 1 {
			t.Errorf("after update to one IP, redirect off: %v", s)
		}
		if got, _, _ := d.Endpoint(0xa); !slices.Equal(got.IPs, ep.IPs) {
			t.Errorf("Endpoint after update: %v", got.IPs)
		}
		// Moving to another interface takes everything along.
		moved := endpoint(a, 0xa, allOn)
		moved.HostIfIndex = b.HostIdx
		tp.InNode(func() error { return d.AddEndpoint(moved) })
		s = mapKeys(t, d)
		if len(s["ifaces"]) != 1 || len(s["devmap"]) != 1 || len(s["counters"]) != 1 || len(s["ips"]) != 2 {
			t.Errorf("after moving to another ifindex: %v", s)
		}
		if _, err := d.Counters(a.HostIdx); !errors.Is(err, ErrNotRegistered) {
			t.Errorf("old interface still has counters: %v", err)
		}
		tp.InNode(func() error { return d.AddEndpoint(endpoint(a, 0xa, allOn)) })
		if _, err := d.Counters(b.HostIdx); !errors.Is(err, ErrNotRegistered) {
			t.Errorf("interface moved away from still has counters: %v", err)
		}
	})

	tp.register(d, b, 0xb, allOn)
	eps, err := d.Endpoints()
	if err != nil || len(eps) != 2 {
		t.Fatalf("Endpoints: %v %v", eps, err)
	}

	t.Run("RemoveEndpoint", func(t *testing.T) {
		tp.InNode(func() error { return d.RemoveEndpoint(0xa) })
		s := mapKeys(t, d)
		for name, n := range map[string]int{"ifaces": 1, "ips": 2, "endpoints": 1, "devmap": 1, "counters": 1} {
			if len(s[name]) != n {
				t.Errorf("after RemoveEndpoint(a), %s has %d entries, want %d (b's): %v", name, len(s[name]), n, s)
			}
		}
		if _, ok, err := d.Endpoint(0xa); ok || err != nil {
			t.Errorf("Endpoint(a) after removal: %v %v", ok, err)
		}
		if _, err := d.Counters(a.HostIdx); !errors.Is(err, ErrNotRegistered) {
			t.Errorf("Counters(a) after removal: %v", err)
		}
		// Repeatable, and tolerant of owners never seen.
		tp.InNode(func() error { return d.RemoveEndpoint(0xa) })
		tp.InNode(func() error { return d.RemoveEndpoint(0x1234) })
		// A's traffic still flows, through the stack and unchecked.
		topo.MustPing(t, a, b.IP4)
		tp.InNode(func() error { return d.RemoveEndpoint(0xb) })
		if s := mapKeys(t, d); totalKeys(s) != 0 {
			t.Errorf("maps not empty after removing everything: %v", s)
		}
	})

	t.Run("RemoveEndpoint after the link is gone", func(t *testing.T) {
		tp.register(d, a, 0xa, allOn)
		tp.Node.Exec(t, "ip", "link", "del", a.HostName)
		tp.InNode(func() error { return d.RemoveEndpoint(0xa) })
		if s := mapKeys(t, d); totalKeys(s) != 0 {
			t.Errorf("maps not empty: %v", s)
		}
	})
}

func mapsEqual(a, b map[string][]string) bool {
	for k := range a {
		if !slices.Equal(a[k], b[k]) {
			return false
		}
	}
	return len(a) == len(b)
}

func TestAttachDetach(t *testing.T) {
	tp := newTopo(t, 1)
	d := tp.open()
	p := tp.Pods[0]
	attached := func(ns *harness.NetNS, idx int, pod bool) bool {
		t.Helper()
		var ok bool
		if err := ns.Do(func() (err error) { ok, err = d.Attached(idx, pod); return err }); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if attached(tp.Node, p.HostIdx, false) || attached(p.NS, p.PodIdx, true) {
		t.Fatal("attached before AttachHost/AttachPod")
	}
	tp.register(d, p, 0xa, allOn)
	if !attached(tp.Node, p.HostIdx, false) || !attached(p.NS, p.PodIdx, true) {
		t.Fatal("not attached after AttachHost/AttachPod")
	}
	if attached(tp.Node, p.HostIdx, true) || attached(p.NS, p.PodIdx, false) {
		t.Fatal("host and pod programs confused")
	}
	// Idempotent.
	tp.InNode(func() error { return d.AttachHost(p.HostIdx) })
	// iproute2 shows native mode as "xdp" (generic would be "xdpgeneric").
	if out := tp.Node.Exec(t, "ip", "link", "show", p.HostName); !strings.Contains(out, " xdp ") {
		t.Errorf("not attached in native mode:\n%s", out)
	}
	// Another Open (a second plugin process) recognises the attachment.
	d2 := tp.open()
	if err := tp.Node.Do(func() error {
		ok, err := d2.Attached(p.HostIdx, false)
		if err == nil && !ok {
			err = errors.New("second Datapath does not see the attachment")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tp.InNode(func() error { return Detach(p.HostIdx) })
	if attached(tp.Node, p.HostIdx, false) {
		t.Fatal("still attached after Detach")
	}
	tp.InNode(func() error { return Detach(p.HostIdx) }) // nothing attached
	tp.InNode(func() error { return Detach(1 << 30) })   // no such device
	if err := p.NS.Do(func() error { return Detach(p.PodIdx) }); err != nil {
		t.Fatal(err)
	}
	if attached(p.NS, p.PodIdx, true) {
		t.Fatal("pod end still attached after Detach")
	}
}

// --- concurrency and upgrades ---

const helperEnv = "WARP_BPF_TEST_HELPER"

// TestMain doubles as the body of the helper processes some tests start
// (the test binary re-executed with helperEnv set to what to do).
func TestMain(m *testing.M) {
	if what := os.Getenv(helperEnv); what != "" {
		os.Exit(helperProcess(what))
	}
	os.Exit(m.Run())
}

func helperProcess(what string) int {
	switch what {
	case "open":
		d, err := Open(os.Getenv("WARP_BPF_TEST_PINDIR"))
		if err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
		defer d.Close()
		info, _ := d.objs.WarpIfaces.Info()
		id, _ := info.ID()
		pid, _ := pinset.ProgID(d.objs.WarpXdpHost)
		fmt.Printf("IDS %d %d\n", id, pid)
	case "mount":
		// In a private mount namespace: make /sys/fs/bpf empty (it may
		// hold the machine's bpffs, which an unmount here does not
		// affect), then let Open mount it, twice.
		if err := topo.UnmountAll("/sys/fs/bpf"); err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
		for i := range 2 {
			d, err := Open(pinset.DefaultRoot)
			if err != nil {
				fmt.Println("ERROR", i, err)
				return 1
			}
			d.Close()
		}
		fmt.Printf("MOUNTS %d\n", topo.CountMounts("/sys/fs/bpf"))
	default:
		fmt.Println("ERROR unknown helper", what)
		return 1
	}
	return 0
}

func TestOpenConcurrent(t *testing.T) {
	e := harness.New(t)
	pinDir := topo.PinDir(e)
	node := e.NetNS("node")

	const goroutines, procs = 8, 4
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ids  = map[string]bool{}
		errs []error
		dps  []*Datapath
	)
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d *Datapath
			err := node.Do(func() (err error) { d, err = Open(pinDir); return err })
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			dps = append(dps, d)
			info, _ := d.objs.WarpIfaces.Info()
			id, _ := info.ID()
			pid, _ := pinset.ProgID(d.objs.WarpXdpHost)
			ids[fmt.Sprintf("%d %d", id, pid)] = true
		}()
	}
	for range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			out, err := node.Run(ctx, "env", helperEnv+"=open", "WARP_BPF_TEST_PINDIR="+pinDir,
				os.Args[0], "-test.run=^$")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			for _, line := range strings.Split(out, "\n") {
				if s, ok := strings.CutPrefix(line, "IDS "); ok {
					ids[s] = true
				}
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, d := range dps {
			d.Close()
		}
	})
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	if len(ids) != 1 {
		t.Fatalf("concurrent Opens ended with different maps/programs: %v", ids)
	}
	for dir, want := range map[string][]string{
		pinDir + "/maps":  {"warp_counters", "warp_devmap", "warp_endpoints", "warp_ifaces", "warp_ips", "warp_meta", "warp_neigh_dsts"},
		pinDir + "/progs": {tcProgName, hostProgName, podProgName},
	} {
		if names := harness.PinNames(t, dir); !slices.Equal(names, want) {
			t.Errorf("%s holds %v, want %v", dir, names, want)
		}
	}

	// An endpoint added through one handle is visible through another, and
	// through a handle opened later.
	veth := "warp0000000001"
	node.Exec(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "peer0")
	var idx int
	if err := node.Do(func() error {
		idx = linkIndexHere(veth)
		return dps[0].AddEndpoint(Endpoint{
			Owner: 42, HostIfIndex: idx,
			PodMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, HostMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
			IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}, Features: allOn,
		})
	}); err != nil {
		t.Fatal(err)
	}
	var later *Datapath
	if err := node.Do(func() (err error) { later, err = Open(pinDir); return err }); err != nil {
		t.Fatal(err)
	}
	defer later.Close()
	for i, d := range []*Datapath{dps[len(dps)-1], later} {
		ep, ok, err := d.Endpoint(42)
		if err != nil || !ok || ep.HostIfIndex != idx {
			t.Errorf("handle %d: Endpoint(42) = %+v %v %v", i, ep, ok, err)
		}
	}
}

func linkIndexHere(name string) int {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return -1
	}
	return ifi.Index
}

// TestOpenMountsBPFFS runs Open(pinset.DefaultRoot) in a private mount namespace
// in which /sys/fs/bpf is empty: Open must mount bpffs there, once.
func TestOpenMountsBPFFS(t *testing.T) {
	e := harness.New(t)
	harness.RequireTools(t, "unshare", "env")
	node := e.NetNS("node")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := node.Run(ctx, "unshare", "--mount", "--propagation", "private", "--",
		"env", helperEnv+"=mount", os.Args[0], "-test.run=^$")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "MOUNTS 1\n") {
		t.Fatalf("want exactly one bpffs mount at /sys/fs/bpf:\n%s", out)
	}
}

// oldHostProgram stands in for the host program of an older build: it
// passes everything and counts nothing, but is named like ours and uses
// warp_ifaces, as an older build's program would.
func oldHostProgram(t *testing.T, ifaces *ebpf.Map) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: hostProgName,
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			// Reference the map, so that the program holds it like a real one.
			asm.LoadMapPtr(asm.R1, ifaces.FD()),
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "GPL",
		Flags:   1 << 5, // BPF_F_XDP_HAS_FRAGS
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pingFlood starts a ping flood from ns to dst (count packets, 5 ms apart,
// each reply stamped with -D) and returns once the first reply is in (or
// ping ended), so that what the caller does next happens during the flood
// however slowly ping started; wait returns ping's output once it is done.
func pingFlood(t *testing.T, ctx context.Context, ns *harness.NetNS, dst string, count int) (wait func() (string, error)) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+ns.Path, "ping", "-n", "-D", "-c", strconv.Itoa(count), "-i", "0.005", "-W", "1", dst)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	replied := make(chan struct{})
	read := make(chan string, 1)
	go func() {
		var out strings.Builder
		var once sync.Once
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "bytes from") {
				once.Do(func() { close(replied) })
			}
		}
		read <- out.String()
	}()
	done := make(chan struct{})
	var out string
	var werr error
	go func() {
		out = <-read
		werr = cmd.Wait()
		close(done)
	}()
	select {
	case <-replied:
	case <-done:
	}
	return func() (string, error) {
		<-done
		return out, werr
	}
}

// replyTimes returns the times of the first and the last reply of ping -D.
func replyTimes(out string) (first, last time.Time) {
	for _, line := range strings.Split(out, "\n") {
		stamp, rest, ok := strings.Cut(strings.TrimPrefix(line, "["), "] ")
		if !ok || !strings.Contains(rest, "bytes from") {
			continue
		}
		sec, err := strconv.ParseFloat(stamp, 64)
		if err != nil {
			continue
		}
		at := time.Unix(0, int64(sec*1e9))
		if first.IsZero() {
			first = at
		}
		last = at
	}
	return first, last
}

func TestUpgrade(t *testing.T) {
	tp := newTopo(t, 2)
	d := tp.open()
	a, b := tp.Pods[0], tp.Pods[1]
	tp.register(d, a, 0xa, allOn)
	tp.register(d, b, 0xb, allOn)
	ifacesInfo, _ := d.objs.WarpIfaces.Info()
	ifacesID, _ := ifacesInfo.ID()

	// Turn the pins into those of an "old build": its program pinned and
	// attached to both host ends, another build ID in warp_meta.
	old := oldHostProgram(t, d.objs.WarpIfaces)
	defer old.Close()
	oldID, _ := pinset.ProgID(old)
	if err := pinset.PinReplace(old, tp.PinDir+"/progs/"+hostProgName); err != nil {
		t.Fatal(err)
	}
	tp.InNode(func() error {
		for _, p := range tp.Pods {
			cur, err := xdpDrvProgID(p.HostIdx)
			if err != nil {
				return err
			}
			cp, err := ebpf.NewProgramFromID(ebpf.ProgramID(cur))
			if err != nil {
				return err
			}
			defer cp.Close()
			if err := setXDP(p.HostIdx, old.FD(), unix.XDP_FLAGS_DRV_MODE|unix.XDP_FLAGS_REPLACE, cp.FD()); err != nil {
				return err
			}
		}
		return nil
	})
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
	topo.MustPing(t, a, b.IP4) // through the old program, which redirects nothing

	// Traffic keeps flowing while the new build's Open upgrades: a ping
	// flood (bounded: 300 packets, 5 ms apart) across the swap loses nothing.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	wait := pingFlood(t, ctx, a.NS, b.IP4.String(), 300)
	var nd *Datapath
	tp.InNode(func() (err error) { nd, err = Open(tp.PinDir); return err })
	upgraded := time.Now()
	defer nd.Close()
	out, err := wait()
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Errorf("ping across the upgrade lost packets: %v\n%s", err, out)
	}
	// -D stamps each reply: the flood must have begun before the upgrade
	// ended and gone on after it.
	if first, last := replyTimes(out); !first.Before(upgraded) || !last.After(upgraded) {
		t.Errorf("replies from %v to %v did not span the upgrade (done at %v)", first, last, upgraded)
	}

	// The new program runs everywhere, is pinned, and the build recorded.
	newID, _ := pinset.ProgID(nd.objs.WarpXdpHost)
	if newID == oldID {
		t.Fatal("Open kept the old program")
	}
	tp.InNode(func() error {
		for _, p := range tp.Pods {
			cur, err := xdpDrvProgID(p.HostIdx)
			if err != nil {
				return err
			}
			if cur != newID {
				return fmt.Errorf("%s runs program %d, want the new %d (old %d)", p.HostName, cur, newID, oldID)
			}
			if ok, err := nd.Attached(p.HostIdx, false); err != nil || !ok {
				return fmt.Errorf("Attached(%s) = %v %v", p.HostName, ok, err)
			}
		}
		return nil
	})
	// The pod ends still run the first no-op instance (an upgrade cannot
	// reach pod namespaces); it is the same code, so it still counts.
	for _, p := range tp.Pods {
		if err := p.NS.Do(func() error {
			ok, err := nd.Attached(p.PodIdx, true)
			if err == nil && !ok {
				err = fmt.Errorf("Attached(pod end of %s) = false after the upgrade", p.HostName)
			}
			return err
		}); err != nil {
			t.Error(err)
		}
	}
	if m, err := pinset.ReadMeta(nd.objs.WarpMeta); err != nil || m.Build != buildID() {
		t.Errorf("warp_meta after upgrade: %+v %v", m, err)
	}
	// The maps, and the pods' state in them, were kept.
	info, _ := nd.objs.WarpIfaces.Info()
	if id, _ := info.ID(); id != ifacesID {
		t.Errorf("warp_ifaces was recreated: id %d, was %d", id, ifacesID)
	}
	for _, owner := range []uint64{0xa, 0xb} {
		if _, ok, err := nd.Endpoint(owner); !ok || err != nil {
			t.Errorf("endpoint %#x lost in the upgrade: %v", owner, err)
		}
	}
	mid := tp.counters(nd, a)
	if mid.PassPackets < before.PassPackets {
		t.Errorf("counters lost: %+v -> %+v", before, mid)
	}
	topo.MustPing(t, a, b.IP4)
	topo.TCPEcho(t, a, b, b.IP4, 1<<20)
	if after := tp.counters(nd, a); after.RedirectPackets < mid.RedirectPackets+10 {
		t.Errorf("new program does not redirect: %+v -> %+v", mid, after)
	}
	// A plugin that opened before the upgrade attaches the new program.
	var fresh *Datapath
	tp.InNode(func() (err error) { fresh, err = Open(tp.PinDir); return err })
	defer fresh.Close()
	if fid, _ := pinset.ProgID(fresh.objs.WarpXdpHost); fid != newID {
		t.Errorf("Open after the upgrade returned program %d, want %d", fid, newID)
	}
}

// TestAttachAfterUpgrade: a handle opened before another process upgraded
// attaches the pinned (new) program, not the one it loaded.
func TestAttachAfterUpgrade(t *testing.T) {
	tp := newTopo(t, 1)
	p := tp.Pods[0]
	stale := tp.open()
	tp.InNode(func() error { return stale.AddEndpoint(endpoint(p, 1, allOn)) })
	// Replace the pinned program behind stale's back.
	spec, err := loadPod()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: tp.PinDir + "/maps"}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if err := pinset.PinReplace(coll.Programs[hostProgName], tp.PinDir+"/progs/"+hostProgName); err != nil {
		t.Fatal(err)
	}
	pinnedID, _ := pinset.ProgID(coll.Programs[hostProgName])
	tp.InNode(func() error { return stale.AttachHost(p.HostIdx) })
	tp.InNode(func() error {
		cur, err := xdpDrvProgID(p.HostIdx)
		if err == nil && cur != pinnedID {
			err = fmt.Errorf("attached program %d, want the pinned %d", cur, pinnedID)
		}
		return err
	})
}

func TestOpenIncompatible(t *testing.T) {
	e := harness.New(t)
	node := e.NetNS("node")
	open := func(pinDir string) error {
		return node.Do(func() error {
			d, err := Open(pinDir)
			d.Close()
			return err
		})
	}

	t.Run("map spec", func(t *testing.T) {
		pinDir := topo.PinDir(e)
		if err := os.MkdirAll(pinDir+"/maps", 0o700); err != nil {
			t.Fatal(err)
		}
		// warp_ips as an older build might have had it: IPv4-only keys.
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "warp_ips", Type: ebpf.Hash, KeySize: 4, ValueSize: 16,
			MaxEntries: 1024, Flags: 1 /* BPF_F_NO_PREALLOC */})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(pinDir + "/maps" + "/warp_ips"); err != nil {
			t.Fatal(err)
		}
		err = open(pinDir)
		if !errors.Is(err, pinset.ErrIncompatible) || !strings.Contains(err.Error(), "KeySize") ||
			!strings.Contains(err.Error(), "rm -r "+pinDir) {
			t.Fatalf("want pinset.ErrIncompatible naming the difference and the fix, got %v", err)
		}
		t.Logf("%v", err)
	})

	t.Run("layout version", func(t *testing.T) {
		pinDir := topo.PinDir(e)
		if err := open(pinDir); err != nil {
			t.Fatal(err)
		}
		meta, err := ebpf.LoadPinnedMap(pinDir+"/maps"+"/warp_meta", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer meta.Close()
		m, _ := pinset.ReadMeta(meta)
		m.Layout, m.Build = layoutVersion+1, [32]byte{}
		if err := meta.Put(uint32(0), &m); err != nil {
			t.Fatal(err)
		}
		if err := open(pinDir); !errors.Is(err, pinset.ErrIncompatible) || !strings.Contains(err.Error(), "layout version") {
			t.Fatalf("want pinset.ErrIncompatible about the layout, got %v", err)
		}
	})
}

// TestOpenLeavesNoDirs: a failed Open removes the directories it created,
// and OpenExisting creates nothing.
func TestOpenLeavesNoDirs(t *testing.T) {
	e := harness.New(t)
	plain := filepath.Join(e.TempDir, "plain")
	if _, err := Open(filepath.Join(plain, "warpnet")); err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Open on a plain directory: %v", err)
	}
	if _, err := os.Stat(plain); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Open left %s: %v", plain, err)
	}
	pinDir := topo.PinDir(e)
	if _, err := OpenExisting(pinDir); !errors.Is(err, pinset.ErrNotPinned) {
		t.Errorf("OpenExisting with nothing pinned: %v", err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenExisting created %s: %v", pinDir, err)
	}
}
