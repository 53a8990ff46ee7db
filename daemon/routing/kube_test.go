package routing

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestFromNodes(t *testing.T) {
	got := FromNodes([]*corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24", "fd00:1::/64", "bad"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: "a"}, {Type: corev1.NodeExternalIP, Address: "1.2.3.4"},
				{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeInternalIP, Address: "fd00::1"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.2.0/24"},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "1.2.3.5"}}}},
	})
	if len(got) != 2 || len(got[0].Addrs) != 2 || got[0].Addrs[1] != netip.MustParseAddr("fd00::1") || len(got[0].PodCIDRs) != 2 {
		t.Fatalf("a: %+v", got)
	}
	if got[1].Addrs[0] != netip.MustParseAddr("1.2.3.5") || got[1].PodCIDRs[0] != netip.MustParsePrefix("10.244.2.0/24") {
		t.Fatalf("b: %+v", got[1])
	}
}

// The informer caches trimmed Nodes: routing must read the same from them.
func TestTrimNodeKeepsWhatFromNodesReads(t *testing.T) {
	full := func() []*corev1.Node {
		return []*corev1.Node{
			{ObjectMeta: metav1.ObjectMeta{Name: "a", ResourceVersion: "7", Labels: map[string]string{"zone": "x"},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
				Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:1::/64"}, ProviderID: "x://a"},
				Status: corev1.NodeStatus{
					Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeExternalIP, Address: "1.2.3.4"}},
					Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
					Images:     []corev1.ContainerImage{{Names: []string{"registry.example/app:v1"}, SizeBytes: 1 << 20}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.2.0/24"},
				Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "1.2.3.5"}}}},
		}
	}
	trimmed := full()
	for _, n := range trimmed {
		TrimNode(n)
	}
	if got, want := FromNodes(trimmed), FromNodes(full()); !reflect.DeepEqual(got, want) {
		t.Fatalf("trimmed: %+v, untrimmed: %+v", got, want)
	}
	a := trimmed[0]
	if a.Labels != nil || a.ManagedFields != nil || a.Status.Images != nil || a.Status.Conditions != nil || a.Spec.ProviderID != "" || a.ResourceVersion != "7" {
		t.Errorf("trimmed node a: %+v", a)
	}
	again := a.DeepCopy()
	TrimNode(again)
	if !reflect.DeepEqual(again, a) {
		t.Error("trimming twice changes a node")
	}
}
