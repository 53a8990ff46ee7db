package services

import (
	"net/netip"
	"time"

	"github.com/warpnet/warpnet/internal/l4"
)

// Frontend is a service address as clients dial it: a ClusterIP, a local
// ExternalIP, a load balancer IP or a node address with a NodePort.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto l4.Protocol
}

func (f Frontend) String() string {
	return netip.AddrPortFrom(f.Addr, f.Port).String() + "/" + f.Proto.String()
}

// Backend is one endpoint of a service port, of the frontend's family.
type Backend struct {
	Addr netip.Addr
	Port uint16
}

func (b Backend) String() string { return netip.AddrPortFrom(b.Addr, b.Port).String() }

// Service is one frontend of a Kubernetes service port and what it leads to:
// the desired state of one entry of the load balancer.
type Service struct {
	Frontend
	// ID is a stable hash of the service port's name: the frontends of one
	// service port share it, and it keys session affinity across restarts.
	ID uint32
	// Backends, sorted by address and port; empty refuses connections.
	Backends []Backend
	// AffinityTimeout > 0 is ClientIP session affinity.
	AffinityTimeout time.Duration
}

// Entry is a Service with the Kubernetes service port it came from, for
// logs, metrics and warpctl.
type Entry struct {
	Name string // namespace/name:port/protocol
	Service
}

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
