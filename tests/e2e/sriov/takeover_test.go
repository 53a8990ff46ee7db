package sriov_test

import (
	"slices"
	"testing"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/tests/harness"
)

// modes runs a test once with a netdev VF and once with a DPDK VF, each on
// a fresh node with VF 0 of that kind.
func modes(t *testing.T, vfs int, test func(t *testing.T, n *node, mode string)) {
	for _, mode := range []string{"netdev", "dpdk"} {
		t.Run(mode, func(t *testing.T) {
			var dpdk []int
			if mode == "dpdk" {
				dpdk = []int{0}
			}
			test(t, newNode(t, vfs, dpdk...), mode)
		})
	}
}

// Pod A gets the VF on VLAN 7 (and every other setting changed), its
// namespace vanishes without a DEL, pod B takes the VF over asking only for
// VLAN 42, and only then does A's late DEL arrive. B must get the VF's own
// settings for every key it does not set (not A's), A's DEL must leave B's
// VF alone yet release A's address and cache (the stale-DEL guard), and
// after B's DEL the VF is as it was before A: a later pod that sets no VLAN
// does not land in A's VLAN.
func TestTakeoverKeepsPristineState(t *testing.T) {
	modes(t, 1, func(t *testing.T, n *node, _ string) {
		vf := n.pf.VFs[0]
		origLink, origPF := n.hostVF(0), n.pfState(0)
		podA, podB, podC := n.env.NetNS("a"), n.env.NetNS("b"), n.env.NetNS("c")

		confA := n.conf(map[string]any{"deviceID": vf.PCI, "vlan": 7, "vlanQoS": 5, "vlanProto": "802.1ad", "mac": "0a:00:00:00:00:0a",
			"trust": "on", "spoofchk": "off", "link_state": "disable", "min_tx_rate": 10, "max_tx_rate": 100, "mtu": 1400})
		resA := n.add("a", podA, confA)
		if got := n.pfState(0); got.VLAN != 7 || !got.Trust || got.MAC != "0a:00:00:00:00:0a" {
			t.Fatalf("A's settings not applied: %+v", got)
		}
		n.gone(podA)

		resB := n.add("b", podB, n.conf(map[string]any{"deviceID": vf.PCI, "vlan": 42}))
		wantB := origPF
		wantB.VLAN, wantB.QoS, wantB.Proto = 42, 0, pf.ProtoDot1Q
		if got := n.pfState(0); got != wantB {
			t.Errorf("B took over with PF side %+v, want the VF's own settings plus VLAN 42: %+v", got, wantB)
		}
		if !vf.DPDK() {
			if got := link(t, podB, "net1"); got != inPod(origLink) {
				t.Errorf("B's netdev is %q, want the VF's own MAC and MTU: %q", got, inPod(origLink))
			}
		}

		// A's CHECK sees that the VF is no longer A's.
		if e := n.sriov.MustFail(t, n.call("CHECK", "a", podA, harness.WithPrevResult(t, confA, resA)), cnierr.CheckMismatch); !containsAll(e.Msg, vf.PCI, "no longer held") {
			t.Errorf("A's CHECK: %q", e.Msg)
		}

		// A's late DEL reaches the guard: A's cache is still there, the
		// VF record names B.
		if !exists(n.cacheFile("a")) || !exists(n.vfFile(0)) {
			t.Fatal("A's cache or the VF record is missing before A's DEL: the guard would not be reached")
		}
		n.sriov.MustSucceed(t, n.call("DEL", "a", podA, confA))
		if got := n.pfState(0); got != wantB {
			t.Errorf("A's late DEL changed B's VF: %+v, want %+v", got, wantB)
		}
		if !vf.DPDK() {
			if got := link(t, podB, "net1"); got != inPod(origLink) {
				t.Errorf("A's late DEL moved B's VF: in B %q", got)
			}
		}
		if exists(n.cacheFile("a")) {
			t.Error("A's DEL left A's cache")
		}
		if got, want := n.reserved(), addrs(resB); !slices.Equal(got, want) {
			t.Errorf("after A's DEL reserved %v, want only B's %v (A had %v)", got, want, addrs(resA))
		}

		n.sriov.MustSucceed(t, n.call("DEL", "b", podB, n.conf(nil)))
		n.assertRestored(0, origLink, origPF)

		// A pod that sets nothing gets the VF as it was before A.
		n.add("c", podC, n.conf(map[string]any{"deviceID": vf.PCI}))
		if got := n.pfState(0); got != origPF {
			t.Errorf("a pod without settings got PF side %+v, want the VF's own %+v", got, origPF)
		}
		n.sriov.MustSucceed(t, n.call("DEL", "c", podC, n.conf(nil)))
		n.assertRestored(0, origLink, origPF)
	})
}

// While A's namespace exists, B cannot take its VF (code 11), and A's DEL
// then restores it.
func TestHeldVFIsNotTaken(t *testing.T) {
	n := newNode(t, 1)
	vf := n.pf.VFs[0].PCI
	origLink, origPF := n.hostVF(0), n.pfState(0)
	podA, podB := n.env.NetNS("a"), n.env.NetNS("b")
	n.add("a", podA, n.conf(map[string]any{"deviceID": vf, "vlan": 7}))
	e := n.sriov.MustFail(t, n.call("ADD", "b", podB, n.conf(map[string]any{"deviceID": vf, "vlan": 42})), 11)
	if !containsAll(e.Msg, vf, "held by container a") {
		t.Errorf("message %q does not say who holds %s", e.Msg, vf)
	}
	if got := n.pfState(0); got.VLAN != 7 {
		t.Errorf("the refused ADD changed A's VF: %+v", got)
	}
	if exists(n.cacheFile("b")) {
		t.Error("the refused ADD left a cache")
	}
	n.sriov.MustSucceed(t, n.call("DEL", "b", podB, n.conf(nil)))
	n.sriov.MustSucceed(t, n.call("DEL", "a", podA, n.conf(nil)))
	n.assertRestored(0, origLink, origPF)
}
