package routing

import (
	"net/netip"
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
