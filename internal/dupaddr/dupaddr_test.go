//go:build linux

package dupaddr

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/tests/harness"
)

// End-to-end tests in real network namespaces. Every link and packet lives in
// namespaces created here; nothing touches the host's own namespace.

// requireRoot skips without root, except where WARP_E2E_REQUIRED=1 (CI): a
// silently skipped duplicate-detection test there would hide a regression.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("WARP_E2E_REQUIRED") == "1" {
		t.Fatal("end-to-end test needs root (creates network namespaces) and WARP_E2E_REQUIRED=1 forbids skipping")
	}
	t.Skip("end-to-end test needs root (creates network namespaces)")
}

// newNS makes a namespace through the test harness, so a killed run's
// leftovers are swept by the next one, and opens it for netlink work.
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	h := harness.New(t).NetNS("dupaddr")
	n, err := ns.GetNS(h.Path)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// topo is a pod namespace and a "rogue" namespace joined by a veth pair.
type topo struct {
	pod, rogue       ns.NetNS
	podIf, rogueIf   string
	podMAC, rogueMAC net.HardwareAddr
}

// newTopo builds the pair; the rogue end is always up, the pod end only if
// podUp (IPAM commonly runs before the main plugin brings the link up).
func newTopo(t *testing.T, podUp bool) *topo {
	t.Helper()
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(suffix[:])
	tp := &topo{pod: newNS(t), rogue: newNS(t), podIf: "dp" + id, rogueIf: "dr" + id}

	err := tp.rogue.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tp.rogueIf}, PeerName: tp.podIf}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		peer, err := netlink.LinkByName(tp.podIf)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(tp.pod.Fd())); err != nil {
			return fmt.Errorf("move peer to pod netns: %w", err)
		}
		l, err := netlink.LinkByName(tp.rogueIf)
		if err != nil {
			return err
		}
		tp.rogueMAC = l.Attrs().HardwareAddr
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatalf("rogue side: %v", err)
	}
	err = tp.pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tp.podIf)
		if err != nil {
			return err
		}
		tp.podMAC = l.Attrs().HardwareAddr
		if podUp {
			return netlink.LinkSetUp(l)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pod side: %v", err)
	}
	return tp
}

// claim configures addr on the rogue end. IPv6 addresses get IFA_F_NODAD so
// they are usable at once: a tentative address neither answers DAD probes
// nor survives them (our probe would make the rogue give it up instead).
func (tp *topo) claim(t *testing.T, prefix string) {
	t.Helper()
	p := netip.MustParsePrefix(prefix)
	err := tp.rogue.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tp.rogueIf)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		return netlink.AddrAdd(l, a)
	})
	if err != nil {
		t.Fatalf("rogue claims %s: %v", prefix, err)
	}
}

func (tp *topo) podLinkFlags(t *testing.T) net.Flags {
	t.Helper()
	var flags net.Flags
	err := tp.pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tp.podIf)
		if err != nil {
			return err
		}
		flags = l.Attrs().Flags
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return flags
}

// randomSubnets returns a random IPv4 /24 and IPv6 /64 base so concurrent
// runs never look alike in captures; the namespaces isolate them anyway.
func randomSubnets(t *testing.T) (v4 [3]byte, v6 [6]byte) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return [3]byte{10, b[0], b[1]}, [6]byte{0xfd, 0x00, b[2], b[3], b[4], 0x01}
}

func TestProbe(t *testing.T) {
	requireRoot(t)
	v4, v6 := randomSubnets(t)
	ip4 := func(last byte) string { return fmt.Sprintf("%d.%d.%d.%d", v4[0], v4[1], v4[2], last) }
	ip6 := func(last byte) string {
		return fmt.Sprintf("%02x%02x:%02x%02x:%02x%02x::%x", v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], last)
	}

	tests := []struct {
		name      string
		rogueHas  string // prefix configured on the rogue end
		probe     string // address probed from the pod end
		podDown   bool   // pod end starts administratively down
		opts      Options
		wantInUse bool
	}{
		{"ipv4 held by rogue", ip4(5) + "/24", ip4(5), false, Options{}, true},
		{"ipv4 free", ip4(5) + "/24", ip4(77), false, Options{}, false},
		{"ipv4 held, link starts down", ip4(5) + "/24", ip4(5), true, Options{}, true},
		{"ipv4 free, link starts down", ip4(5) + "/24", ip4(77), true, Options{}, false},
		// With a single scheduled probe nothing but the veth-peer wait
		// (and the extra settle probe) stands between a just-raised link
		// and a false "free": the rogue's answer used to die in its
		// not-yet-activated qdisc. A lost probe is never answered, so a
		// generous window (for a loaded machine) still tests that.
		{"ipv4 held, link starts down, one attempt", ip4(5) + "/24", ip4(5), true, Options{Timeout: time.Second, Attempts: 1}, true},
		{"ipv6 held by rogue", ip6(5) + "/64", ip6(5), false, Options{}, true},
		{"ipv6 free", ip6(5) + "/64", ip6(0x77), false, Options{}, false},
		{"ipv6 held, link starts down", ip6(5) + "/64", ip6(5), true, Options{}, true},
		{"ipv6 held, link starts down, one attempt", ip6(5) + "/64", ip6(5), true, Options{Timeout: time.Second, Attempts: 1}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTopo(t, !tc.podDown)
			tp.claim(t, tc.rogueHas)

			res, err := Probe(tp.pod.Path(), tp.podIf, netip.MustParseAddr(tc.probe), tc.opts)
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			if res.InUse != tc.wantInUse {
				t.Fatalf("InUse = %v, want %v (holder %v)", res.InUse, tc.wantInUse, res.Holder)
			}
			if tc.wantInUse && !bytes.Equal(res.Holder, tp.rogueMAC) {
				t.Errorf("Holder = %v, want rogue MAC %v (pod MAC %v)", res.Holder, tp.rogueMAC, tp.podMAC)
			}
			if !tc.wantInUse && res.Holder != nil {
				t.Errorf("Holder = %v for a free address", res.Holder)
			}
			up := tp.podLinkFlags(t)&net.FlagUp != 0
			if up == tc.podDown {
				t.Errorf("pod link up=%v after probe, want %v (state must be restored)", up, !tc.podDown)
			}
		})
	}
}

// A probe must never hang: with a 100ms timeout and nobody answering it has
// to come back long before 2s. The lower bound is not a timing assertion but
// a correctness one: "free" must not be reported before listening the full
// window.
func TestProbeRespectsTimeout(t *testing.T) {
	requireRoot(t)
	v4, v6 := randomSubnets(t)
	free4 := netip.AddrFrom4([4]byte{v4[0], v4[1], v4[2], 99})
	free6 := netip.AddrFrom16([16]byte{v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], 15: 0x99})
	for _, addr := range []netip.Addr{free4, free6} {
		t.Run(addr.String(), func(t *testing.T) {
			tp := newTopo(t, true)
			const timeout = 100 * time.Millisecond
			start := time.Now()
			res, err := Probe(tp.pod.Path(), tp.podIf, addr, Options{Timeout: timeout, Attempts: 3})
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			if res.InUse {
				t.Fatalf("free address reported in use by %v", res.Holder)
			}
			if elapsed < timeout {
				t.Errorf("returned after %v, before the %v listening window ended", elapsed, timeout)
			}
			if elapsed > 2*time.Second {
				t.Errorf("returned after %v with a %v timeout", elapsed, timeout)
			}
		})
	}
}

// A dual-stack pod's candidates are probed together: one result per address,
// in order, with the link prepared once and restored afterwards.
func TestProbeAll(t *testing.T) {
	requireRoot(t)
	v4, v6 := randomSubnets(t)
	held4 := netip.AddrFrom4([4]byte{v4[0], v4[1], v4[2], 5})
	free6 := netip.AddrFrom16([16]byte{v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], 15: 0x99})
	free4 := netip.AddrFrom4([4]byte{v4[0], v4[1], v4[2], 6})
	tp := newTopo(t, false)
	tp.claim(t, held4.String()+"/24")
	res, err := ProbeAll(tp.pod.Path(), tp.podIf, []netip.Addr{free6, held4, free4}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].InUse || !res[1].InUse || res[2].InUse {
		t.Fatalf("results = %+v; want [free, held, free]", res)
	}
	if !bytes.Equal(res[1].Holder, tp.rogueMAC) {
		t.Errorf("holder = %v, want %v", res[1].Holder, tp.rogueMAC)
	}
	if tp.podLinkFlags(t)&net.FlagUp != 0 {
		t.Error("pod link left up")
	}
}

func TestProbeErrors(t *testing.T) {
	requireRoot(t)

	t.Run("missing interface", func(t *testing.T) {
		pod := newNS(t)
		_, err := Probe(pod.Path(), "nosuch0", netip.MustParseAddr("10.9.9.9"), Options{})
		if !errors.Is(err, ErrNoInterface) {
			t.Fatalf("err = %v, want ErrNoInterface", err)
		}
	})

	t.Run("missing namespace", func(t *testing.T) {
		_, err := Probe("/var/run/netns/dupaddr-does-not-exist", "eth0", netip.MustParseAddr("10.9.9.9"), Options{})
		if err == nil || errors.Is(err, ErrNoInterface) {
			t.Fatalf("err = %v, want a namespace error", err)
		}
	})

	t.Run("loopback has no MAC", func(t *testing.T) {
		pod := newNS(t)
		// Down, to see that Probe does not bring up what it cannot probe.
		if err := pod.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.LinkSetDown(l)
		}); err != nil {
			t.Fatal(err)
		}
		_, err := Probe(pod.Path(), "lo", netip.MustParseAddr("10.9.9.9"), Options{})
		if err == nil || errors.Is(err, ErrNoInterface) {
			t.Fatalf("err = %v, want a no-MAC error", err)
		}
		t.Log(err)
		var flags net.Flags
		if err := pod.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName("lo")
			if err == nil {
				flags = l.Attrs().Flags
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if flags&net.FlagUp != 0 {
			t.Error("lo was brought up although it cannot be probed")
		}
	})

	// The rogue end is down, so the pod end never gets carrier: the probe
	// cannot prove anything and must say so within its budget, not hang.
	t.Run("no carrier", func(t *testing.T) {
		tp := newTopo(t, true)
		if err := tp.rogue.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(tp.rogueIf)
			if err != nil {
				return err
			}
			return netlink.LinkSetDown(l)
		}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := Probe(tp.pod.Path(), tp.podIf, netip.MustParseAddr("10.9.9.9"), Options{Timeout: 100 * time.Millisecond})
		if err == nil || errors.Is(err, ErrNoInterface) {
			t.Fatalf("err = %v, want a link-not-ready error", err)
		}
		t.Log(err)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v", d)
		}
	})
}

// A peer whose neighbour entries still hold the previous owner's MAC (the
// case of a VF handed to a new pod) switches to ours on the announcements.
func TestAnnounce(t *testing.T) {
	requireRoot(t)
	v4, v6 := randomSubnets(t)
	a4 := netip.AddrFrom4([4]byte{v4[0], v4[1], v4[2], 9})
	a6 := netip.AddrFrom16([16]byte{v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], 15: 9})
	tp := newTopo(t, true)
	tp.claim(t, netip.AddrFrom4([4]byte{v4[0], v4[1], v4[2], 1}).String()+"/24")
	tp.claim(t, netip.AddrFrom16([16]byte{v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], 15: 1}).String()+"/64")
	oldMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	neighOf := func(a netip.Addr) (mac net.HardwareAddr) {
		tp.rogue.Do(func(ns.NetNS) error {
			neighs, _ := netlink.NeighList(0, 0)
			for _, n := range neighs {
				if n.IP.Equal(net.IP(a.AsSlice())) {
					mac = n.HardwareAddr
				}
			}
			return nil
		})
		return mac
	}
	err := tp.rogue.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tp.rogueIf)
		if err != nil {
			return err
		}
		for _, a := range []netip.Addr{a4, a6} {
			fam := netlink.FAMILY_V4
			if a.Is6() {
				fam = netlink.FAMILY_V6
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, State: netlink.NUD_STALE,
				IP: net.IP(a.AsSlice()), HardwareAddr: oldMAC}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := Announce(tp.pod.Path(), tp.podIf, []netip.Addr{a4, a6}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{a4, a6} {
		deadline := time.Now().Add(2 * time.Second)
		for !bytes.Equal(neighOf(a), tp.podMAC) {
			if time.Now().After(deadline) {
				t.Fatalf("peer still maps %s to %v, want %v", a, neighOf(a), tp.podMAC)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
