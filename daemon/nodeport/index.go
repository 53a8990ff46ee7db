package nodeport

import (
	"cmp"

	np "github.com/warpnet/warpnet/bpf/nodeport"
	"github.com/warpnet/warpnet/daemon/services"
)

// index is the north-south part of the desired state (the entries with
// external frontends), grouped by the load balancer's service key, so that
// a change of a few frontends is turned into the few services it touches:
// an incremental sync costs what changed, not what the cluster holds.
type index struct {
	entries map[services.Frontend]services.Entry         // external, not loopback
	byKey   map[np.ServiceKey]map[services.Frontend]bool // the frontends of each service
	hcPort  map[np.ServiceKey]uint16                     // each service's healthCheckNodePort, if any
	byPort  map[uint16]map[np.ServiceKey]bool            // the services of each health check port
}

func newIndex() *index {
	return &index{entries: map[services.Frontend]services.Entry{}, byKey: map[np.ServiceKey]map[services.Frontend]bool{},
		hcPort: map[np.ServiceKey]uint16{}, byPort: map[uint16]map[np.ServiceKey]bool{}}
}

// keyOf is the load balancer service an entry belongs to, if it is
// north-south's at all.
func keyOf(e services.Entry) (np.ServiceKey, bool) {
	if e.External == nil || e.Addr().IsLoopback() {
		return np.ServiceKey{}, false
	}
	return np.ServiceKey{ID: e.ID, IPv6: e.Addr().Is6()}, true
}

// set records fe's desired entry (ok false: fe has none) and adds the
// services whose content this may change to touched.
func (x *index) set(fe services.Frontend, e services.Entry, ok bool, touched map[np.ServiceKey]bool) {
	if old, had := x.entries[fe]; had {
		k, _ := keyOf(old)
		delete(x.entries, fe)
		delete(x.byKey[k], fe)
		if len(x.byKey[k]) == 0 {
			delete(x.byKey, k)
		}
		touched[k] = true
	}
	k, ext := keyOf(e)
	if !ok || !ext {
		return
	}
	x.entries[fe] = e
	if x.byKey[k] == nil {
		x.byKey[k] = map[services.Frontend]bool{}
	}
	x.byKey[k][fe] = true
	touched[k] = true
}

// service is what the load balancer should hold for k (false: nothing).
func (x *index) service(k np.ServiceKey, mode Mode, tableSize int) (np.Service, bool) {
	es := x.entriesOf(k)
	if len(es) == 0 {
		return np.Service{}, false
	}
	return Desired(es, mode, tableSize)[0], true
}

func (x *index) entriesOf(k np.ServiceKey) []services.Entry {
	out := make([]services.Entry, 0, len(x.byKey[k]))
	for fe := range x.byKey[k] {
		out = append(out, x.entries[fe])
	}
	return out
}

// health updates the health check ports of the touched services and
// returns what each port whose answer may have changed should now answer
// (absent from want: the port is no longer served).
func (x *index) health(touched map[np.ServiceKey]bool) (ports map[uint16]bool, want map[uint16]health) {
	ports = map[uint16]bool{}
	for k := range touched {
		if p := x.hcPort[k]; p != 0 {
			ports[p] = true
			delete(x.byPort[p], k)
			if len(x.byPort[p]) == 0 {
				delete(x.byPort, p)
			}
			delete(x.hcPort, k)
		}
		for fe := range x.byKey[k] {
			if p := x.entries[fe].External.HealthCheckNodePort; p != 0 {
				x.hcPort[k] = p
				if x.byPort[p] == nil {
					x.byPort[p] = map[np.ServiceKey]bool{}
				}
				x.byPort[p][k] = true
				ports[p] = true
			}
			break // every frontend of a service port has the same
		}
	}
	want = map[uint16]health{}
	for p := range ports {
		var es []services.Entry
		for k := range x.byPort[p] {
			es = append(es, x.entriesOf(k)...)
		}
		if h, ok := healthOf(es)[p]; ok {
			want[p] = h
		}
	}
	return ports, want
}

// compareKeys orders load balancer services by ID, IPv4 first.
func compareKeys(a, b np.ServiceKey) int {
	return cmp.Or(cmp.Compare(a.ID, b.ID), compareBool(a.IPv6, b.IPv6))
}
