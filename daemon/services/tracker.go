package services

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// View is a source's current Services and EndpointSlices, read only: what
// a Tracker reads when a service changed.
type View interface {
	// Service returns the Service namespace/name, if there is one.
	Service(key string) (*corev1.Service, bool)
	// EndpointSlices returns the EndpointSlices labelled for the Service
	// namespace/name (kubernetes.io/service-name).
	EndpointSlices(key string) []*discoveryv1.EndpointSlice
	// ServiceKeys lists every namespace/name that has a Service or
	// EndpointSlices.
	ServiceKeys() []string
}

// Tracker keeps warpd's desired state up to date one Service at a time,
// as kube-proxy's change trackers do: when a Service or one of its
// EndpointSlices changes, only that service is checked and translated
// again, and Update says which frontends changed. A frontend claimed by
// two services belongs to the first by namespace/name, as in Translate.
// Not safe for concurrent use.
type Tracker struct {
	node     Node
	svcs     map[string]*tracked   // by service key
	claims   map[Frontend][]string // keys of the services claiming a frontend, sorted
	desired  map[Frontend]Entry    // the entry each frontend has: its first claimant's
	ids      map[uint32]string     // service id -> service port name
	backends int                   // backend entries summed over desired
}

// tracked is what a Tracker knows of one service. It holds 10,000s of
// them: small slices searched in order, not maps (a map costs hundreds of
// bytes even for one entry), and nil when empty.
type tracked struct {
	svc      *corev1.Service              // in force: valid, or the last valid version
	slices   []*discoveryv1.EndpointSlice // in force, sorted by name
	rejected map[string]Rejected          // by Rejected.Key; nil: none (the usual case)
	entries  []Entry                      // what it asks for, in translation order
	order    []int32                      // indexes of entries, sorted by frontend
	ids      []portID                     // its service ports' ids, sorted by name
}

// portID is the id given to a service port's name.
type portID struct {
	name string
	id   uint32
}

// entry returns the entry of fe in tr.entries: a binary search, since a
// service may have tens of thousands of ports.
func (tr *tracked) entry(fe Frontend) (Entry, bool) {
	i, found := slices.BinarySearchFunc(tr.order, fe, func(j int32, fe Frontend) int { return tr.entries[j].Frontend.compare(fe) })
	if !found {
		return Entry{}, false
	}
	return tr.entries[tr.order[i]], true
}

func (f Frontend) compare(g Frontend) int {
	return cmp.Or(f.AddrPort.Compare(g.AddrPort), cmp.Compare(f.Proto, g.Proto))
}

// slice returns the slice named name in force, nil if none (tr.slices is
// sorted by name).
func (tr *tracked) slice(name string) *discoveryv1.EndpointSlice {
	if tr == nil {
		return nil
	}
	i, found := slices.BinarySearchFunc(tr.slices, name, func(s *discoveryv1.EndpointSlice, name string) int { return strings.Compare(s.Name, name) })
	if !found {
		return nil
	}
	return tr.slices[i]
}

// NewTracker returns an empty tracker for node.
func NewTracker(node Node) *Tracker {
	return &Tracker{node: node, svcs: map[string]*tracked{}, claims: map[Frontend][]string{},
		desired: map[Frontend]Entry{}, ids: map[uint32]string{}}
}

// Update reads the services keys names from v again (all of them, and
// forgets those the tracker knows but v lacks, when keys is nil) and returns
// the frontends whose desired entry changed: added, changed or removed.
// Services are visited in key order, so that service IDs are assigned as
// Translate assigns them.
func (t *Tracker) Update(v View, keys []string) []Frontend {
	if keys == nil {
		all := map[string]bool{}
		for _, k := range v.ServiceKeys() {
			all[k] = true
		}
		for k := range t.svcs {
			all[k] = true
		}
		for k := range all {
			keys = append(keys, k)
		}
	}
	keys = slices.Clone(keys)
	sort.Strings(keys)
	keys = slices.Compact(keys)
	touched := map[Frontend]bool{}
	for _, key := range keys {
		t.update(v, key, touched)
	}
	var changed []Frontend
	for fe := range touched {
		var want Entry
		ok := false
		if owners := t.claims[fe]; len(owners) > 0 {
			want, ok = t.svcs[owners[0]].entry(fe)
		}
		cur, had := t.desired[fe]
		switch {
		case ok && had && reflect.DeepEqual(cur, want):
			continue
		case ok:
			t.backends += len(want.Backends) - len(cur.Backends)
			t.desired[fe] = want
		case had:
			t.backends -= len(cur.Backends)
			delete(t.desired, fe)
		default:
			continue
		}
		changed = append(changed, fe)
	}
	sort.Slice(changed, func(i, j int) bool { return changed[i].String() < changed[j].String() })
	return changed
}

// update screens and translates one service again and notes the
// frontends whose claims it touched.
func (t *Tracker) update(v View, key string, touched map[Frontend]bool) {
	old := t.svcs[key]
	cur := &tracked{}
	reject := func(r Rejected) {
		if cur.rejected == nil {
			cur.rejected = map[string]Rejected{}
		}
		cur.rejected[r.Key()] = r
	}
	var prevSvc *corev1.Service
	if old != nil {
		prevSvc = old.svc
	}
	if svc, ok := v.Service(key); ok {
		cur.svc = screenOne(prevSvc, svc, "Service", CheckService, reject)
	}
	for _, s := range v.EndpointSlices(key) {
		if use := screenOne(old.slice(s.Name), s, "EndpointSlice", CheckEndpointSlice, reject); use != nil {
			cur.slices = append(cur.slices, use)
		}
	}
	slices.SortFunc(cur.slices, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	if cur.svc != nil && !skip(cur.svc) {
		cur.entries = translateService(cur.svc, cur.slices, t.node, func(name string) uint32 {
			id := serviceID(name, t.ids)
			cur.ids = append(cur.ids, portID{name, id})
			return id
		})
	}
	byName := func(a, b portID) int { return strings.Compare(a.name, b.name) }
	slices.SortFunc(cur.ids, byName)
	// Ports the service no longer has give their ids back.
	if old != nil {
		for _, p := range old.ids {
			_, still := slices.BinarySearchFunc(cur.ids, p, byName)
			if !still && t.ids[p.id] == p.name {
				delete(t.ids, p.id)
			}
		}
		for _, e := range old.entries {
			t.unclaim(e.Frontend, key)
			touched[e.Frontend] = true
		}
	}
	cur.order = make([]int32, len(cur.entries))
	for i := range cur.order {
		cur.order[i] = int32(i)
	}
	slices.SortFunc(cur.order, func(i, j int32) int { return cur.entries[i].Frontend.compare(cur.entries[j].Frontend) })
	for _, e := range cur.entries {
		t.claim(e.Frontend, key)
		touched[e.Frontend] = true
	}
	if cur.svc == nil && len(cur.slices) == 0 && len(cur.rejected) == 0 {
		delete(t.svcs, key)
		return
	}
	t.svcs[key] = cur
}

func (t *Tracker) claim(fe Frontend, key string) {
	owners := t.claims[fe]
	i, found := slices.BinarySearch(owners, key)
	if !found {
		t.claims[fe] = slices.Insert(owners, i, key)
	}
}

func (t *Tracker) unclaim(fe Frontend, key string) {
	owners := t.claims[fe]
	if i, found := slices.BinarySearch(owners, key); found {
		owners = slices.Delete(owners, i, i+1)
	}
	if len(owners) == 0 {
		delete(t.claims, fe)
	} else {
		t.claims[fe] = owners
	}
}

// Desired returns the entry of a frontend, if it has one.
func (t *Tracker) Desired(fe Frontend) (Entry, bool) {
	e, ok := t.desired[fe]
	return e, ok
}

// Entries returns every desired entry, ordered by service key and then as
// the service's ports and frontends are.
func (t *Tracker) Entries() []Entry {
	out := make([]Entry, 0, len(t.desired))
	for _, key := range sortedKeys(t.svcs) {
		for _, e := range t.svcs[key].entries {
			if owners := t.claims[e.Frontend]; len(owners) > 0 && owners[0] == key {
				out = append(out, e)
			}
		}
	}
	return out
}

// Size is how much the desired state holds: frontends, and backend
// entries summed over them (what the load balancer's maps must hold).
func (t *Tracker) Size() (frontends, backends int) { return len(t.desired), t.backends }

// Rejected lists the objects not applied as written: Invalid and
// Conflicts.
func (t *Tracker) Rejected() []Rejected { return append(t.Invalid(), t.Conflicts()...) }

// Invalid lists the objects that fail their checks (ordered by service
// key): their last valid version stays in force, if they had one.
func (t *Tracker) Invalid() []Rejected {
	var out []Rejected
	for _, key := range sortedKeys(t.svcs) {
		tr := t.svcs[key]
		for _, rk := range sortedKeys(tr.rejected) {
			out = append(out, tr.rejected[rk])
		}
	}
	return out
}

// Conflicts lists the claims of services on frontends that another
// service (the first by namespace/name) has, ordered by service key.
func (t *Tracker) Conflicts() []Rejected {
	var out []Rejected
	for _, key := range sortedKeys(t.svcs) {
		tr := t.svcs[key]
		for _, e := range tr.entries {
			if owners := t.claims[e.Frontend]; len(owners) > 0 && owners[0] != key {
				out = append(out, Rejected{Kind: "Service", Namespace: tr.svc.Namespace, Name: tr.svc.Name,
					Reason: fmt.Sprintf("frontend %s is already %s's; this service's claim is ignored", e.Frontend, t.desired[e.Frontend].Name)})
			}
		}
	}
	return out
}

// screenOne applies LastGood's rule to one object: a valid object is in
// force; an invalid one is rejected and its last valid version (prev, if
// any) stays in force. It returns what is in force (nil: nothing) and
// passes a rejection to reject.
func screenOne[T object](prev, obj T, kind string, check func(T) error, reject func(Rejected)) T {
	err := check(obj)
	if err == nil {
		return obj
	}
	kept := !isNil(prev)
	reject(Rejected{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName(), Reason: err.Error(), Kept: kept})
	return prev
}

func isNil[T any](v T) bool {
	rv := reflect.ValueOf(&v).Elem()
	return rv.Kind() == reflect.Pointer && rv.IsNil() || rv.Kind() == reflect.Invalid
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

type object interface {
	GetNamespace() string
	GetName() string
}
