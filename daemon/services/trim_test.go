package services

import (
	"fmt"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// trimCases are Services and EndpointSlices that set every field
// translation and the checks read, valid and invalid, each with the fields
// an API server adds that warpd does not read.
func trimCases() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	local, cluster := corev1.ServiceInternalTrafficPolicyLocal, corev1.ServiceInternalTrafficPolicyCluster
	timeout := int32(600)
	svcs := []*corev1.Service{
		svc("web", func(s *corev1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: 8443, Protocol: corev1.ProtocolTCP})
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
			s.Spec.InternalTrafficPolicy = &local
		}),
		svc("lb", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"}
			s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080, Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP}}
			s.Spec.ExternalIPs = []string{"192.168.1.10", "192.168.9.9"}
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = 32000
			s.Annotations = map[string]string{LBModeAnnotation: "dsr"}
			vip := corev1.LoadBalancerIPModeVIP
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.7", Hostname: "lb.example", IPMode: &vip,
				Ports: []corev1.PortStatus{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
		}),
		svc("np", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.12", []string{"10.96.0.12"}
			s.Spec.Ports[0].NodePort = 30081
			s.Spec.InternalTrafficPolicy = &cluster
		}),
		svc("headless", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
		svc("ext", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ServiceTypeExternalName, "db.example", "", nil
		}),
		svc("other", func(s *corev1.Service) { s.Labels = map[string]string{ProxyNameLabel: "someone-else"} }),
		svc("conflict", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"} }),
		svc("bad", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.000.13", []string{"10.96.000.13"}
			s.Spec.ExternalIPs = []string{"not-an-ip"}
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "http", Port: 80, Protocol: "ICMP", NodePort: 70000})
			s.Spec.SessionAffinity = "Sticky"
			s.Spec.ExternalTrafficPolicy = "Nearby"
			s.Annotations = map[string]string{LBModeAnnotation: "tunnel"}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "1.2.3"}}
		}),
	}
	term := ep{addr: "10.244.1.9", node: "node1", serving: true, terminating: true}
	hinted := ready("10.244.1.5", "node1")
	hinted.zones = []string{"a"}
	elsewhere := ready("10.244.2.5", "node2")
	elsewhere.zones = []string{"b"}
	slices := []*discoveryv1.EndpointSlice{
		slice("web", v4, 8080, ready("10.244.1.2", "node1"), ready("10.244.2.2", "node2"), ep{addr: "10.244.1.3", serving: true}, term),
		slice("web", v6, 8080, ready("fd00:244::2", "node1")),
		slice("lb", v4, 8080, hinted, elsewhere),
		slice("np", v4, 8080, ep{addr: "10.244.1.7", node: "node1", serving: true, terminating: true}),
		slice("conflict", v4, 8080, ready("10.244.1.8", "node1")),
		slice("bad", v4, 8080, ready("127.0.0.1", "node1"), ready("fd00::1", "node1")),
	}
	udp, dns := corev1.ProtocolUDP, "dns"
	port := int32(5353)
	slices[2].Ports = append(slices[2].Ports, discoveryv1.EndpointPort{Name: &dns, Port: &port, Protocol: &udp})
	bad := int32(0)
	slices[5].Ports = append(slices[5].Ports, discoveryv1.EndpointPort{Port: &bad})
	fqdn := slice("ext", discoveryv1.AddressTypeFQDN, 5432, ready("db.example", "node1"))
	unlabelled := slice("web", v4, 8080, ready("10.244.1.4", "node1"))
	unlabelled.Name, unlabelled.Labels = "stray", nil
	slices = append(slices, fqdn, unlabelled)

	// What an API server adds, and warpd never reads.
	for _, s := range svcs {
		addMeta(&s.ObjectMeta)
		s.Spec.Selector = map[string]string{"app": s.Name}
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		policy := corev1.IPFamilyPolicySingleStack
		s.Spec.IPFamilyPolicy = &policy
		s.Spec.LoadBalancerSourceRanges = []string{"0.0.0.0/0"}
		for i := range s.Spec.Ports {
			s.Spec.Ports[i].TargetPort = intstr.FromString("web")
			s.Spec.Ports[i].AppProtocol = ptrTo("http")
		}
		s.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Fine"}}
	}
	for _, es := range slices {
		addMeta(&es.ObjectMeta)
		for i := range es.Endpoints {
			e := &es.Endpoints[i]
			e.Hostname, e.Zone = ptrTo("pod"), ptrTo("a")
			e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: es.Namespace, Name: fmt.Sprintf("pod-%d", i), UID: "1234"}
			e.DeprecatedTopology = map[string]string{"kubernetes.io/hostname": "node1"}
			if e.Hints != nil {
				e.Hints.ForNodes = []discoveryv1.ForNode{{Name: "node1"}}
			}
		}
	}
	return svcs, slices
}

func addMeta(m *metav1.ObjectMeta) {
	m.UID, m.ResourceVersion, m.Generation = types.UID("uid-"+m.Name), "42", 3
	m.CreationTimestamp = metav1.Now()
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	m.Labels["app"], m.Labels["team"] = m.Name, "payments"
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = `{"a very long":"copy of the object"}`
	m.OwnerReferences = []metav1.OwnerReference{{Kind: "Service", Name: m.Name, UID: "owner"}}
	m.Finalizers = []string{"example.com/keep"}
	m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply,
		FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{}}`)}}}
}

func ptrTo[T any](v T) *T { return &v }

func trimmed() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs, slices := trimCases()
	for _, s := range svcs {
		TrimService(s)
	}
	for _, s := range slices {
		TrimEndpointSlice(s)
	}
	return svcs, slices
}

// The informers cache trimmed objects: warpd must do with them exactly
// what it would do with the objects as the API server sends them.
func TestTrimKeepsWhatTranslationReads(t *testing.T) {
	svcs, slices := trimCases()
	tsvcs, tslices := trimmed()
	for i := range svcs {
		if a, b := fmt.Sprint(CheckService(svcs[i])), fmt.Sprint(CheckService(tsvcs[i])); a != b {
			t.Errorf("CheckService(%s): %s untrimmed, %s trimmed", svcs[i].Name, a, b)
		}
	}
	for i := range slices {
		if a, b := fmt.Sprint(CheckEndpointSlice(slices[i])), fmt.Sprint(CheckEndpointSlice(tslices[i])); a != b {
			t.Errorf("CheckEndpointSlice(%s): %s untrimmed, %s trimmed", slices[i].Name, a, b)
		}
	}
	// Everything the checks accept, translated the way a Tracker does.
	var valid []*corev1.Service
	var tvalid []*corev1.Service
	for i := range svcs {
		if CheckService(svcs[i]) == nil {
			valid, tvalid = append(valid, svcs[i]), append(tvalid, tsvcs[i])
		}
	}
	var validSlices, tvalidSlices []*discoveryv1.EndpointSlice
	for i := range slices {
		if CheckEndpointSlice(slices[i]) == nil {
			validSlices, tvalidSlices = append(validSlices, slices[i]), append(tvalidSlices, tslices[i])
		}
	}
	want, wantRejected := Translate(valid, validSlices, node)
	got, gotRejected := Translate(tvalid, tvalidSlices, node)
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotRejected, wantRejected) {
		t.Errorf("translation differs when trimmed:\n got %s\n%v\nwant %s\n%v", render(got), gotRejected, render(want), wantRejected)
	}
	// The cases must reach every kind of frontend and backend choice, or
	// they prove little.
	var external, affinity, local, nodePorts int
	for _, e := range want {
		if e.External != nil {
			external++
			if e.External.Local && e.External.HealthCheckNodePort != 0 && e.External.Mode == "dsr" {
				local++
			}
			if e.External.NodePort {
				nodePorts++
			}
		}
		if e.AffinityTimeout > 0 {
			affinity++
		}
	}
	if len(want) < 10 || external == 0 || affinity == 0 || local == 0 || nodePorts == 0 || len(wantRejected) == 0 {
		t.Errorf("the cases cover too little: %d entries, %d external (%d local with a health check and dsr, %d node ports), %d with affinity, %d conflicts\n%s",
			len(want), external, local, nodePorts, affinity, len(wantRejected), render(want))
	}
	// And the invalid ones were rejected for reasons of their own.
	if CheckService(svcs[len(svcs)-1]) == nil || CheckEndpointSlice(slices[5]) == nil {
		t.Error("the invalid cases pass their checks")
	}
}

// Trimming drops what warpd does not read (and endpoints' spare
// capacity), and doing it twice changes nothing (a transform must be
// idempotent).
func TestTrimDropsTheRest(t *testing.T) {
	svcs, slices := trimmed()
	for _, s := range svcs {
		if s.ManagedFields != nil || s.OwnerReferences != nil || s.Finalizers != nil || s.UID != "" || s.Spec.Selector != nil ||
			s.Spec.IPFamilies != nil || s.Status.Conditions != nil || s.Labels["app"] != "" || len(s.Annotations) > 1 {
			t.Errorf("%s keeps fields warpd does not read: %+v", s.Name, s)
		}
		if s.Name == "lb" && (s.Annotations[LBModeAnnotation] != "dsr" || s.ResourceVersion != "42") {
			t.Errorf("lb lost its mode annotation or resource version: %+v", s.ObjectMeta)
		}
		again := s.DeepCopy()
		TrimService(again)
		if !reflect.DeepEqual(again, s) {
			t.Errorf("trimming %s twice changes it", s.Name)
		}
	}
	for _, es := range slices {
		if es.ManagedFields != nil || es.Annotations != nil || es.Labels["app"] != "" || cap(es.Endpoints) != len(es.Endpoints) {
			t.Errorf("%s keeps metadata warpd does not read: %+v", es.Name, es.ObjectMeta)
		}
		for _, e := range es.Endpoints {
			if e.TargetRef != nil || e.Hostname != nil || e.DeprecatedTopology != nil || e.Zone != nil || (e.Hints != nil && e.Hints.ForNodes != nil) {
				t.Errorf("%s keeps endpoint fields warpd does not read: %+v", es.Name, e)
			}
		}
		again := es.DeepCopy()
		TrimEndpointSlice(again)
		if !reflect.DeepEqual(again, es) {
			t.Errorf("trimming %s twice changes it", es.Name)
		}
	}
}
