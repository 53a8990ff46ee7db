package routing

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FromNodes converts Node objects: addresses are the InternalIPs (the
// ExternalIPs for a node that lists no InternalIP), pod CIDRs are
// spec.podCIDRs (spec.podCIDR on old objects). Unparsable values are
// skipped; a node with none left is still listed (it may get them later).
func FromNodes(objs []*corev1.Node) []Node {
	out := make([]Node, 0, len(objs))
	for _, o := range objs {
		n := Node{Name: o.Name}
		for _, want := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
			for _, a := range o.Status.Addresses {
				if a.Type != want {
					continue
				}
				if ip, err := netip.ParseAddr(a.Address); err == nil {
					n.Addrs = append(n.Addrs, ip.Unmap())
				}
			}
			if len(n.Addrs) > 0 {
				break
			}
		}
		cidrs := o.Spec.PodCIDRs
		if len(cidrs) == 0 && o.Spec.PodCIDR != "" {
			cidrs = []string{o.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			if p, err := netip.ParsePrefix(c); err == nil {
				n.PodCIDRs = append(n.PodCIDRs, p.Masked())
			}
		}
		out = append(out, n)
	}
	return out
}

// TrimNode drops, in place, every field FromNodes does not read (a Node's
// images, conditions, capacity, labels, ...), for warpd's informer cache:
// idempotent, as a client-go transform must be. Reading a new field in
// FromNodes means keeping it here (TestTrimNodeKeepsWhatFromNodesReads).
func TrimNode(n *corev1.Node) {
	*n = corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, ResourceVersion: n.ResourceVersion},
		Spec:       corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
		Status:     corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
}
