package services

import (
	"net/netip"
	"time"

	"github.com/warpnet/warpnet/internal/l4"
)

// Frontend is a service address as clients dial it (a ClusterIP, a local
// ExternalIP, a load balancer IP or a node address with a NodePort) and its
// protocol.
type Frontend struct {
	netip.AddrPort
	Proto l4.Protocol
}

func (f Frontend) String() string { return f.AddrPort.String() + "/" + f.Proto.String() }

// Service is one frontend of a Kubernetes service port and what it leads to:
// the desired state of one entry of the load balancer.
type Service struct {
	Frontend
	// ID is a stable hash of the service port's name: the frontends of one
	// service port share it, and it keys session affinity across restarts.
	ID uint32
	// Backends (endpoint addresses and target ports, of the frontend's
	// family), sorted; empty refuses connections.
	Backends []netip.AddrPort
	// AffinityTimeout > 0 is ClientIP session affinity.
	AffinityTimeout time.Duration
}

// Entry is a Service with the Kubernetes service port it came from, for
// logs, metrics and warpctl.
type Entry struct {
	Name string // namespace/name:port/protocol
	Service
	// External is set for frontends reached from outside the cluster
	// (NodePorts, local ExternalIPs, LoadBalancer ingress IPs): the
	// north-south load balancer (daemon/nodeport) serves those too.
	External *External
}

// External is what the north-south load balancer needs beyond Service.
type External struct {
	// Local is externalTrafficPolicy: Local: Backends are this node's
	// only, and the client's address must be kept.
	Local bool
	// Mode is the service's LBModeAnnotation ("" = the node's default).
	Mode string
	// HealthCheckNodePort is the port of the service's health check
	// (externalTrafficPolicy: Local on a LoadBalancer service), 0 if none.
	HealthCheckNodePort uint16
	// NodePort is true when the frontend is a node address with the
	// service's NodePort (not an ExternalIP or load balancer IP).
	NodePort bool
}

// LBModeAnnotation on a Service chooses how the north-south load balancer
// forwards its external traffic to backends on other nodes: "snat" (the
// replies come back through the node) or "dsr" (the backend's node
// answers the client directly). Absent: warpd's --lb-mode.
const LBModeAnnotation = "warpnet.io/lb-mode"

// Rejected is an object, or part of one, that warpd does not apply as
// written, and why.
type Rejected struct {
	Kind            string // Service or EndpointSlice
	Namespace, Name string
	Reason          string
	// Kept is true when an earlier valid version of the object stays in
	// force instead; false when nothing of it is applied.
	Kept bool
}

// Key names the object: "Kind namespace/name".
func (r Rejected) Key() string { return r.Kind + " " + r.Namespace + "/" + r.Name }
