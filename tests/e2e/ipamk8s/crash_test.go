package ipamk8s_test

import (
	"fmt"
	"testing"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

// warp-ipam killed at every step of ADD and of DEL with the kubernetes
// store: the next DEL leaves no IPAllocation, no index entry and no queued
// release behind, and a later ADD gets an address as usual.
func TestCrashPoints(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	fault := n.c.env.FaultPlugin(t, "warp-ipam").In(n.ns)
	c.pool("p", kube.IPPoolSpec{Subnet: "10.84.0.0/24"})
	c.pool("p6", kube.IPPoolSpec{Subnet: "fd00:84::/64"})
	conf := n.conf(map[string]any{"pools": []string{"p", "p6"}})
	p := c.createPod("default", "p", "node1", nil)

	clean := func(when string) {
		t.Helper()
		if left := c.addresses(); len(left) != 0 {
			t.Fatalf("%s: allocated %v", when, left)
		}
		if idx := n.index(); len(idx) != 0 {
			t.Fatalf("%s: index %v", when, idx)
		}
		if j := n.journal(); len(j) != 0 {
			t.Fatalf("%s: journal %v", when, j)
		}
	}
	addPoints := fault.FaultPoints(t, n.call("ADD", "probe", "net1", p, conf))
	delPoints := fault.FaultPoints(t, n.call("DEL", "probe", "net1", p, conf))
	clean("after the probing ADD and DEL")
	t.Logf("ADD passes %v; DEL passes %v", addPoints, delPoints)
	if len(addPoints) < 4 || len(delPoints) < 1 {
		t.Fatalf("too few crash points: ADD %v, DEL %v", addPoints, delPoints)
	}
	for i, point := range addPoints {
		id := fmt.Sprintf("add%d", i)
		fault.CrashAt(t, point, n.call("ADD", id, "net1", p, conf))
		n.del(id, "net1", p, conf)
		clean("ADD killed at " + point + ", then DEL")
	}
	for i, point := range delPoints {
		id := fmt.Sprintf("del%d", i)
		n.add(id, "net1", p, conf)
		fault.CrashAt(t, point, n.call("DEL", id, "net1", p, conf))
		n.del(id, "net1", p, conf)
		clean("DEL killed at " + point + ", then DEL")
	}
	n.add("after", "net1", p, conf)
	_ = harness.Call{}
}
