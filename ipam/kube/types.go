// Package kube is warp-ipam's side of the Kubernetes API: the
// ipam.warpnet.io types (IPPool, IPAllocation; their CRDs are in
// install/crds), how allocations are named and labelled, which pools a pod
// draws from, and a small typed client over client-go's transport.
// warp-ipam's kubernetes store (ipam/store/kube), warpd's leak collector
// (daemon/ipamgc) and warpctl share it.
//
// One address is one IPAllocation named after the address, cluster-scoped:
// creating it is the claim, and the API server refuses a second object of
// that name, so no address is ever held twice, whatever the pools and
// nodes. Nothing locks more than one node.
package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// The API group of warp-ipam's resources.
const (
	Group      = "ipam.warpnet.io"
	Version    = "v1alpha1"
	APIVersion = Group + "/" + Version
)

// Labels on every IPAllocation, so that the API server selects by them.
// Values longer than a label allows are hashed (LabelValue).
const (
	LabelPool       = Group + "/pool"       // the pool's name
	LabelNode       = Group + "/node"       // the node of the attachment using the address
	LabelPod        = Group + "/pod"        // PodLabel(namespace, name)
	LabelAttachment = Group + "/attachment" // AttachmentLabel(containerID, ifName)
)

// Pod annotations that choose pools and addresses; see PodRequest.
const (
	AnnotationPool = Group + "/pool"
	AnnotationIP   = Group + "/ip"
)

// TypeMeta and ObjectMeta are the parts of Kubernetes' object metadata
// that warp-ipam reads and writes. They are declared here rather than taken
// from k8s.io/apimachinery because warp-ipam is a new process per CNI call,
// and apimachinery's package initialisation alone would double its start-up
// time (also for the local store).
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// ObjectMeta is an object's metadata.
type ObjectMeta struct {
	Name              string            `json:"name,omitempty"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	CreationTimestamp *time.Time        `json:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	OwnerReferences   []OwnerReference  `json:"ownerReferences,omitempty"`
	Finalizers        []string          `json:"finalizers,omitempty"`
}

// OwnerReference is an entry of metadata.ownerReferences.
type OwnerReference struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	UID        string `json:"uid"`
	Controller *bool  `json:"controller,omitempty"`
}

// Created is the object's creation time (the zero time if unknown).
func (m *ObjectMeta) Created() time.Time {
	if m.CreationTimestamp == nil {
		return time.Time{}
	}
	return *m.CreationTimestamp
}

// IPPool is a cluster-wide address pool.
type IPPool struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       IPPoolSpec `json:"spec"`
}

// IPPoolSpec is what the CRD's schema allows (validated there with CEL).
type IPPoolSpec struct {
	Subnet            string         `json:"subnet"`
	Ranges            []PoolRange    `json:"ranges,omitempty"`
	Exclude           []string       `json:"exclude,omitempty"`
	Gateway           string         `json:"gateway,omitempty"`
	Routes            []PoolRoute    `json:"routes,omitempty"`
	VLAN              *int           `json:"vlan,omitempty"`
	DNS               *PoolDNS       `json:"dns,omitempty"`
	NodeSelector      *LabelSelector `json:"nodeSelector,omitempty"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
}

// PoolRange is an allocatable span, both ends inclusive.
type PoolRange struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// PoolRoute is a route returned with the pool's addresses.
type PoolRoute struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// PoolDNS is the DNS returned with the pool's addresses.
type PoolDNS struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Domain      string   `json:"domain,omitempty"`
	Search      []string `json:"search,omitempty"`
	Options     []string `json:"options,omitempty"`
}

// IPPoolList is a list of pools.
type IPPoolList struct {
	Items []IPPool `json:"items"`
}

// IPAllocation is one address held in a pool.
type IPAllocation struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       IPAllocationSpec `json:"spec"`
}

// IPAllocationSpec says who holds the address.
type IPAllocationSpec struct {
	Pool    string `json:"pool"`
	Address string `json:"address"`
	Pod     PodRef `json:"pod"`
	// Attachment is the container interface using the address; nil while a
	// pinned address waits for its pod to come back.
	Attachment *Attachment `json:"attachment,omitempty"`
	// StatefulSet is set when the address is pinned to a StatefulSet pod:
	// it outlives the pod's sandboxes, on any node, and is released when
	// the StatefulSet is deleted or scaled below the ordinal.
	StatefulSet *StatefulSetRef `json:"statefulSet,omitempty"`
}

// PodRef names the pod an address belongs to; Interface is its CNI_IFNAME.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	Interface string `json:"interface,omitempty"`
}

// Attachment is the sandbox interface using an address.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Node        string `json:"node"`
}

// StatefulSetRef is a pinned address's owner: the StatefulSet and the
// ordinal of the pod.
type StatefulSetRef struct {
	Name    string `json:"name"`
	Ordinal int    `json:"ordinal"`
}

// IPAllocationList is a list of allocations.
type IPAllocationList struct {
	Items []IPAllocation `json:"items"`
}

// Addr is the allocation's address (the zero Addr if it does not parse,
// which the CRD's validation prevents).
func (a *IPAllocation) Addr() netip.Addr {
	ip, _ := netip.ParseAddr(a.Spec.Address)
	return ip
}

// HeldBy reports whether the attachment (containerID, ifName) uses the
// address.
func (a *IPAllocation) HeldBy(containerID, ifName string) bool {
	at := a.Spec.Attachment
	return at != nil && at.ContainerID == containerID && at.IfName == ifName
}

// Pinned reports whether the address is pinned to a StatefulSet pod.
func (a *IPAllocation) Pinned() bool { return a.Spec.StatefulSet != nil }

// AllocationName is the object name of ip's allocation: the address itself
// for IPv4 ("10.0.0.5"), and for IPv6 the fully expanded address with "-"
// for ":" ("fd00-0000-...-0005"), since names must be DNS subdomains. One
// name per address is what makes a create the claim.
func AllocationName(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	return strings.ReplaceAll(ip.StringExpanded(), ":", "-")
}

// AddrFromName inverts AllocationName.
func AddrFromName(name string) (netip.Addr, bool) {
	if !strings.Contains(name, ".") {
		name = strings.ReplaceAll(name, "-", ":")
	}
	ip, err := netip.ParseAddr(name)
	return ip, err == nil
}

// LabelValue is s when it is a valid label value, else a hash of it.
func LabelValue(s string) string {
	if validLabelValue(s) {
		return s
	}
	return "h-" + hash(s)
}

// validLabelValue: at most 63 characters, alphanumerics, '-', '_' and
// '.', beginning and ending with an alphanumeric (or empty).
func validLabelValue(s string) bool {
	if len(s) > 63 {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && ((c != '-' && c != '_' && c != '.') || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// LabelSelector is a Kubernetes label selector (matchLabels and
// matchExpressions with In, NotIn, Exists, DoesNotExist).
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one matchExpressions entry.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Matches reports whether labels l satisfy the selector (an empty one
// matches everything).
func (s *LabelSelector) Matches(l map[string]string) (bool, error) {
	for k, v := range s.MatchLabels {
		if got, ok := l[k]; !ok || got != v {
			return false, nil
		}
	}
	for i, r := range s.MatchExpressions {
		v, has := l[r.Key]
		in := false
		for _, x := range r.Values {
			in = in || (has && x == v)
		}
		switch r.Operator {
		case "In":
			if !in {
				return false, nil
			}
		case "NotIn":
			if in {
				return false, nil
			}
		case "Exists":
			if !has {
				return false, nil
			}
		case "DoesNotExist":
			if has {
				return false, nil
			}
		default:
			return false, fmt.Errorf("matchExpressions[%d].operator: %q is not In, NotIn, Exists or DoesNotExist", i, r.Operator)
		}
	}
	return true, nil
}

// PodLabel is the LabelPod value of a pod.
func PodLabel(namespace, name string) string { return hash(namespace + "/" + name) }

// AttachmentLabel is the LabelAttachment value of an attachment.
func AttachmentLabel(containerID, ifName string) string { return hash(containerID + "/" + ifName) }

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:20])
}

// DeepCopyAlloc returns a copy of a that shares nothing with it.
func (a *IPAllocation) DeepCopyAlloc() *IPAllocation {
	b := *a
	b.Labels = maps.Clone(a.Labels)
	b.Annotations = maps.Clone(a.Annotations)
	b.OwnerReferences = slices.Clone(a.OwnerReferences)
	b.Finalizers = slices.Clone(a.Finalizers)
	if a.Spec.Attachment != nil {
		at := *a.Spec.Attachment
		b.Spec.Attachment = &at
	}
	if a.Spec.StatefulSet != nil {
		ss := *a.Spec.StatefulSet
		b.Spec.StatefulSet = &ss
	}
	return &b
}

// Size is the number of addresses the pool can hand out: its ranges, less
// the gateway, the network and broadcast addresses, and exclusions.
func (p *IPPool) Size() (*big.Int, error) {
	rs, excl, err := p.Ranges()
	if err != nil {
		return nil, err
	}
	total := new(big.Int)
	for _, r := range rs {
		total.Add(total, span(r.Start, r.End))
		// Exclusions clipped to the range, merged so none counts twice.
		var cut [][2]netip.Addr
		for _, e := range excl {
			lo, hi := e.Masked().Addr(), lastOf(e)
			if lo.Less(r.Start) {
				lo = r.Start
			}
			if r.End.Less(hi) {
				hi = r.End
			}
			if lo.BitLen() == r.Start.BitLen() && !hi.Less(lo) {
				cut = append(cut, [2]netip.Addr{lo, hi})
			}
		}
		for _, a := range []netip.Addr{r.Gateway, r.Subnet.Addr(), lastOf(r.Subnet)} {
			if r.Contains(a) && (a != lastOf(r.Subnet) || a.Is4()) {
				cut = append(cut, [2]netip.Addr{a, a})
			}
		}
		slices.SortFunc(cut, func(x, y [2]netip.Addr) int { return x[0].Compare(y[0]) })
		var cur *[2]netip.Addr
		for i := range cut {
			c := cut[i]
			if cur != nil && !cur[1].Less(c[0].Prev()) {
				if cur[1].Less(c[1]) {
					cur[1] = c[1]
				}
				continue
			}
			if cur != nil {
				total.Sub(total, span(cur[0], cur[1]))
			}
			cur = &c
		}
		if cur != nil {
			total.Sub(total, span(cur[0], cur[1]))
		}
	}
	return total, nil
}

// span counts the addresses from a to b inclusive.
func span(a, b netip.Addr) *big.Int {
	x, y := a.As16(), b.As16()
	d := new(big.Int).Sub(new(big.Int).SetBytes(y[:]), new(big.Int).SetBytes(x[:]))
	return d.Add(d, big.NewInt(1))
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(0xff >> (8 - n))
		host -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
