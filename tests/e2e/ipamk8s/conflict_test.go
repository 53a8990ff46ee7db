package ipamk8s_test

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/ipam/kube"
)

// Conflict detection works as with the local store: an address another
// host on the pod's segment answers for is released (its IPAllocation
// deleted) and the next free one is used; a fixed one fails naming the
// other host's MAC, and leaves nothing held.
func TestConflictDetection(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	env := c.env
	pod, seg, rogue := env.NetNS("probe-pod"), env.NetNS("segment"), env.NetNS("rogue")
	env.Veth(pod, "eth0", seg, "vpod")
	env.Veth(rogue, "eth0", seg, "vrogue")
	env.Bridge(seg, "br0", "vpod", "vrogue")
	env.Addr(rogue, "eth0", "10.89.0.2/24")
	rogueMAC := strings.Fields(strings.SplitN(rogue.Exec(t, "ip", "-o", "link", "show", "eth0"), "link/ether", 2)[1])[0]
	// Two addresses: whichever the node tries first, the rogue's is skipped.
	c.pool("probed", kube.IPPoolSpec{Subnet: "10.89.0.0/24", Ranges: []kube.PoolRange{{Start: "10.89.0.2", End: "10.89.0.3"}}})
	conf := n.conf(map[string]any{"pool": "probed", "detectConflicts": true})
	p := c.createPod("default", "p", "node1", nil)
	call := n.call("ADD", "c1", "eth0", p, conf)
	call.Netns = pod.Path
	if got := ips(harnessParse(t, n.ipam.MustSucceed(t, call))); got[0] != "10.89.0.3" {
		t.Fatalf("got %v, want 10.89.0.3 (10.89.0.2 is the rogue's)", got)
	}
	if got := c.addresses(); len(got) != 1 || got[0] != "10.89.0.3" {
		t.Fatalf("allocations %v, want only 10.89.0.3", got)
	}
	fixed := c.createPod("default", "fixed", "node1", map[string]string{kube.AnnotationIP: "10.89.0.2"})
	call = n.call("ADD", "c2", "eth0", fixed, conf)
	call.Netns = pod.Path
	e := n.ipam.MustFail(t, call, types.ErrTryAgainLater)
	if !contains(e.Msg, "10.89.0.2", rogueMAC) {
		t.Errorf("message %q does not name 10.89.0.2 and the rogue's MAC %s", e.Msg, rogueMAC)
	}
	if got := c.addresses(); len(got) != 1 {
		t.Fatalf("the failed fixed ADD left %v", got)
	}
}
