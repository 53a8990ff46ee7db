// Package status is warpd's status report: what warpd serves as JSON on
// /status and what `warpctl warpd status` reads and prints. It holds only
// the types, so warpctl does not pull in the daemon.
package status

import "time"

// Path is where warpd serves the report.
const Path = "/status"

// Status is warpd's view of itself.
type Status struct {
	Version string `json:"version"`
	Node    string `json:"node"`
	Source  string `json:"source"` // "file /path" or "API server https://..."
	// Healthy is what /healthz says; Unhealthy says why not.
	Healthy   bool   `json:"healthy"`
	Unhealthy string `json:"unhealthy,omitempty"`
	// SourceProblem is why the source cannot be followed now (a file that
	// cannot be read or parsed); the last good state stays in force.
	SourceProblem string `json:"sourceProblem,omitempty"`
	// LastSync is the last sync attempt, LastGoodSync the last that
	// succeeded entirely.
	LastSync     *Sync     `json:"lastSync,omitempty"`
	LastGoodSync time.Time `json:"lastGoodSync,omitzero"`
	// Maps is how full the load balancer's maps are.
	Maps []MapFill `json:"maps"`
	// Rejected lists the objects warpd does not apply as written.
	Rejected []Rejected `json:"rejected"`
	// Network is node networking (routes to other nodes' pods,
	// masquerading, the facts published for the plugins); nil when warpd
	// runs with --routing none.
	Network *Network `json:"network,omitempty"`
}

// Network is the state of node networking.
type Network struct {
	Routing    string `json:"routing"` // native, vxlan or auto
	Masquerade bool   `json:"masquerade"`
	// Waiting says why nothing is programmed yet (this node's Node object
	// is not known).
	Waiting  string   `json:"waiting,omitempty"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	MTU      int      `json:"mtu,omitempty"` // published for pods
	Facts    string   `json:"facts"`         // where the plugins read it
	Peers    []Peer   `json:"peers"`
	LastSync *Sync    `json:"lastSync,omitempty"` // Upserted/Deleted: entries added/removed
}

// Peer is how another node's pods are reached.
type Peer struct {
	Name     string   `json:"name"`
	Path     string   `json:"path"` // native, tunnel or unreachable
	Via      string   `json:"via,omitempty"`
	PodCIDRs []string `json:"podCIDRs"`
	Problem  string   `json:"problem,omitempty"`
}

// Sync is one sync of the maps with the source.
type Sync struct {
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration"`
	Upserted int           `json:"upserted"`
	Deleted  int           `json:"deleted"`
	Skipped  int           `json:"skipped"` // already as desired
	Error    string        `json:"error,omitempty"`
}

// MapFill is one map's use against its capacity.
type MapFill struct {
	Map      string  `json:"map"` // "services" (frontends) or "backends"
	Used     int     `json:"used"`
	Capacity int     `json:"capacity"`
	Ratio    float64 `json:"ratio"`
}

// Rejected is an object, or part of one, that warpd does not apply as
// written.
type Rejected struct {
	Kind      string `json:"kind"` // Service or EndpointSlice
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
	// Kept: the last valid version of the object stays in force.
	Kept  bool      `json:"kept"`
	Since time.Time `json:"since"`
}
