// Package boundedrun runs a sync function at a bounded frequency, as
// kube-proxy's BoundedFrequencyRunner does: a change triggers a run, but
// never sooner than MinInterval after the previous run, so a burst of
// changes is coalesced into one run; and a full run comes at least every
// MaxInterval (the periodic resync that repairs drift) even when nothing
// changed.
package boundedrun

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Runner is a bounded-frequency runner. The zero value is not usable: use
// New.
type Runner struct {
	min, max time.Duration
	clock    clock.Clock
	trigger  chan struct{}
}

// New returns a runner that runs at most once per min (min 0: at once) and
// fully at least once per max. c is the clock (clock.RealClock{} outside
// tests).
func New(min, max time.Duration, c clock.Clock) *Runner {
	return &Runner{min: min, max: max, clock: c, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a run. It never blocks: triggers that arrive while one
// is pending are the same run.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run calls fn until ctx ends: fn(true) first (nothing has been synced
// yet) and then every max after the last full run, fn(false) for triggers.
// A trigger that comes less than min after the previous run waits for the
// rest of min; the triggers that arrive meanwhile are coalesced into that
// one run. Runs never overlap: fn is called from Run's goroutine only.
func (r *Runner) Run(ctx context.Context, fn func(full bool)) {
	// A trigger pending from before the first run is part of it.
	r.drain()
	fn(true)
	last, lastFull := r.clock.Now(), r.clock.Now()
	full := r.clock.NewTimer(r.max)
	defer full.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-full.C():
			r.drain()
			fn(true)
			last, lastFull = r.clock.Now(), r.clock.Now()
			full.Reset(r.max)
			continue
		case <-r.trigger:
		}
		if wait := r.min - r.clock.Since(last); wait > 0 {
			t := r.clock.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
		}
		r.drain() // what arrived while waiting is this run's too
		// A full run due meanwhile replaces this one.
		if r.clock.Since(lastFull) >= r.max {
			continue
		}
		fn(false)
		last = r.clock.Now()
	}
}

func (r *Runner) drain() {
	select {
	case <-r.trigger:
	default:
	}
}
