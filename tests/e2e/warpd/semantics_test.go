package warpd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Kubernetes service semantics through warpd, with real sockets from a pod:
// each case dials one frontend and says which backends may answer (none:
// the frontend must not be translated, so the dial fails).
func TestServiceSemantics(t *testing.T) {
	forEachMode(t, testServiceSemantics)
}

func testServiceSemantics(t *testing.T, mode string) {
	c := newCluster(t, mode, "pod1", "pod2")
	doc := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [10.0.0.1, 10.0.0.99]
  ports:
  - {name: http, port: 80, protocol: TCP, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: %[1]d, protocol: TCP}, {name: dns, port: %[1]d, protocol: UDP}]
endpoints:
- {addresses: [%[2]s], conditions: {ready: true}, nodeName: node1}
- {addresses: [%[3]s], conditions: {ready: true}, nodeName: node2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: %[1]d, protocol: TCP}]
endpoints:
- {addresses: ["%[4]s"], conditions: {ready: true}, nodeName: node1}
- {addresses: ["%[5]s"], conditions: {ready: true}, nodeName: node2}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  clusterIP: 10.96.0.20
  internalTrafficPolicy: Local
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, port: %[1]d, protocol: TCP}]
endpoints:
- {addresses: [%[2]s], conditions: {ready: true}, nodeName: node1}
- {addresses: [%[3]s], conditions: {ready: true}, nodeName: node2}
`, backendPort, c.podIPs["pod1"], c.podIPs["pod2"], c.podIPs6["pod1"], c.podIPs6["pod2"])
	c.apply(doc)
	c.startWarpd()
	c.waitBackends(2)

	both, pod1Only, none := []string{"pod1", "pod2"}, []string{"pod1"}, []string(nil)
	cases := []struct {
		name  string
		socat string // socat address of the client end
		tries int
		allow []string
	}{
		{"ClusterIP TCP", "TCP:10.96.0.10:80", 20, both},
		{"ClusterIP IPv6", "TCP6:[fd00:96::10]:80", 20, both},
		{"IPv4-mapped IPv6 goes through the IPv4 path", "TCP6:[::ffff:10.96.0.10]:80", 20, both},
		{"unconnected UDP (sendmsg, recvmsg)", "UDP-SENDTO:10.96.0.10:53", 10, both},
		{"NodePort on loopback", "TCP:127.0.0.1:30080", 10, both},
		{"local ExternalIP", "TCP:10.0.0.1:80", 10, both},
		{"non-local ExternalIP is not translated", "TCP:10.0.0.99:80", 1, none},
		{"internalTrafficPolicy Local", "TCP:10.96.0.20:80", 10, pod1Only},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]int{}
			for i := 0; i < tc.tries; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				out, err := c.pods.Run(ctx, c.clientPod, "hello", "socat", "-T1", "-", tc.socat)
				cancel()
				server, echoed, ok := strings.Cut(strings.TrimSpace(out), ":")
				if tc.allow == nil {
					if err == nil && ok {
						t.Fatalf("answered by %s; want no translation", server)
					}
					continue
				}
				if err != nil || !ok || echoed != "hello" {
					t.Fatalf("%s: %v %q", tc.socat, err, out)
				}
				seen[server]++
			}
			for server := range seen {
				if !contains(tc.allow, server) {
					t.Fatalf("answered by %s, allowed %v (all: %v)", server, tc.allow, seen)
				}
			}
			if tc.tries >= 20 && len(seen) != len(tc.allow) {
				t.Fatalf("answers %v: want every one of %v", seen, tc.allow)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
