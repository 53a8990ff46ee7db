package nodeport

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	np "github.com/warpnet/warpnet/bpf/nodeport"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/internal/l4"
)

var node = services.Node{Name: "n1", Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")}}

var clusterIPs = 10

func service(name string, mutate func(*corev1.Service)) *corev1.Service {
	clusterIPs++
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeNodePort,
			ClusterIP:  fmt.Sprintf("10.96.0.%d", clusterIPs),
			ClusterIPs: []string{fmt.Sprintf("10.96.0.%d", clusterIPs), fmt.Sprintf("fd00:96::%d", clusterIPs)},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, NodePort: 30080, Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP},
			},
		},
	}
	mutate(s)
	return s
}

func endpoints(svc string, family discoveryv1.AddressType, eps map[string]string) *discoveryv1.EndpointSlice {
	http, dns := "http", "dns"
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p8080, p5353 := int32(8080), int32(5353)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svc + "-" + string(family), Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: &http, Port: &p8080, Protocol: &tcp}, {Name: &dns, Port: &p5353, Protocol: &udp}},
	}
	for addr, nodeName := range eps {
		nodeName := nodeName
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: &nodeName})
	}
	return s
}

func render(svcs []np.Service) string {
	var lines []string
	for _, s := range svcs {
		lines = append(lines, fmt.Sprintf("%s %s fe=%v be=%v dsr=%v local=%v table=%d", s.Key(), s.Proto, s.Frontends, s.Backends, s.DSR, s.Local, s.TableSize))
	}
	return strings.Join(lines, "\n")
}

// Desired takes the external frontends of the translated entries, one
// service per service port and family: NodePorts on the node's addresses
// (not loopback, not the ClusterIP), local ExternalIPs, LoadBalancer IPs;
// the per-service mode annotation beats the node's; ETP Local keeps the
// node's backends only.
func TestDesired(t *testing.T) {
	svcs := []*corev1.Service{
		service("web", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalIPs = []string{"192.168.1.10", "192.168.1.99"} // the second is not local
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}
			s.Spec.Ports = s.Spec.Ports[:1]
		}),
		service("dns", func(s *corev1.Service) {
			s.Annotations = map[string]string{services.LBModeAnnotation: "dsr"}
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.Ports = s.Spec.Ports[1:]
		}),
		service("internal", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP }),
	}
	eps := []*discoveryv1.EndpointSlice{
		endpoints("web", discoveryv1.AddressTypeIPv4, map[string]string{"10.244.1.5": "n1", "10.244.2.5": "n2"}),
		endpoints("dns", discoveryv1.AddressTypeIPv4, map[string]string{"10.244.1.6": "n1", "10.244.2.6": "n2"}),
		endpoints("dns", discoveryv1.AddressTypeIPv6, map[string]string{"fd00:244:2::6": "n2"}),
		endpoints("internal", discoveryv1.AddressTypeIPv4, map[string]string{"10.244.1.7": "n1"}),
	}
	entries, rejected := services.Translate(svcs, eps, node)
	if len(rejected) != 0 {
		t.Fatal(rejected)
	}
	got := render(Desired(entries, SNAT, 0))
	id := func(name string) uint32 {
		for _, e := range entries {
			if e.Name == name {
				return e.ID
			}
		}
		t.Fatalf("no entry %s", name)
		return 0
	}
	want := []string{
		fmt.Sprintf("%d/IPv4 udp fe=[192.168.1.10:30053] be=[10.244.1.6:5353] dsr=true local=true table=%d", id("ns/dns:dns/udp"), np.DefaultTableSize),
		fmt.Sprintf("%d/IPv6 udp fe=[[fd00::10]:30053] be=[] dsr=true local=true table=%d", id("ns/dns:dns/udp"), np.DefaultTableSize),
		fmt.Sprintf("%d/IPv4 tcp fe=[192.168.1.10:80 192.168.1.10:30080 203.0.113.7:80] be=[10.244.1.5:8080 10.244.2.5:8080] dsr=false local=false table=%d", id("ns/web:http/tcp"), np.DefaultTableSize),
		fmt.Sprintf("%d/IPv6 tcp fe=[[fd00::10]:30080] be=[] dsr=false local=false table=%d", id("ns/web:http/tcp"), np.DefaultTableSize),
	}
	// sorted by ID
	if id("ns/web:http/tcp") < id("ns/dns:dns/udp") {
		want = append(want[2:], want[:2]...)
	}
	if got != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	// the node's mode applies where no annotation says otherwise
	for _, s := range Desired(entries, DSR, 1021) {
		if !s.DSR || s.TableSize != 1021 {
			t.Errorf("--lb-mode dsr, --lb-maglev-size 1021: %s has DSR %v, table %d", s.Key(), s.DSR, s.TableSize)
		}
	}
	// what Desired computes is what the maps read back: Same compares
	// every field
	a := Desired(entries, SNAT, 0)
	for i := range a {
		b := a[i]
		if !Same(a[i], b) {
			t.Fatal("Same is false for a copy")
		}
		for _, change := range []func(*np.Service){
			func(s *np.Service) { s.DSR = !s.DSR }, func(s *np.Service) { s.Local = !s.Local },
			func(s *np.Service) { s.Random = !s.Random }, func(s *np.Service) { s.TableSize = 1021 },
			func(s *np.Service) { s.Proto = l4.Protocol(99) },
			func(s *np.Service) {
				s.Backends = append(s.Backends[:len(s.Backends):len(s.Backends)], netip.MustParseAddrPort("10.0.0.1:1"))
			},
			func(s *np.Service) { s.Frontends = s.Frontends[1:] },
		} {
			c := a[i]
			change(&c)
			if Same(a[i], c) {
				t.Errorf("Same misses a change of %s", a[i].Key())
			}
		}
	}
}

// The health check port answers like kube-proxy's: 200 with the local
// endpoint count, 503 with none, and follows changes.
func TestHealthCheckNodePort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	hs := newHealthServers([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, slog.New(slog.DiscardHandler))
	defer hs.close()
	entry := func(backends ...string) []services.Entry {
		e := services.Entry{Name: "ns/web:http/tcp", External: &services.External{Local: true, HealthCheckNodePort: port}}
		for _, b := range backends {
			e.Backends = append(e.Backends, netip.MustParseAddrPort(b))
		}
		return []services.Entry{e}
	}
	get := func() (int, map[string]any) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var v map[string]any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		return resp.StatusCode, v
	}
	if err := hs.sync(healthOf(entry("10.244.1.5:8080", "10.244.1.6:8080"))); err != nil {
		t.Fatal(err)
	}
	code, v := get()
	if code != 200 || v["localEndpoints"] != float64(2) || fmt.Sprint(v["service"]) != "map[name:web namespace:ns]" {
		t.Errorf("two local endpoints: %d %v", code, v)
	}
	if err := hs.sync(healthOf(entry())); err != nil {
		t.Fatal(err)
	}
	if code, v := get(); code != 503 || v["localEndpoints"] != float64(0) {
		t.Errorf("no local endpoint: %d %v", code, v)
	}
	if err := hs.sync(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
		t.Error("the port still answers after its service is gone")
	}
}

// An incremental update touches only the ports it is given, and a port
// whose server could not start (taken) is retried by every later update,
// even one about other ports: incremental syncs would otherwise never
// come back to it.
func TestHealthServersRetryAPortThatWasTaken(t *testing.T) {
	taken, port, hs := heldPort(t)
	want := map[uint16]health{port: {namespace: "ns", name: "web", local: 1}}
	if err := hs.apply(map[uint16]bool{port: true}, want); err == nil {
		t.Fatal("serving a port another socket holds did not fail")
	}
	taken.Close()
	// an update about nothing else: the port is retried
	if err := hs.apply(nil, nil); err != nil {
		t.Fatalf("retry once the port is free: %v", err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatalf("the health check port is not served after the retry: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("health check: %d, want 200", resp.StatusCode)
	}
	// an update about another port leaves this one alone
	if err := hs.apply(map[uint16]bool{port + 1: true}, nil); err != nil {
		t.Fatal(err)
	}
	if hs.ports[port] == nil {
		t.Error("an update about another port stopped this one")
	}
}

// A port that could not be opened and is no longer wanted at the next full
// sync is forgotten, not retried by a later update.
func TestHealthServersForgetAFailedPortNoLongerWanted(t *testing.T) {
	taken, port, hs := heldPort(t)
	if err := hs.sync(map[uint16]health{port: {namespace: "ns", name: "web", local: 1}}); err == nil {
		t.Fatal("serving a port another socket holds did not fail")
	}
	if err := hs.sync(nil); err != nil {
		t.Fatal(err)
	}
	taken.Close()
	if err := hs.apply(nil, nil); err != nil {
		t.Fatal(err)
	}
	if hs.ports[port] != nil || len(hs.failed) != 0 {
		t.Errorf("a port no longer wanted is served (%v) or retried (%v)", hs.ports[port] != nil, hs.failed)
	}
}

// heldPort returns a port of 127.0.0.1 another socket holds (close taken
// to free it) and health servers on 127.0.0.1.
func heldPort(t *testing.T) (taken net.Listener, port uint16, hs *healthServers) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs = newHealthServers([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, slog.New(slog.DiscardHandler))
	t.Cleanup(hs.close)
	return taken, uint16(taken.Addr().(*net.TCPAddr).Port), hs
}
