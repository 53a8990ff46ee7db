package harness

import (
	"fmt"
	"net/netip"
	"strings"
)

// ServiceYAML returns a ClusterIP Service with one port (named "p": port to
// target, protocol "TCP" or "UDP") and the EndpointSlice of its ready
// endpoints (addresses of clusterIP's family, taken as written), as the
// YAML that warpd's --services-file and apiserver.Apply take. Documents
// concatenate.
func ServiceYAML(namespace, name, clusterIP, proto string, port, target int, endpoints ...string) string {
	family := "IPv4"
	if a, err := netip.ParseAddr(clusterIP); err == nil && a.Is6() {
		family = "IPv6"
	}
	eps := " []"
	if len(endpoints) > 0 {
		var b strings.Builder
		for _, e := range endpoints {
			fmt.Fprintf(&b, "\n- {addresses: [%q], conditions: {ready: true}}", e)
		}
		eps = b.String()
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s}
spec: {clusterIP: %[3]q, clusterIPs: [%[3]q], ports: [{name: p, port: %[5]d, protocol: %[4]s, targetPort: %[6]d}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[2]s-1, namespace: %[1]s, labels: {kubernetes.io/service-name: %[2]s}}
addressType: %[7]s
ports: [{name: p, port: %[6]d, protocol: %[4]s}]
endpoints:%[8]s
`, namespace, name, clusterIP, proto, port, target, family, eps)
}
