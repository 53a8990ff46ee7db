package services

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TrimService and TrimEndpointSlice drop, in place, every field that
// CheckService, CheckEndpointSlice and translation do not read: warpd's
// API source runs them on each object before its informer caches it
// (client-go's transform), so that 10,000 Services and their
// EndpointSlices cost what warpd uses of them, not what the API server
// stores (managed fields, kubectl's last-applied annotation, selectors,
// endpoints' target references, ...). Both are idempotent, as a
// transform must be. Reading a new field in translation or in a check
// means keeping it here; TestTrimKeepsWhatTranslationReads compares
// translations of trimmed and untrimmed objects.
func TrimService(s *corev1.Service) {
	trimMeta(&s.ObjectMeta)
	s.Labels = keepKeys(s.Labels, ProxyNameLabel)
	s.Annotations = keepKeys(s.Annotations, LBModeAnnotation)
	sp := &s.Spec
	sp.Selector = nil
	sp.LoadBalancerIP, sp.LoadBalancerSourceRanges, sp.LoadBalancerClass = "", nil, nil
	sp.ExternalName = ""
	sp.IPFamilies, sp.IPFamilyPolicy = nil, nil
	sp.AllocateLoadBalancerNodePorts, sp.PublishNotReadyAddresses, sp.TrafficDistribution = nil, false, nil
	for i := range sp.Ports {
		sp.Ports[i].AppProtocol = nil
		sp.Ports[i].TargetPort = intstr.IntOrString{} // EndpointSlices carry the target ports
	}
	s.Status.Conditions = nil
	for i := range s.Status.LoadBalancer.Ingress {
		s.Status.LoadBalancer.Ingress[i] = corev1.LoadBalancerIngress{IP: s.Status.LoadBalancer.Ingress[i].IP}
	}
}

// TrimEndpointSlice is TrimService's counterpart for EndpointSlices.
func TrimEndpointSlice(es *discoveryv1.EndpointSlice) {
	trimMeta(&es.ObjectMeta)
	es.Labels = keepKeys(es.Labels, discoveryv1.LabelServiceName)
	es.Annotations = nil
	if cap(es.Endpoints) > len(es.Endpoints) {
		// Decoding appends endpoints one by one: up to half of the
		// array is spare capacity, which the cache would keep.
		es.Endpoints = append(make([]discoveryv1.Endpoint, 0, len(es.Endpoints)), es.Endpoints...)
	}
	for i := range es.Endpoints {
		ep := &es.Endpoints[i]
		ep.Hostname, ep.TargetRef, ep.DeprecatedTopology, ep.Zone = nil, nil, nil, nil
		if ep.Hints != nil {
			ep.Hints.ForNodes = nil
		}
	}
	for i := range es.Ports {
		es.Ports[i].AppProtocol = nil
	}
}

// trimMeta keeps what names an object and its version; labels and
// annotations are the callers'.
func trimMeta(m *metav1.ObjectMeta) {
	*m = metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, Annotations: m.Annotations}
}

// keepKeys returns the entries of m with the given keys (nil if none): m
// itself if it has no others, else a new map, so that the old one and its
// other entries are freed.
func keepKeys(m map[string]string, keys ...string) map[string]string {
	kept := 0
	for _, k := range keys {
		if _, ok := m[k]; ok {
			kept++
		}
	}
	if kept == len(m) {
		if kept == 0 {
			return nil
		}
		return m
	}
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}
