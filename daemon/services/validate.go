package services

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// CheckService returns why warpd cannot translate svc as written, naming
// each bad field, or nil. It checks what translation relies on: an API
// server enforces most of it already, but a services file does not, and an
// API server in its default (non-strict) mode accepts IPv4 addresses with
// leading zeros, which are ambiguous (octal or decimal?) and refused here.
// Services that warpd leaves alone (ExternalName, another proxy's) pass.
func CheckService(svc *corev1.Service) error {
	var errs fieldErrors
	if svc.Name == "" {
		errs.add("metadata.name", "is required")
	}
	if svc.Labels[ProxyNameLabel] != "" {
		return errs.err()
	}
	switch svc.Spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case corev1.ServiceTypeExternalName:
		return errs.err()
	default:
		errs.add("spec.type", "%q is not ClusterIP, NodePort, LoadBalancer or ExternalName", svc.Spec.Type)
	}
	switch m := svc.Annotations[LBModeAnnotation]; m {
	case "", "snat", "dsr":
	default:
		errs.add("metadata.annotations["+LBModeAnnotation+"]", "%q is not snat or dsr", m)
	}
	if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		errs.ip("spec.clusterIP", ip)
	}
	for i, ip := range svc.Spec.ClusterIPs {
		if ip != corev1.ClusterIPNone {
			errs.ip(fmt.Sprintf("spec.clusterIPs[%d]", i), ip)
		}
	}
	for i, ip := range svc.Spec.ExternalIPs {
		errs.ip(fmt.Sprintf("spec.externalIPs[%d]", i), ip)
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for i, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP != "" {
				errs.ip(fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), ing.IP)
			}
		}
	}
	switch svc.Spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone:
	case corev1.ServiceAffinityClientIP:
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if s := *c.ClientIP.TimeoutSeconds; s < 1 || s > 86400 {
				errs.add("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "%d is not within 1..86400", s)
			}
		}
	default:
		errs.add("spec.sessionAffinity", "%q is not None or ClientIP", svc.Spec.SessionAffinity)
	}
	if p := svc.Spec.InternalTrafficPolicy; p != nil {
		errs.policy("spec.internalTrafficPolicy", string(*p))
	}
	errs.policy("spec.externalTrafficPolicy", string(svc.Spec.ExternalTrafficPolicy))
	// Two ports with one (port, protocol), NodePort or name would program
	// one frontend twice, or share an ID between different ports.
	ports, nodePorts, names := map[string]int{}, map[string]int{}, map[string]int{}
	for i, p := range svc.Spec.Ports {
		at := fmt.Sprintf("spec.ports[%d]", i)
		proto := p.Protocol
		switch proto {
		case "":
			proto = corev1.ProtocolTCP
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			errs.add(at+".protocol", "%q is not TCP, UDP or SCTP", p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			errs.add(at+".port", "%d is not within 1..65535", p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			errs.add(at+".nodePort", "%d is not within 0..65535", p.NodePort)
		}
		if j, dup := ports[fmt.Sprint(p.Port, proto)]; dup {
			errs.add(at, "duplicate port %d/%s (also spec.ports[%d])", p.Port, proto, j)
		}
		ports[fmt.Sprint(p.Port, proto)] = i
		if p.NodePort != 0 {
			if j, dup := nodePorts[fmt.Sprint(p.NodePort, proto)]; dup {
				errs.add(at+".nodePort", "duplicate node port %d/%s (also spec.ports[%d])", p.NodePort, proto, j)
			}
			nodePorts[fmt.Sprint(p.NodePort, proto)] = i
		}
		if j, dup := names[p.Name]; dup {
			errs.add(at+".name", "duplicate port name %q (also spec.ports[%d])", p.Name, j)
		}
		names[p.Name] = i
	}
	return errs.err()
}

// CheckEndpointSlice returns why warpd cannot use es as written, naming each
// bad field, or nil. Endpoint addresses must be valid, canonical addresses
// of the slice's family, and like the API server warpd refuses the
// unspecified, loopback and link-local ranges: such a backend would send a
// pod's connections to the pod itself.
func CheckEndpointSlice(es *discoveryv1.EndpointSlice) error {
	var errs fieldErrors
	if es.Name == "" {
		errs.add("metadata.name", "is required")
	}
	v4 := es.AddressType == discoveryv1.AddressTypeIPv4
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6:
	case discoveryv1.AddressTypeFQDN:
		return errs.err() // not load balanced: nothing of it is used
	default:
		errs.add("addressType", "%q is not IPv4, IPv6 or FQDN", es.AddressType)
		return errs.err()
	}
	for i, ep := range es.Endpoints {
		for j, a := range ep.Addresses {
			at := fmt.Sprintf("endpoints[%d].addresses[%d]", i, j)
			addr, ok := errs.ip(at, a)
			switch {
			case !ok:
			case addr.Is4() != v4:
				errs.add(at, "%s is not of addressType %s", a, es.AddressType)
			case addr.IsUnspecified(), addr.IsLoopback(), addr.IsLinkLocalUnicast(), addr.IsLinkLocalMulticast():
				errs.add(at, "%s is unspecified, loopback or link-local", a)
			}
		}
	}
	for i, p := range es.Ports {
		if p.Port != nil && (*p.Port < 1 || *p.Port > 65535) {
			errs.add(fmt.Sprintf("ports[%d].port", i), "%d is not within 1..65535", *p.Port)
		}
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			default:
				errs.add(fmt.Sprintf("ports[%d].protocol", i), "%q is not TCP, UDP or SCTP", *p.Protocol)
			}
		}
	}
	return errs.err()
}

// fieldErrors collects "field: problem" messages.
type fieldErrors []string

func (e *fieldErrors) add(field, format string, args ...any) {
	*e = append(*e, field+": "+fmt.Sprintf(format, args...))
}

// ip parses s as an address in its canonical form (no leading zeros, no
// zone; IPv4-mapped IPv6 counts as IPv4).
func (e *fieldErrors) ip(field, s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		e.add(field, "%q is not a valid IP address (%v)", s, strings.TrimPrefix(err.Error(), fmt.Sprintf("ParseAddr(%q): ", s)))
		return a, false
	}
	if a.Zone() != "" {
		e.add(field, "%q has a zone", s)
		return a, false
	}
	return a.Unmap(), true
}

// policy checks a traffic policy ("" is the default, Cluster).
func (e *fieldErrors) policy(field, p string) {
	if p != "" && p != "Cluster" && p != "Local" {
		e.add(field, "%q is not Cluster or Local", p)
	}
}

func (e fieldErrors) err() error {
	if len(e) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(e, "; "))
}
