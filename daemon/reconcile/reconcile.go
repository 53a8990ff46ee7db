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

// Sync makes m hold exactly desired. Upserts come before deletes, so a
// service that moves between frontends is never missing; a failure on one
// entry does not stop the others, and all failures are returned. When ctx
// ends, Sync stops between two entries and returns ctx's error with what
// it did so far: each entry is written atomically, and the next sync (or
// the next warpd) finishes the job.
func Sync(ctx context.Context, m Maps, desired []services.Entry) (st Stats, err error) {
	current, err := m.Services()
	if err != nil {
		return st, fmt.Errorf("read the service maps: %w", err)
	}
	// now is what the maps hold, kept up to date as the sync changes them.
	now := make(map[servicelb.Frontend]servicelb.Service, len(current))
	for _, s := range current {
		now[s.Frontend] = s
	}
	defer func() {
		st.Counted, st.Services = true, len(now)
		for _, s := range now {
			st.Backends += len(s.Backends)
		}
	}()
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
		cur, had := now[next.Frontend]
		if had && same(cur, next) {
			st.Skipped++
			continue
		}
		if err := m.Upsert(next); err != nil {
			errs = append(errs, fmt.Errorf("%s (%v): %w", e.Name, e.Frontend, err))
			continue
		}
		st.Upserted++
		st.Removed = append(st.Removed, gone(cur, next)...)
		now[next.Frontend] = next
	}
	for _, s := range current {
		if want[s.Frontend] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		if err := m.Delete(s.Frontend); err != nil {
			errs = append(errs, fmt.Errorf("delete %v: %w", s.Frontend, err))
			continue
		}
		st.Deleted++
		st.Removed = append(st.Removed, gone(s, servicelb.Service{})...)
		delete(now, s.Frontend)
	}
	return st, errors.Join(errs...)
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
		Frontend:        servicelb.Frontend{Addr: s.Addr(), Port: s.Port(), Proto: s.Proto},
		ID:              s.ID,
		AffinityTimeout: s.AffinityTimeout,
	}
	for _, b := range s.Backends {
		out.Backends = append(out.Backends, servicelb.Backend{Addr: b.Addr(), Port: b.Port()})
	}
	return out
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
