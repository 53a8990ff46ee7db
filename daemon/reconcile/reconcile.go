// Package reconcile brings the load balancer's maps to a desired state,
// changing only what differs: after a restart warpd adopts the pinned maps
// and deletes only what is stale, so traffic never sees an empty table.
package reconcile

import (
	"errors"
	"fmt"
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

// Stats says what a sync changed.
type Stats struct {
	Services, Backends         int // in the desired state
	Upserted, Deleted, Skipped int
	// Removed lists backends that a frontend no longer has (or whose
	// frontend is gone): sockets still talking to them are stale.
	Removed []Removed
}

// Removed is a backend taken out of a frontend.
type Removed struct {
	servicelb.Backend
	Proto l4.Protocol
}

// Sync makes m hold exactly desired. Upserts come before deletes, so a
// service that moves between frontends is never missing; a failure on one
// entry does not stop the others, and all failures are returned.
func Sync(m Maps, desired []services.Entry) (Stats, error) {
	var st Stats
	current, err := m.Services()
	if err != nil {
		return st, fmt.Errorf("read the service maps: %w", err)
	}
	have := map[servicelb.Frontend]servicelb.Service{}
	for _, s := range current {
		have[s.Frontend] = s
	}
	want := map[servicelb.Frontend]bool{}
	var errs []error
	for _, e := range desired {
		want[e.Frontend] = true
		st.Services++
		st.Backends += len(e.Backends)
		if cur, ok := have[e.Frontend]; ok && same(cur, e.Service) {
			st.Skipped++
			continue
		}
		if err := m.Upsert(e.Service); err != nil {
			errs = append(errs, fmt.Errorf("%s (%v): %w", e.Name, e.Frontend, err))
			continue
		}
		st.Upserted++
		st.Removed = append(st.Removed, gone(have[e.Frontend], e.Service)...)
	}
	for fe := range have {
		if want[fe] {
			continue
		}
		if err := m.Delete(fe); err != nil {
			errs = append(errs, fmt.Errorf("delete %v: %w", fe, err))
			continue
		}
		st.Deleted++
		st.Removed = append(st.Removed, gone(have[fe], servicelb.Service{})...)
	}
	return st, errors.Join(errs...)
}

// gone lists the backends of old that next lacks.
func gone(old, next servicelb.Service) []Removed {
	var out []Removed
	for _, b := range old.Backends {
		if !slices.Contains(next.Backends, b) {
			out = append(out, Removed{Backend: b, Proto: old.Proto})
		}
	}
	return out
}

// same compares ignoring backend order, which the maps do not keep.
func same(a, b servicelb.Service) bool {
	if a.ID != b.ID || a.AffinityTimeout != b.AffinityTimeout || len(a.Backends) != len(b.Backends) {
		return false
	}
	for _, x := range b.Backends {
		if !slices.Contains(a.Backends, x) {
			return false
		}
	}
	return true
}
