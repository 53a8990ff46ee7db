package agent

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"time"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/reconcile"
)

// sync brings the maps to the source's current state. An incremental sync
// translates and writes only the services the source reported changed
// (and retries writes that failed); a full one (the first, after the maps
// grew, and every Resync) translates everything again and compares it with
// the maps as they are, which repairs drift, and collects garbage.
func (a *Agent) sync(ctx context.Context, full bool) {
	start := time.Now()
	view, keys, all, err := a.src.Take()
	a.setSourceProblem(err)
	if view == nil {
		return // nothing known yet: never sync an empty state over the maps
	}
	if full || all {
		keys = nil // every service
	}
	changed := a.tracker.Update(view, keys)
	a.setRejected(a.tracker.Rejected(), start)
	if a.ensureCapacity() {
		full = true
	}
	var st reconcile.Stats
	if full || !a.readMaps {
		st, err = a.rec.Full(ctx, a.tracker.Entries())
		a.readMaps = st.Counted
	} else {
		st, err = a.rec.Apply(ctx, changed, a.tracker.Desired)
	}
	if err == nil && a.lb.Staged() != "" {
		// The rebuilt maps hold every service now: switch to them.
		if err = a.lb.Commit(); err == nil {
			a.log.Info("switched to the rebuilt maps", "sizes", fmt.Sprintf("%+v", a.lb.Sizes()))
		}
	}
	// What did change is done, also when other entries failed: sockets
	// to the backends it removed are stale now.
	a.destroyStale(st.Removed)
	if a.ns != nil {
		a.syncNorthSouth(changed, full)
	}
	dur := time.Since(start)
	a.record(st, err, start, dur)
	switch {
	case err != nil && ctx.Err() != nil:
		a.log.Info("shutdown interrupted a sync; the next warpd finishes it", "upserted", st.Upserted, "deleted", st.Deleted)
	case err != nil:
		args := []any{"err", err, "upserted", st.Upserted, "deleted", st.Deleted, "resync", a.cfg.Resync.String()}
		if advice := fullAdvice(err); advice != "" {
			args = append(args, "fix", advice)
		}
		a.log.Error("sync failed in part; the rest is done, and it is retried at the next change or resync", args...)
	case st.Upserted+st.Deleted > 0:
		a.log.Info("synced", "services", st.Services, "backends", st.Backends, "upserted", st.Upserted, "deleted", st.Deleted,
			"unchanged", st.Skipped, "full", full, "duration", dur.String())
	}
	if full {
		a.gc()
	}
}

// shortage is a map that cannot hold the desired state.
type shortage struct {
	Map, Flag      string
	Need, Capacity int
}

func (s shortage) String() string {
	return fmt.Sprintf("the %s map needs %d entries, %s is %d: raise %s, or set it to 0 to size the maps from the cluster",
		s.Map, s.Need, s.Flag, s.Capacity, s.Flag)
}

// headroom: maps sized from the cluster grow once the desired state
// needs more than 3/4 of a capacity, to twice what it needs, so that
// updates (which add a service's new backends before they remove the old
// ones) always find room and growth is rare.
const (
	headroomNum, headroomDen = 3, 4
	growFactor               = 2
)

// ensureCapacity checks that the maps can hold the desired state. Sizes
// warpd chooses (flags at 0) grow by a rebuild without a window of failed
// connections: new maps are filled while the attached programs keep
// serving from the old ones, and Commit switches every hook at once (see
// servicelb.Staged). Sizes given by flags are kept, and a desired state
// that does not fit them is reported (log, warpd_map_full, /healthz);
// warpd writes what fits. It returns true when it replaced the maps, which
// the caller then fills.
func (a *Agent) ensureCapacity() bool {
	frontends, backends := a.tracker.Size()
	cur := a.lb.Sizes()
	want := cur
	var short []shortage
	for _, m := range []struct {
		name, flag string
		fixed      int
		need       int
		capacity   *int
	}{
		{"services", "--map-services", a.cfg.Sizes.Services, frontends, &want.Services},
		{"backends", "--map-backends", a.cfg.Sizes.Backends, backends, &want.Backends},
	} {
		switch {
		case m.fixed != 0 && m.need > *m.capacity:
			short = append(short, shortage{Map: m.name, Flag: m.flag, Need: m.need, Capacity: *m.capacity})
		case m.fixed == 0 && m.need*headroomDen > *m.capacity*headroomNum:
			*m.capacity = grownSize(m.need)
			if m.need > *m.capacity { // beyond servicelb.MaxSize
				short = append(short, shortage{Map: m.name, Flag: m.flag, Need: m.need, Capacity: *m.capacity})
			}
		}
	}
	grew := false
	if want != cur {
		if err := a.grow(want); err != nil {
			a.log.Error("growing the service maps failed; warpd writes what fits", "from", fmt.Sprintf("%+v", cur),
				"to", fmt.Sprintf("%+v", want), "err", err)
			if want.Services != cur.Services && frontends > cur.Services {
				short = append(short, shortage{Map: "services", Flag: "--map-services", Need: frontends, Capacity: cur.Services})
			}
			if want.Backends != cur.Backends && backends > cur.Backends {
				short = append(short, shortage{Map: "backends", Flag: "--map-backends", Need: backends, Capacity: cur.Backends})
			}
		} else {
			grew = true
		}
	}
	a.setShort(short)
	return grew
}

// grownSize is the capacity for need entries: twice as much, as a power of
// two, and never below the default.
func grownSize(need int) int {
	n := max(need*growFactor, servicelb.DefaultSizes.Backends)
	if n&(n-1) != 0 {
		n = 1 << bits.Len(uint(n))
	}
	return min(n, servicelb.MaxSize)
}

// grow replaces the LB with one on new maps of the given sizes, staged:
// the next sync fills them (in full) and commits.
func (a *Agent) grow(sizes servicelb.Sizes) error {
	lb, err := servicelb.Open(a.cfg.BPFFSRoot, sizes)
	if err != nil {
		return err
	}
	if lb.Staged() == "" {
		// Someone else already made maps of these sizes: adopt them.
		a.log.Info("the pinned maps already have the sizes the cluster needs", "sizes", fmt.Sprintf("%+v", sizes))
	} else {
		a.log.Info("growing the service maps: new maps are filled while the current ones keep serving",
			"from", fmt.Sprintf("%+v", a.lb.Sizes()), "to", fmt.Sprintf("%+v", sizes))
	}
	a.lb.Close()
	a.lb, a.rec, a.readMaps = lb, reconcile.New(lb), false
	a.mu.Lock()
	a.sizes = lb.Sizes()
	a.mu.Unlock()
	return nil
}

// setShort records (and logs, when it changes) the maps that cannot hold
// the desired state.
func (a *Agent) setShort(short []shortage) {
	a.mu.Lock()
	prev := a.short
	a.short = short
	a.mu.Unlock()
	a.metrics.mapsShort(short)
	describe := func(ss []shortage) string {
		var parts []string
		for _, s := range ss {
			parts = append(parts, s.String())
		}
		return strings.Join(parts, "; ")
	}
	switch {
	case len(short) > 0 && describe(short) != describe(prev):
		a.log.Error("the service maps cannot hold the desired state; services that do not fit are not programmed",
			"why", describe(short))
	case len(short) == 0 && len(prev) > 0:
		a.log.Info("the service maps hold the desired state again")
	}
}

// fullAdvice adds to a sync error what to do about a full map.
func fullAdvice(err error) string {
	var full *servicelb.FullError
	if !errors.As(err, &full) {
		return ""
	}
	flag := "--map-backends"
	if full.Map == "lb_services" {
		flag = "--map-services and --map-backends (lb_services holds both)"
	}
	return "raise " + flag + ", or set them to 0 to size the maps from the cluster"
}
