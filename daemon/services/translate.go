// Package services turns Kubernetes Services and EndpointSlices into warpd's
// desired state (its own types: Entry, Service, Frontend, Backend),
// following kube-proxy's semantics, and checks the objects it reads
// (CheckService, CheckEndpointSlice, LastGood). It is pure: no I/O and no
// BPF (daemon/reconcile converts to the load balancer's types), so every
// rule is unit-tested, and warpd's sources (the API server, a YAML file)
// share it.
package services

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/warpnet/warpnet/internal/l4"
)

// ProxyNameLabel marks services handled by another proxy; like kube-proxy,
// warpd leaves them alone.
const ProxyNameLabel = "service.kubernetes.io/service-proxy-name"

// DefaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout.
const DefaultAffinityTimeout = 10800 * time.Second

// Node is what translation needs to know about the node warpd runs on.
type Node struct {
	Name      string
	Zone      string       // for topology hints; "" = ignore hints
	Addresses []netip.Addr // node addresses: NodePorts listen on them, ExternalIPs count as local
}

var loopbacks = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}

// Translate computes the entries for the node, one per frontend. Services of
// type ExternalName, headless ones, and those labelled for another proxy are
// skipped; so are protocols other than TCP and UDP. When two services claim
// one frontend (the same external IP and port, say), the first by
// namespace/name keeps it and the other's claim is returned as rejected.
// Input is expected to have passed CheckService and CheckEndpointSlice;
// anything else that cannot be translated is left out. It is a Tracker fed
// everything at once: warpd keeps a Tracker and feeds it the changes.
func Translate(svcs []*corev1.Service, epSlices []*discoveryv1.EndpointSlice, node Node) ([]Entry, []Rejected) {
	t := NewTracker(node)
	t.Update(NewListView(svcs, epSlices), nil)
	return t.Entries(), t.Conflicts()
}

// ListView is a View of lists of objects.
type ListView struct {
	svcs   map[string]*corev1.Service
	slices map[string][]*discoveryv1.EndpointSlice
}

// NewListView indexes svcs and epSlices (by the Service they are labelled
// for; slices without the label belong to no Service).
func NewListView(svcs []*corev1.Service, epSlices []*discoveryv1.EndpointSlice) *ListView {
	v := &ListView{svcs: map[string]*corev1.Service{}, slices: map[string][]*discoveryv1.EndpointSlice{}}
	for _, s := range svcs {
		v.svcs[key(s)] = s
	}
	for _, s := range epSlices {
		if k := SliceServiceKey(s); k != "" {
			v.slices[k] = append(v.slices[k], s)
		}
	}
	return v
}

func (v *ListView) Service(key string) (*corev1.Service, bool) {
	s, ok := v.svcs[key]
	return s, ok
}

func (v *ListView) EndpointSlices(key string) []*discoveryv1.EndpointSlice { return v.slices[key] }

func (v *ListView) ServiceKeys() []string {
	keys := sortedKeys(v.svcs)
	for k := range v.slices {
		if _, ok := v.svcs[k]; !ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// SliceServiceKey is the namespace/name of the Service an EndpointSlice is
// labelled for, "" if none.
func SliceServiceKey(s *discoveryv1.EndpointSlice) string {
	if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
		return s.Namespace + "/" + name
	}
	return ""
}

// translateService translates one service (not skipped) with its
// EndpointSlices; id gives the id of a service port name.
func translateService(svc *corev1.Service, epSlices []*discoveryv1.EndpointSlice, node Node, id func(name string) uint32) []Entry {
	var out []Entry
	seen := map[Frontend]bool{}
	for _, port := range svc.Spec.Ports {
		proto, ok := l4.Parse(string(port.Protocol))
		if !ok {
			continue // SCTP passes through untranslated
		}
		name := fmt.Sprintf("%s:%s/%s", key(svc), portName(port), proto)
		sid := id(name)
		var affinity time.Duration
		if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
			affinity = DefaultAffinityTimeout
			if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
				affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
			}
		}
		internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
		externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
		for _, fe := range frontends(svc, port, node) {
			local := internalLocal
			if fe.external {
				local = externalLocal
			}
			f := Frontend{AddrPort: netip.AddrPortFrom(fe.addr, fe.port), Proto: proto}
			if seen[f] {
				continue
			}
			seen[f] = true
			e := Entry{Name: name, Service: Service{
				Frontend:        f,
				ID:              sid,
				Backends:        backends(epSlices, port, fe.addr.Is4(), local, node),
				AffinityTimeout: affinity,
			}}
			if fe.external {
				e.External = &External{Local: externalLocal, Mode: svc.Annotations[LBModeAnnotation], NodePort: fe.nodePort}
				if externalLocal && svc.Spec.HealthCheckNodePort > 0 && svc.Spec.HealthCheckNodePort <= 65535 {
					e.External.HealthCheckNodePort = uint16(svc.Spec.HealthCheckNodePort)
				}
			}
			out = append(out, e)
		}
	}
	return out
}

func key(svc *corev1.Service) string { return svc.Namespace + "/" + svc.Name }

func portName(p corev1.ServicePort) string {
	if p.Name != "" {
		return p.Name
	}
	return fmt.Sprint(p.Port)
}

func skip(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeExternalName ||
		svc.Spec.ClusterIP == corev1.ClusterIPNone ||
		svc.Labels[ProxyNameLabel] != ""
}

// serviceID is a stable hash of the service port's name, so IDs (which key
// session affinity) survive warpd restarts; a collision takes the next free
// value, deterministically because services are visited in sorted order.
func serviceID(name string, taken map[uint32]string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	id := h.Sum32()
	for {
		if id == 0 {
			id = 1
		}
		if owner, used := taken[id]; !used || owner == name {
			taken[id] = name
			return id
		}
		id++
	}
}

type frontend struct {
	addr     netip.Addr
	port     uint16
	external bool // reached from outside the cluster: externalTrafficPolicy applies
	nodePort bool // a node address with the NodePort
}

func frontends(svc *corev1.Service, port corev1.ServicePort, node Node) []frontend {
	var out []frontend
	add := func(s string, p int32, external, nodePort bool) {
		if a, err := netip.ParseAddr(s); err == nil && p > 0 && p <= 65535 {
			fe := frontend{a.Unmap(), uint16(p), external, nodePort}
			if !slices.Contains(out, fe) {
				out = append(out, fe)
			}
		}
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range clusterIPs {
		add(ip, port.Port, false, false)
	}
	// ExternalIPs are only served where they are local: elsewhere the
	// traffic must leave the node to reach the address's owner.
	for _, ip := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(ip); err == nil && slices.Contains(node.Addresses, a.Unmap()) {
			add(ip, port.Port, true, false)
		}
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			add(ing.IP, port.Port, true, false)
		}
	}
	if port.NodePort > 0 && (svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer) {
		for _, a := range append(slices.Clone(node.Addresses), loopbacks...) {
			add(a.String(), port.NodePort, true, true)
		}
	}
	return out
}

// backends picks the endpoints of one service port and family: ready ones,
// or, when none is ready, the serving ones that are terminating (so a
// rolling update never drops a service to zero). local keeps only this
// node's endpoints; topology hints narrow to the node's zone when every
// endpoint carries them and some match.
func backends(epSlices []*discoveryv1.EndpointSlice, port corev1.ServicePort, v4, local bool, node Node) []netip.AddrPort {
	type cand struct {
		b           netip.AddrPort
		ready       bool
		terminating bool
		zones       []string
		hinted      bool
	}
	var cands []cand
	for _, s := range epSlices {
		if (s.AddressType == discoveryv1.AddressTypeIPv4) != v4 || (s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6) {
			continue
		}
		target, ok := slicePort(s, port)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			if local && (ep.NodeName == nil || *ep.NodeName != node.Name) {
				continue
			}
			c := cand{
				ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
				terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
			}
			serving := ep.Conditions.Serving == nil || *ep.Conditions.Serving
			if !c.ready && !(serving && c.terminating) {
				continue
			}
			if ep.Hints != nil {
				c.hinted = true
				for _, z := range ep.Hints.ForZones {
					c.zones = append(c.zones, z.Name)
				}
			}
			for _, a := range ep.Addresses {
				if addr, err := netip.ParseAddr(a); err == nil && addr.Unmap().Is4() == v4 {
					c.b = netip.AddrPortFrom(addr.Unmap(), target)
					cands = append(cands, c)
				}
			}
		}
	}
	pick := func(keep func(cand) bool) []cand {
		var out []cand
		for _, c := range cands {
			if keep(c) {
				out = append(out, c)
			}
		}
		return out
	}
	chosen := pick(func(c cand) bool { return c.ready })
	if len(chosen) == 0 {
		chosen = pick(func(c cand) bool { return c.terminating })
	}
	if node.Zone != "" && len(chosen) > 0 && !slices.ContainsFunc(chosen, func(c cand) bool { return !c.hinted }) {
		var inZone []cand
		for _, c := range chosen {
			if slices.Contains(c.zones, node.Zone) {
				inZone = append(inZone, c)
			}
		}
		if len(inZone) > 0 {
			chosen = inZone
		}
	}
	if len(chosen) == 0 {
		return nil
	}
	// Exactly sized: a Tracker keeps 10,000s of these.
	out := make([]netip.AddrPort, 0, len(chosen))
	for _, c := range chosen {
		if !slices.Contains(out, c.b) {
			out = append(out, c.b)
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}

// slicePort finds the target port of a service port in an EndpointSlice:
// matched by name (the service port's name, "" for a single unnamed port)
// and protocol.
func slicePort(s *discoveryv1.EndpointSlice, port corev1.ServicePort) (uint16, bool) {
	for _, p := range s.Ports {
		name, proto := "", corev1.ProtocolTCP
		if p.Name != nil {
			name = *p.Name
		}
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		sp := port.Protocol
		if sp == "" {
			sp = corev1.ProtocolTCP
		}
		if name == port.Name && proto == sp && p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
			return uint16(*p.Port), true
		}
	}
	return 0, false
}
