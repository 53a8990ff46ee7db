// Package reconcile brings the load balancer's maps to warpd's desired state
// (daemon/services), changing only what differs: after a restart warpd
// adopts the pinned maps and rewrites only what is stale, so traffic never
// sees an empty table, and unchanged services keep their backend IDs (and
// with them session affinity and the UDP sockets stuck to a backend). It is
// the one place that converts between warpd's types and the bpf package's.
package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/internal/l4"
)

// Maps is the part of servicelb.LB the reconciler needs.
type Maps interface {
	Services() ([]servicelb.Service, error)
	Upsert(servicelb.Service) error
	Delete(servicelb.Frontend) error
}

// Stats says what a sync changed and what the maps hold afterwards.
type Stats struct {
	// Services and Backends count the frontends and backend entries in
	// the maps after the sync (what is programmed, not what was asked
	// for: entries that failed are not counted, stale ones that could not
	// be deleted are).
	Services, Backends int
	// Counted is false when the maps could not be read: then Services
	// and Backends are unknown.
	Counted                    bool
	Upserted, Deleted, Skipped int
	// Removed lists backends that a frontend no longer has (or whose
	// frontend is gone), for every change that was made, also when
	// others failed: sockets still talking to them are stale.
	Removed []Removed
}

// Removed is a backend taken out of a frontend.
type Removed struct {
	Backend netip.AddrPort
	Proto   l4.Protocol
}

// Reconciler keeps the maps equal to the desired state. It remembers what
// the maps hold (read once by Full, kept up to date by its own writes), so
// that Apply, given the frontends that changed, writes those and reads
// nothing: the cost of a change is the change, not the cluster. Not safe
// for concurrent use.
type Reconciler struct {
	m        Maps
	held     map[servicelb.Frontend]servicelb.Service // what the maps hold
	backends int                                      // backend entries in held
	failed   map[services.Frontend]bool               // writes that failed: retried by the next Apply
}

// New returns a reconciler of m; call Full first.
func New(m Maps) *Reconciler {
	return &Reconciler{m: m, failed: map[services.Frontend]bool{}}
}

// Full makes the maps hold exactly desired, reading them first: at start
// (adopting what an earlier warpd left), on new maps, and at every resync,
// which repairs whatever changed the maps behind warpd's back. Upserts
// come before deletes, so a service that moves between frontends is never
// missing; a failure on one entry does not stop the others, and all
// failures are returned. When ctx ends, Full stops between two entries and
// returns ctx's error with what it did so far: each entry is written
// atomically, and the next sync (or the next warpd) finishes the job.
func (r *Reconciler) Full(ctx context.Context, desired []services.Entry) (st Stats, err error) {
	current, err := r.m.Services()
	if err != nil {
		r.held = nil
		return st, fmt.Errorf("read the service maps: %w", err)
	}
	r.held = make(map[servicelb.Frontend]servicelb.Service, len(current))
	r.backends = 0
	for _, s := range current {
		r.held[s.Frontend] = s
		r.backends += len(s.Backends)
	}
	r.failed = map[services.Frontend]bool{}
	defer r.count(&st)
	want := make(map[servicelb.Frontend]bool, len(desired))
	var errs []error
	for _, e := range desired {
		if err := ctx.Err(); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		next := toLB(e.Service)
		if want[next.Frontend] {
			errs = append(errs, fmt.Errorf("%s: frontend %v is listed twice; ignoring this one", e.Name, e.Frontend))
			continue
		}
		want[next.Frontend] = true
		errs = append(errs, r.upsert(e, &st))
	}
	for _, s := range current {
		if want[s.Frontend] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		errs = append(errs, r.delete(s.Frontend, &st))
	}
	return st, errors.Join(errs...)
}

// Apply writes the frontends that changed (and those whose write failed
// before) as desired says: upserted if it has them, deleted otherwise.
// It needs a Full first; without one it fails.
func (r *Reconciler) Apply(ctx context.Context, changed []services.Frontend, desired func(services.Frontend) (services.Entry, bool)) (st Stats, err error) {
	if r.held == nil {
		return st, errors.New("the service maps were not read yet")
	}
	defer r.count(&st)
	todo := slices.Clone(changed)
	for fe := range r.failed {
		todo = append(todo, fe)
	}
	r.failed = map[services.Frontend]bool{}
	var errs []error
	var gone []services.Frontend
	for _, fe := range todo {
		if err := ctx.Err(); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		e, ok := desired(fe)
		if !ok {
			gone = append(gone, fe)
			continue
		}
		errs = append(errs, r.upsert(e, &st))
	}
	for _, fe := range gone {
		if err := ctx.Err(); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		errs = append(errs, r.delete(toLBFrontend(fe), &st))
	}
	return st, errors.Join(errs...)
}

// upsert writes e unless the maps hold it already.
func (r *Reconciler) upsert(e services.Entry, st *Stats) error {
	next := toLB(e.Service)
	cur, had := r.held[next.Frontend]
	if had && same(cur, next) {
		st.Skipped++
		return nil
	}
	if err := r.m.Upsert(next); err != nil {
		r.failed[e.Frontend] = true
		return fmt.Errorf("%s (%v): %w", e.Name, e.Frontend, err)
	}
	st.Upserted++
	st.Removed = append(st.Removed, gone(cur, next)...)
	r.backends += len(next.Backends) - len(cur.Backends)
	r.held[next.Frontend] = next
	return nil
}

// delete removes fe from the maps if they hold it.
func (r *Reconciler) delete(fe servicelb.Frontend, st *Stats) error {
	cur, had := r.held[fe]
	if !had {
		return nil
	}
	if err := r.m.Delete(fe); err != nil {
		r.failed[services.Frontend{AddrPort: netip.AddrPortFrom(fe.Addr, fe.Port), Proto: fe.Proto}] = true
		return fmt.Errorf("delete %v: %w", fe, err)
	}
	st.Deleted++
	st.Removed = append(st.Removed, gone(cur, servicelb.Service{})...)
	r.backends -= len(cur.Backends)
	delete(r.held, fe)
	return nil
}

// count fills in what the maps hold.
func (r *Reconciler) count(st *Stats) {
	st.Counted, st.Services, st.Backends = true, len(r.held), r.backends
}

// Targets converts removed backends into the sockets to destroy (one
// servicelb.DestroySockets pass for all of them): connected UDP sockets
// always, TCP ones only with tcp. Duplicates are dropped.
func Targets(removed []Removed, tcp bool) []servicelb.Target {
	seen := map[Removed]bool{}
	var out []servicelb.Target
	for _, r := range removed {
		if seen[r] || (r.Proto == l4.TCP && !tcp) {
			continue
		}
		seen[r] = true
		out = append(out, servicelb.Target{Backend: servicelb.Backend{Addr: r.Backend.Addr(), Port: r.Backend.Port()}, Proto: r.Proto})
	}
	return out
}

// toLB converts a desired service to the load balancer's type. Every field
// of services.Service must reach the result (TestConversionCarriesEveryField).
func toLB(s services.Service) servicelb.Service {
	out := servicelb.Service{
		Frontend:        toLBFrontend(s.Frontend),
		ID:              s.ID,
		AffinityTimeout: s.AffinityTimeout,
	}
	for _, b := range s.Backends {
		out.Backends = append(out.Backends, servicelb.Backend{Addr: b.Addr(), Port: b.Port()})
	}
	return out
}

func toLBFrontend(f services.Frontend) servicelb.Frontend {
	return servicelb.Frontend{Addr: f.Addr(), Port: f.Port(), Proto: f.Proto}
}

// gone lists the backends of old that next lacks.
func gone(old, next servicelb.Service) []Removed {
	var out []Removed
	for _, b := range old.Backends {
		if !slices.Contains(next.Backends, b) {
			out = append(out, Removed{Backend: netip.AddrPortFrom(b.Addr, b.Port), Proto: old.Proto})
		}
	}
	return out
}

// same compares two services as whole values, so that a field added to
// servicelb.Service is compared without anyone remembering to add it here. Only
// what the maps do not keep is normalised away: backend order, and nil
// versus empty backends.
func same(a, b servicelb.Service) bool {
	return reflect.DeepEqual(normalize(a), normalize(b))
}

func normalize(s servicelb.Service) servicelb.Service {
	if len(s.Backends) == 0 {
		s.Backends = nil
		return s
	}
	s.Backends = slices.Clone(s.Backends)
	slices.SortFunc(s.Backends, func(x, y servicelb.Backend) int {
		return cmp.Or(x.Addr.Compare(y.Addr), cmp.Compare(x.Port, y.Port))
	})
	return s
}
