package ipamk8s_test

import (
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/ipam/kube"
)

// Which pools a pod draws from: the configuration's candidates grouped by
// family (one address per family, dual-stack), node and namespace
// selectors, and the pod's annotations overriding the configuration, per
// interface for Multus secondary networks.
func TestPoolSelection(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	n1, n2 := c.nodes["node1"], c.nodes["node2"]
	c.createNode("labelled", nil) // unused; selectors read node1/node2's labels below
	// Rack-local pools: each serves one node.
	c.pool("rack1", kube.IPPoolSpec{Subnet: "10.70.1.0/24", NodeSelector: &kube.LabelSelector{MatchLabels: map[string]string{"rack": "r1"}}})
	c.pool("rack2", kube.IPPoolSpec{Subnet: "10.70.2.0/24", NodeSelector: &kube.LabelSelector{
		MatchExpressions: []kube.LabelSelectorRequirement{{Key: "rack", Operator: "In", Values: []string{"r2", "r3"}}}}})
	c.pool("v6", kube.IPPoolSpec{Subnet: "fd00:70::/64"})
	c.pool("tenant-a", kube.IPPoolSpec{Subnet: "10.71.0.0/24", NamespaceSelector: &kube.LabelSelector{MatchLabels: map[string]string{"tenant": "a"}}})
	c.pool("trading", kube.IPPoolSpec{Subnet: "10.72.0.0/24"})
	labelNode(t, c, "node1", "rack", "r1")
	labelNode(t, c, "node2", "rack", "r2")
	c.createNamespace("team-a", map[string]string{"tenant": "a"})
	c.createNamespace("team-b", map[string]string{"tenant": "b"})

	// One configuration on every node: each node's pods get their rack's
	// pool, and an IPv6 address from the shared pool.
	conf := map[string]any{"pools": []string{"rack1", "rack2", "v6"}}
	p1 := c.createPod("default", "p1", "node1", nil)
	p2 := c.createPod("default", "p2", "node2", nil)
	r1 := n1.add("c1", "net1", p1, n1.conf(conf))
	r2 := n2.add("c2", "net1", p2, n2.conf(conf))
	inSubnet(t, r1, "10.70.1.0/24", "fd00:70::/64")
	inSubnet(t, r2, "10.70.2.0/24", "fd00:70::/64")

	// Namespace selector: team-a may use tenant-a, team-b may not.
	pa := c.createPod("team-a", "pa", "node1", nil)
	inSubnet(t, n1.add("ca", "net1", pa, n1.conf(map[string]any{"pool": "tenant-a"})), "10.71.0.0/24")
	pb := c.createPod("team-b", "pb", "node1", nil)
	e := n1.ipam.MustFail(t, n1.call("ADD", "cb", "net1", pb, n1.conf(map[string]any{"pool": "tenant-a"})), types.ErrInvalidNetworkConfig)
	if !contains(e.Msg, "tenant-a does not serve namespace team-b") {
		t.Errorf("message %q does not say why", e.Msg)
	}
	// A pool that serves neither node.
	e = n1.ipam.MustFail(t, n1.call("ADD", "cb2", "net1", p1, n1.conf(map[string]any{"pool": "rack2"})), types.ErrInvalidNetworkConfig)
	if !contains(e.Msg, "rack2 does not serve node node1") {
		t.Errorf("message %q does not say why", e.Msg)
	}

	// The pod's annotation overrides the configuration: one pool for all
	// interfaces, or per interface (Multus).
	pt := c.createPod("default", "pt", "node2", map[string]string{kube.AnnotationPool: "trading"})
	inSubnet(t, n2.add("ct", "net1", pt, n2.conf(conf)), "10.72.0.0/24")
	pm := c.createPod("default", "pm", "node1", map[string]string{
		kube.AnnotationPool: `{"net1": "trading", "net2": ["rack1", "v6"]}`,
		kube.AnnotationIP:   `{"net1": "10.72.0.77"}`})
	inSubnet(t, n1.add("cm", "net1", pm, n1.conf(conf)), "10.72.0.0/24")
	inSubnet(t, n1.add("cm", "net2", pm, n1.conf(conf)), "10.70.1.0/24", "fd00:70::/64")
	if o, ok := c.allocations()["10.72.0.77"]; !ok || o.Spec.Pod.Name != "pm" || o.Spec.Pod.Interface != "net1" {
		t.Errorf("the annotated fixed address 10.72.0.77 is not pm's net1: %s", jsonString(o))
	}
	// An interface the JSON annotation does not name uses the configuration.
	inSubnet(t, n1.add("cm", "net3", pm, n1.conf(map[string]any{"pool": "v6"})), "fd00:70::/64")
	// A broken annotation is a clear error naming it.
	bad := c.createPod("default", "bad", "node1", map[string]string{kube.AnnotationIP: "10.72.0.300"})
	e = n1.ipam.MustFail(t, n1.call("ADD", "cbad", "net1", bad, n1.conf(map[string]any{"pool": "trading"})), types.ErrInvalidNetworkConfig)
	if !contains(e.Msg, "pod annotation "+kube.AnnotationIP, "10.72.0.300") {
		t.Errorf("message %q does not name the annotation", e.Msg)
	}
}

func labelNode(t *testing.T, c *cluster, name, k, v string) {
	t.Helper()
	n, err := c.k8s.CoreV1().Nodes().Get(c.ctx(), name, getOpts)
	if err != nil {
		t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[k] = v
	if _, err := c.k8s.CoreV1().Nodes().Update(c.ctx(), n, updateOpts); err != nil {
		t.Fatal(err)
	}
}
