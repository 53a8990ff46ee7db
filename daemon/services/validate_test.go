package services

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestCheckService(t *testing.T) {
	sec := func(s int32) *int32 { return &s }
	for _, tc := range []struct {
		name   string
		mutate func(*corev1.Service)
		want   string // "" = valid
	}{
		{"valid", func(*corev1.Service) {}, ""},
		{"IPv4 out of range", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.999", nil },
			`spec.clusterIP: "10.96.0.999" is not a valid IP address`},
		{"invalid IPv6", func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00::96::10"} },
			`spec.clusterIPs[1]: "fd00::96::10" is not a valid IP address`},
		{"leading zeros (accepted by a non-strict API server)", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "lb.example"}, {IP: "203.0.113.007"}}
		}, `status.loadBalancer.ingress[1].ip: "203.0.113.007" is not a valid IP address (IPv4 field has octet with leading zero)`},
		{"ingress of a non-LoadBalancer is not used, so not checked", func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "nonsense"}}
		}, ""},
		{"external IP", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"1.2.3"} }, `spec.externalIPs[0]`},
		{"north-south mode annotation", func(s *corev1.Service) { s.Annotations = map[string]string{LBModeAnnotation: "dsr"} }, ""},
		{"unknown north-south mode", func(s *corev1.Service) { s.Annotations = map[string]string{LBModeAnnotation: "direct"} },
			`metadata.annotations[warpnet.io/lb-mode]: "direct" is not snat or dsr`},
		{"headless is fine", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }, ""},
		{"duplicate port and protocol", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "again", Port: 80})
		}, "spec.ports[1]: duplicate port 80/TCP (also spec.ports[0])"},
		{"same port, other protocol is fine", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 80, Protocol: corev1.ProtocolUDP})
		}, ""},
		{"duplicate name", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "http", Port: 81})
		}, `spec.ports[1].name: duplicate port name "http"`},
		{"duplicate node port", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports = []corev1.ServicePort{{Name: "a", Port: 80, NodePort: 30080}, {Name: "b", Port: 81, NodePort: 30080}}
		}, "spec.ports[1].nodePort: duplicate node port 30080/TCP"},
		{"port out of range", func(s *corev1.Service) { s.Spec.Ports[0].Port = 70000 }, "spec.ports[0].port: 70000 is not within 1..65535"},
		{"unknown protocol", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = "TPC" }, `spec.ports[0].protocol: "TPC"`},
		{"affinity typo", func(s *corev1.Service) { s.Spec.SessionAffinity = "ClientIp" }, `spec.sessionAffinity: "ClientIp"`},
		{"affinity timeout", func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: sec(0)}}
		}, "timeoutSeconds: 0 is not within 1..86400"},
		{"traffic policy", func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = "local" }, `spec.externalTrafficPolicy: "local"`},
		{"every problem is named", func(s *corev1.Service) { s.Spec.ClusterIP = "x"; s.Spec.Ports[0].Port = 0 },
			`spec.clusterIP: "x" is not a valid IP address (unable to parse IP); spec.ports[0].port: 0`},
		{"another proxy's service is not ours to check", func(s *corev1.Service) {
			s.Labels = map[string]string{ProxyNameLabel: "other"}
			s.Spec.ClusterIP = "x"
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) { wantError(t, CheckService(svc("web", tc.mutate)), tc.want) })
	}
}

func TestCheckEndpointSlice(t *testing.T) {
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	for _, tc := range []struct {
		name string
		es   *discoveryv1.EndpointSlice
		want string
	}{
		{"valid", slice("web", v4, 8080, ready("10.244.1.2", "n")), ""},
		{"leading zeros", slice("web", v4, 8080, ready("10.244.1.2", "n"), ready("10.244.001.002", "n")),
			`endpoints[1].addresses[0]: "10.244.001.002" is not a valid IP address`},
		{"family", slice("web", v6, 8080, ready("10.244.1.2", "n")), "endpoints[0].addresses[0]: 10.244.1.2 is not of addressType IPv6"},
		{"loopback", slice("web", v4, 8080, ready("127.0.0.1", "n")), "is unspecified, loopback or link-local"},
		{"port", slice("web", v4, 0, ready("10.244.1.2", "n")), "ports[0].port: 0 is not within 1..65535"},
		{"FQDN slices are not used", func() *discoveryv1.EndpointSlice {
			s := slice("web", discoveryv1.AddressTypeFQDN, 8080, ready("db.example", "n"))
			return s
		}(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) { wantError(t, CheckEndpointSlice(tc.es), tc.want) })
	}
}

// wantError fails unless err says want ("": no error).
func wantError(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("rejected: %v", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Fatalf("error %v, want it to say %q", err, want)
	}
}

// A broken edit keeps the object's last valid version; others are not
// affected; deleting the object forgets it.
func TestTrackerKeepsLastGood(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	tr := NewTracker(node)
	good := svc("web")
	other := svc("api", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", nil })
	es := slice("web", v4, 8080, ready("10.244.1.2", "node1"))
	tr.Update(NewListView([]*corev1.Service{good, other}, []*discoveryv1.EndpointSlice{es}), nil)
	if rej := tr.Rejected(); len(rej) != 0 {
		t.Fatalf("all valid: %v", rej)
	}

	broken := svc("web", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.999", nil })
	badSlice := slice("web", v4, 8080, ready("10.244.1.2", "node1"), ready("10.244.1.300", "node1"))
	fresh := svc("new", func(s *corev1.Service) { s.Spec.ClusterIP = "nope" })
	tr.Update(NewListView([]*corev1.Service{broken, other, fresh}, []*discoveryv1.EndpointSlice{badSlice}), nil)
	rej := tr.Rejected()
	if len(rej) != 3 || rej[0].Name != "new" || rej[0].Kept || rej[1].Kind != "EndpointSlice" || !rej[1].Kept ||
		!strings.Contains(rej[1].Reason, "10.244.1.300") || !rej[2].Kept || rej[2].Name != "web" {
		t.Fatalf("rejected %+v", rej)
	}
	if got := render(tr.Entries()); got != "10.96.0.11:80/tcp -> []\n10.96.0.10:80/tcp -> [10.244.1.2:8080]" {
		t.Fatalf("want the last good web and its slice, api untouched, new left out:\n%s", got)
	}

	// Still broken on the next round: still the last good one (its slice
	// is gone: so are its endpoints).
	tr.Update(NewListView([]*corev1.Service{broken}, nil), nil)
	if got, rej := render(tr.Entries()), tr.Rejected(); got != "10.96.0.10:80/tcp -> []" || len(rej) != 1 {
		t.Fatalf("second round %s %v", got, rej)
	}
	// Deleted: gone, even though its last version was broken.
	tr.Update(NewListView(nil, nil), nil)
	if got, rej := render(tr.Entries()), tr.Rejected(); got != "" || len(rej) != 0 {
		t.Fatalf("after delete %s %v", got, rej)
	}
	// Re-created broken: nothing to keep.
	tr.Update(NewListView([]*corev1.Service{broken}, nil), nil)
	if got, rej := render(tr.Entries()), tr.Rejected(); got != "" || len(rej) != 1 || rej[0].Kept {
		t.Fatalf("re-created broken %s %v", got, rej)
	}
}

// Two services claiming one frontend: the first by name keeps it, and the
// other's claim is reported, so the maps and the metrics agree.
func TestTranslateFrontendConflict(t *testing.T) {
	a := svc("a", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.168.1.10"} })
	b := svc("b", func(s *corev1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", nil
		s.Spec.ExternalIPs = []string{"192.168.1.10"}
	})
	entries, conflicts := Translate([]*corev1.Service{b, a}, nil, node)
	if got := render(entries); got != "10.96.0.10:80/tcp -> []\n192.168.1.10:80/tcp -> []\n10.96.0.11:80/tcp -> []" {
		t.Fatalf("entries\n%s", got)
	}
	if len(conflicts) != 1 || conflicts[0].Name != "b" || !strings.Contains(conflicts[0].Reason, "192.168.1.10:80/tcp is already ns/a:http/tcp's") {
		t.Fatalf("conflicts %+v", conflicts)
	}
}
