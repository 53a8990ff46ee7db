package ipamk8s_test

import (
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/ipam/kube"
)

// Fixed addresses: asked for by the pod's annotation or by the runtime
// (CNI_ARGS IP); one held by another pod is "try again later" naming it.
func TestFixedAddresses(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	n1, n2 := c.nodes["node1"], c.nodes["node2"]
	c.pool("fixed", kube.IPPoolSpec{Subnet: "10.73.0.0/24", Exclude: []string{"10.73.0.9"}})
	conf := map[string]any{"pool": "fixed"}
	a := c.createPod("default", "a", "node1", map[string]string{kube.AnnotationIP: "10.73.0.5"})
	if got := ips(n1.add("ca", "net1", a, n1.conf(conf))); got[0] != "10.73.0.5" {
		t.Fatalf("annotated pod got %v, want 10.73.0.5", got)
	}
	b := c.createPod("default", "b", "node2", nil)
	call := n2.call("ADD", "cb", "net1", b, n2.conf(conf))
	call.Args += ";IP=10.73.0.5"
	e := n2.ipam.MustFail(t, call, types.ErrTryAgainLater)
	if !contains(e.Msg, "10.73.0.5", "pod default/a", "container ca", "node node1") {
		t.Errorf("message %q does not name the holder", e.Msg)
	}
	call.Args = podArgs(b) + ";IP=10.73.0.9"
	e = n2.ipam.MustFail(t, call, types.ErrInvalidNetworkConfig)
	if !contains(e.Msg, "10.73.0.9", "exclusions of IPPool fixed") {
		t.Errorf("message %q does not say the address is excluded", e.Msg)
	}
	call.Args = podArgs(b) + ";IP=10.73.0.6"
	if got := ips(harnessParse(t, n2.ipam.MustSucceed(t, call))); got[0] != "10.73.0.6" {
		t.Fatalf("CNI_ARGS IP= got %v, want 10.73.0.6", got)
	}
	// ADD twice for one attachment is refused (a runtime must DEL first).
	n1.ipam.MustFail(t, n1.call("ADD", "ca", "net1", a, n1.conf(conf)), 101)
	if got := c.addresses(); len(got) != 2 {
		t.Fatalf("allocated %v, want 10.73.0.5 and 10.73.0.6 only", got)
	}
}

// A StatefulSet pod keeps its address across sandboxes, deletion and
// recreation (new UID) and a move to another node; the old node's late DEL
// of the previous sandbox never frees it; a plain pod recreated under the
// same name gets a fresh address and the old sandbox's DEL frees only the
// old one.
func TestStatefulSetKeepsItsAddressOnAnyNode(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	n1, n2 := c.nodes["node1"], c.nodes["node2"]
	c.pool("sts", kube.IPPoolSpec{Subnet: "10.74.0.0/24"})
	c.pool("sts6", kube.IPPoolSpec{Subnet: "fd00:74::/64"})
	conf := map[string]any{"pools": []string{"sts", "sts6"}}
	owner := c.statefulSet("default", "db", 2)

	p := c.createPod("default", "db-1", "node1", nil, owner)
	first := ips(n1.add("sandbox-1", "net1", p, n1.conf(conf)))
	o := c.allocations()[first[0]]
	if o.Spec.StatefulSet == nil || o.Spec.StatefulSet.Name != "db" || o.Spec.StatefulSet.Ordinal != 1 {
		t.Fatalf("IPAllocation of db-1 is not pinned to StatefulSet db ordinal 1: %s", jsonString(o))
	}

	// A new sandbox on the same node (container restart): DEL detaches, ADD
	// takes the address back.
	n1.del("sandbox-1", "net1", p, n1.conf(conf))
	if o := c.allocations()[first[0]]; o.Spec.Attachment != nil {
		t.Fatalf("after DEL the pinned address should wait for its pod, detached: %s", jsonString(o))
	}
	if got := ips(n1.add("sandbox-2", "net1", p, n1.conf(conf))); !equal(got, first) {
		t.Fatalf("second sandbox got %v, want the pinned %v", got, first)
	}

	// The node dies: its sandbox is never DELeted, the pod is deleted and
	// recreated on node2 with a new UID; it gets the same addresses.
	c.deletePod(p)
	p2 := c.createPod("default", "db-1", "node2", nil, owner)
	if p2.UID == p.UID {
		t.Fatal("the recreated pod kept its UID")
	}
	if got := ips(n2.add("sandbox-3", "net1", p2, n2.conf(conf))); !equal(got, first) {
		t.Fatalf("db-1 recreated on node2 got %v, want the pinned %v", got, first)
	}
	o = c.allocations()[first[0]]
	if o.Spec.Attachment.Node != "node2" || o.Spec.Attachment.ContainerID != "sandbox-3" || o.Spec.Pod.UID != string(p2.UID) {
		t.Fatalf("the pinned address did not move to node2's sandbox of the new pod: %s", jsonString(o))
	}
	// node1 comes back and finally DELs its old sandbox: nothing changes.
	n1.del("sandbox-2", "net1", p, n1.conf(conf))
	if got := c.allocations(); got[first[0]].Spec.Attachment == nil || got[first[0]].Spec.Attachment.ContainerID != "sandbox-3" || len(got) != 2 {
		t.Fatalf("the old node's late DEL changed the pinned addresses: %s", jsonString(got))
	}
	// Another ordinal gets other addresses.
	q := c.createPod("default", "db-0", "node1", nil, owner)
	other := ips(n1.add("sandbox-q", "net1", q, n1.conf(conf)))
	if other[0] == first[0] || other[1] == first[1] {
		t.Fatalf("db-0 got %v, db-1 holds %v", other, first)
	}

	// A plain pod recreated under the same name is a new pod: a fresh
	// address; the old sandbox's late DEL frees only the old one.
	web := c.createPod("default", "web", "node1", nil)
	old := ips(n1.add("web-old", "net1", web, n1.conf(conf)))
	c.deletePod(web)
	web2 := c.createPod("default", "web", "node1", nil)
	fresh := ips(n1.add("web-new", "net1", web2, n1.conf(conf)))
	if fresh[0] == old[0] {
		t.Fatalf("the recreated plain pod reused %s while the old sandbox still holds it", old[0])
	}
	n1.del("web-old", "net1", web, n1.conf(conf))
	got := c.allocations()
	if _, ok := got[old[0]]; ok {
		t.Errorf("the old sandbox's DEL did not free %s", old[0])
	}
	if o := got[fresh[0]]; o.Spec.Attachment == nil || o.Spec.Attachment.ContainerID != "web-new" {
		t.Errorf("the old sandbox's DEL touched the new pod's %s: %s", fresh[0], jsonString(o))
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
