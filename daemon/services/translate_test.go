package services

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Builders keep each case to the fields it is about.

func svc(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type ep struct {
	addr                        string
	node                        string
	ready, serving, terminating bool
	zones                       []string
}

func ready(addr, node string) ep { return ep{addr: addr, node: node, ready: true, serving: true} }

func slice(svcName string, family discoveryv1.AddressType, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	name, proto := "http", corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svcName + "-" + string(family), Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, e := range eps {
		e := e
		d := discoveryv1.Endpoint{Addresses: []string{e.addr}, NodeName: &e.node,
			Conditions: discoveryv1.EndpointConditions{Ready: &e.ready, Serving: &e.serving, Terminating: &e.terminating}}
		if e.zones != nil {
			d.Hints = &discoveryv1.EndpointHints{}
			for _, z := range e.zones {
				d.Hints.ForZones = append(d.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return s
}

var node = Node{Name: "node1", Zone: "a", Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10")}}

// render prints entries as "frontend/proto -> backends" lines, sorted by
// construction order, for compact assertions.
func render(entries []Entry) string {
	var lines []string
	for _, e := range entries {
		var bs []string
		for _, b := range e.Backends {
			bs = append(bs, b.String())
		}
		line := fmt.Sprintf("%s -> [%s]", e.Frontend, strings.Join(bs, " "))
		if e.AffinityTimeout > 0 {
			line += fmt.Sprintf(" affinity=%s", e.AffinityTimeout)
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

func TestTranslate(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	tests := []struct {
		name   string
		svcs   []*corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   string
	}{
		{"cluster IP with ready endpoints", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("web", v4, 8080, ready("10.244.1.2", "node1"), ready("10.244.2.2", "node2"))},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080 10.244.2.2:8080]"},
		{"not ready endpoints are left out", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("web", v4, 8080, ready("10.244.1.2", "node1"), ep{addr: "10.244.1.3", serving: true})},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080]"},
		{"terminating but serving when none is ready", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("web", v4, 8080,
				ep{addr: "10.244.1.2", serving: true, terminating: true}, ep{addr: "10.244.1.3", terminating: true})},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080]"},
		{"no endpoints: a frontend that rejects", []*corev1.Service{svc("web")}, nil,
			"10.96.0.10:80/tcp -> []"},
		{"headless, external name and another proxy's services are skipped", []*corev1.Service{
			svc("headless", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
			svc("ext", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }),
			svc("other", func(s *corev1.Service) { s.Labels = map[string]string{ProxyNameLabel: "someone-else"} }),
		}, nil, ""},
		{"SCTP passes through, UDP is translated", []*corev1.Service{svc("dns", func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP}, {Name: "http", Port: 53, Protocol: corev1.ProtocolUDP}}
		})}, []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("dns", v4, 5353, ready("10.244.1.2", "node1"))
			udp := corev1.ProtocolUDP
			s.Ports[0].Protocol = &udp
			return s
		}()}, "10.96.0.10:53/udp -> [10.244.1.2:5353]"},
		{"dual stack: each family gets its own backends", []*corev1.Service{svc("web", func(s *corev1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
		})}, []*discoveryv1.EndpointSlice{
			slice("web", v4, 8080, ready("10.244.1.2", "node1")),
			slice("web", discoveryv1.AddressTypeIPv6, 8080, ready("fd00:244::2", "node1")),
		}, "10.96.0.10:80/tcp -> [10.244.1.2:8080]\n[fd00:96::10]:80/tcp -> [[fd00:244::2]:8080]"},
		{"internalTrafficPolicy Local keeps this node's endpoints", []*corev1.Service{svc("web", func(s *corev1.Service) {
			local := corev1.ServiceInternalTrafficPolicyLocal
			s.Spec.InternalTrafficPolicy = &local
		})}, []*discoveryv1.EndpointSlice{slice("web", v4, 8080, ready("10.244.1.2", "node1"), ready("10.244.2.2", "node2"))},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080]"},
		{"session affinity with its timeout", []*corev1.Service{svc("web", func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			sec := int32(60)
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &sec}}
		})}, []*discoveryv1.EndpointSlice{slice("web", v4, 8080, ready("10.244.1.2", "node1"))},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080] affinity=1m0s"},
		{"external IPs only where local; NodePort on node addresses and loopback; ETP Local there only", []*corev1.Service{svc("web", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalIPs = []string{"192.168.1.10", "192.168.1.99"}
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		})}, []*discoveryv1.EndpointSlice{slice("web", v4, 8080, ready("10.244.1.2", "node1"), ready("10.244.2.2", "node2"))},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080 10.244.2.2:8080]\n" +
				"192.168.1.10:80/tcp -> [10.244.1.2:8080]\n" +
				"192.168.1.10:30080/tcp -> [10.244.1.2:8080]\n" +
				"127.0.0.1:30080/tcp -> [10.244.1.2:8080]\n" +
				"[::1]:30080/tcp -> []"},
		{"load balancer ingress IPs", []*corev1.Service{svc("web", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}
		})}, []*discoveryv1.EndpointSlice{slice("web", v4, 8080, ready("10.244.1.2", "node1"))},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080]\n203.0.113.7:80/tcp -> [10.244.1.2:8080]"},
		{"topology hints narrow to the node's zone", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("web", v4, 8080,
				ep{addr: "10.244.1.2", ready: true, zones: []string{"a"}}, ep{addr: "10.244.2.2", ready: true, zones: []string{"b"}})},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080]"},
		{"hints are ignored unless every endpoint has them", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("web", v4, 8080,
				ep{addr: "10.244.1.2", ready: true, zones: []string{"a"}}, ep{addr: "10.244.2.2", ready: true})},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080 10.244.2.2:8080]"},
		{"hints for other zones only: all endpoints", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("web", v4, 8080,
				ep{addr: "10.244.1.2", ready: true, zones: []string{"b"}}, ep{addr: "10.244.2.2", ready: true, zones: []string{"c"}})},
			"10.96.0.10:80/tcp -> [10.244.1.2:8080 10.244.2.2:8080]"},
		{"slices of other services and ports do not mix in", []*corev1.Service{svc("web")},
			[]*discoveryv1.EndpointSlice{slice("api", v4, 9090, ready("10.244.9.9", "node1")), func() *discoveryv1.EndpointSlice {
				s := slice("web", v4, 7070, ready("10.244.7.7", "node1"))
				other := "metrics"
				s.Ports[0].Name = &other
				return s
			}()}, "10.96.0.10:80/tcp -> []"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			entries, conflicts := Translate(tc.svcs, tc.slices, node)
			if len(conflicts) != 0 {
				t.Fatalf("conflicts %v", conflicts)
			}
			if got := render(entries); got != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestServiceIDs(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080}, {Name: "https", Port: 443, NodePort: 30443}}
	})
	entries, _ := Translate([]*corev1.Service{s}, nil, node)
	ids := map[string]uint32{}
	for _, e := range entries {
		if e.ID == 0 {
			t.Fatal("zero ID")
		}
		if prev, ok := ids[e.Name]; ok && prev != e.ID {
			t.Fatalf("%s has IDs %d and %d: the frontends of one port must share affinity", e.Name, prev, e.ID)
		}
		ids[e.Name] = e.ID
	}
	if len(ids) != 2 || ids["ns/web:http/tcp"] == ids["ns/web:https/tcp"] {
		t.Fatalf("ids %v", ids)
	}
	again, _ := Translate([]*corev1.Service{s}, nil, node)
	if again[0].ID != entries[0].ID {
		t.Fatal("IDs must be stable across runs (they key session affinity across restarts)")
	}
	// A collision takes the next value, and the same name keeps its ID.
	taken := map[uint32]string{}
	h := serviceID("y", map[uint32]string{})
	taken[h] = "z"
	if got := serviceID("y", taken); got != h+1 {
		t.Fatalf("collision: got %d, want %d", got, h+1)
	}
	if got := serviceID("y", taken); got != h+1 {
		t.Fatal("the same name got a different ID")
	}
}
