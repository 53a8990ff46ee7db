package boundedrun

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

const (
	min = time.Second
	max = time.Minute
)

// runs starts a runner on a fake clock and returns it, its clock and the
// runs it makes (true: full).
func runs(t *testing.T) (*Runner, *clocktesting.FakeClock, chan bool) {
	fc := clocktesting.NewFakeClock(time.Unix(1e9, 0))
	r := New(min, max, fc)
	out := make(chan bool, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx, func(full bool) { out <- full }) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, fc, out
}

// next waits (bounded) for the next run.
func next(t *testing.T, out chan bool) bool {
	t.Helper()
	select {
	case full := <-out:
		return full
	case <-time.After(10 * time.Second):
		t.Fatal("no run")
		return false
	}
}

// none checks that no run happened.
func none(t *testing.T, out chan bool, when string) {
	t.Helper()
	select {
	case full := <-out:
		t.Fatalf("%s: unexpected run (full %v)", when, full)
	default:
	}
}

// waiters waits until the runner has n timers pending on the clock: it
// is blocked waiting, with nothing left to do until the clock moves.
func waiters(t *testing.T, fc *clocktesting.FakeClock, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for fc.Waiters() != n {
		if time.Now().After(deadline) {
			t.Fatalf("the runner has %d timers pending, want %d", fc.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCoalescesBurstsWithinMinInterval(t *testing.T) {
	r, fc, out := runs(t)
	if !next(t, out) {
		t.Fatal("the first run is not a full one")
	}
	waiters(t, fc, 1) // the resync timer only

	// A burst right after a run: one run, once min has passed.
	for range 100 {
		r.Trigger()
	}
	waiters(t, fc, 2) // resync + the rest of min
	none(t, out, "before min passed")
	fc.Step(min)
	if next(t, out) {
		t.Fatal("a triggered run was a full one")
	}
	waiters(t, fc, 1)
	none(t, out, "after the burst's one run")

	// Long after the last run, a trigger runs at once.
	fc.Step(10 * min)
	r.Trigger()
	if next(t, out) {
		t.Fatal("a triggered run was a full one")
	}
	waiters(t, fc, 1)
	none(t, out, "after one trigger's run")
}

func TestFullRunEveryMaxInterval(t *testing.T) {
	r, fc, out := runs(t)
	next(t, out)
	waiters(t, fc, 1)
	// Triggered runs do not postpone the resync.
	for range 3 {
		fc.Step(min)
		r.Trigger()
		if next(t, out) {
			t.Fatal("a triggered run was a full one")
		}
		waiters(t, fc, 1)
	}
	fc.Step(max - 3*min)
	if !next(t, out) {
		t.Fatal("no full run after max")
	}
	waiters(t, fc, 1)
	fc.Step(max)
	if !next(t, out) {
		t.Fatal("no second full run")
	}
}
