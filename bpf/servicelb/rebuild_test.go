package servicelb

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/l4"
)

// pinnedMapIDs returns the IDs of the pinned maps by name, whatever their
// layout.
func pinnedMapIDs(t *testing.T, root string) map[string]ebpf.MapID {
	t.Helper()
	o, err := object(root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]ebpf.MapID{}
	for name := range pinset.Maps(&lbMaps{}) {
		m, err := ebpf.LoadPinnedMap(o.MapPin(name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		out[name] = mapID(t, m)
		m.Close()
	}
	return out
}

// checkCommitted checks that l is the pinned LB: its maps and programs are
// pinned, every link runs its programs, and the metadata names this build.
func checkCommitted(t *testing.T, l *LB, links map[string]link.ID) {
	t.Helper()
	if why := l.Staged(); why != "" {
		t.Errorf("still staged after Commit: %s", why)
	}
	pinned := pinnedMapIDs(t, filepath.Dir(l.obj.Dir))
	for name, m := range pinset.Maps(&l.objs.lbMaps) {
		if pinned[name] != mapID(t, m) {
			t.Errorf("pinned %s is map %d, want the committed %d", name, pinned[name], mapID(t, m))
		}
	}
	progs := pinset.Programs(&l.objs.lbPrograms)
	for name, p := range progs {
		pp, err := ebpf.LoadPinnedProgram(l.obj.ProgPin(name), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !pinset.SameProgram(pp, p) {
			t.Errorf("pinned %s is not the committed program", name)
		}
		pp.Close()
	}
	if got := linkIDs(t, l); !reflect.DeepEqual(got, links) {
		t.Errorf("links replaced instead of updated: %v -> %v", links, got)
	}
	if err := walkLinks(l.obj, func(pinPath string, _ link.Link, info *link.Info) error {
		want, _ := pinset.ProgID(progs[filepath.Base(pinPath)])
		if uint32(info.Program) != want {
			return fmt.Errorf("link %s runs program %d, want %d", pinPath, info.Program, want)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if m, err := pinset.ReadMeta(l.objs.LbMeta); err != nil || m.Layout != layoutVersion || m.Build != buildID() || m.Magic != pinset.Magic {
		t.Errorf("metadata after Commit: %+v %v", m, err)
	}
}

// TestLBRebuild replaces pinned maps this build cannot use, once for other
// capacities and once for another layout version, each time under a stream
// of connects that must not see a single failure: the old programs serve
// from the old maps until Commit switches every link at once.
func TestLBRebuild(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	aff := le.svc(svcIP6, l4.UDP, 2, 1, 2)
	aff.AffinityTimeout = time.Hour
	le.upsert(aff)
	want, err := le.lb.Services()
	if err != nil {
		t.Fatal(err)
	}
	links := linkIDs(t, le.lb)
	// A connected UDP socket, whose translation only the maps remember.
	kept := dst("udp-open", 4, svcIP4, "kept")
	kept.Name = "kept"
	cookie := le.client.must(kept).Cookie
	le.lb.Close()

	rebuild := func(t *testing.T, sizes Sizes, why string) *LB {
		t.Helper()
		old := pinnedMapIDs(t, le.PinDir)
		loop := dst("tcp-loop", 4, svcIP4, "rebuild")
		loop.Count, loop.Duration, loop.Parallel = 1000000, 5*time.Second, 2
		done := make(chan lbResp, 1)
		go func() { done <- le.client.do(loop) }()

		l := le.open(sizes)
		if got := l.Staged(); !strings.Contains(got, why) {
			t.Fatalf("Staged() = %q, want a rebuild because of %q", got, why)
		}
		if got, _ := l.Services(); len(got) != 0 {
			t.Fatalf("the new maps are not empty: %+v", got)
		}
		if now := pinnedMapIDs(t, le.PinDir); !reflect.DeepEqual(now, old) {
			t.Fatalf("Open replaced pins before Commit: %v -> %v", old, now)
		}
		for _, s := range want { // what warpd's first sync does
			if err := l.Upsert(s); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := l.Commit(); err != nil {
			t.Fatal(err)
		}
		end := time.Now()
		r := <-done
		t.Logf("%d connects, %d failed, first %v before and last %v after Commit",
			r.OK, r.Failed, start.Sub(r.First), r.Last.Sub(end))
		if r.Failed > 0 || r.Err != "" {
			t.Errorf("%d connects failed across the rebuild: %v %s", r.Failed, r.Errors, r.Err)
		}
		if !r.First.Before(start) || !r.Last.After(end) {
			t.Errorf("the connects (%v to %v) did not span Commit (%v to %v)", r.First, r.Last, start, end)
		}
		checkCommitted(t, l, links)
		for name, id := range pinnedMapIDs(t, le.PinDir) {
			if id == old[name] {
				t.Errorf("%s was not replaced", name)
			}
		}
		if got, err := l.Services(); err != nil || !servicesEqual(got, want) {
			t.Errorf("services after the rebuild: %+v %v", got, err)
		}
		for _, f := range lbFamilies {
			le.client.must(dst("tcp", f.fam, f.addr, "after"))
			le.client.must(dst("udp-unconn", f.fam, f.addr, "after"))
		}
		return l
	}

	t.Run("capacities", func(t *testing.T) {
		sizes := Sizes{Services: 1000, Backends: 2000, Affinity: 4000}
		l := rebuild(t, sizes, "MaxEntries")
		if l.Sizes() != sizes || l.objs.LbServices.MaxEntries() != 3000 || l.objs.LbAffinity.MaxEntries() != 4000 {
			t.Errorf("sizes %+v", l.Sizes())
		}
		// Same layout: the sockets' translations came along.
		entries, _ := l.RevNAT()
		found := false
		for _, e := range entries {
			found = found || e.Cookie == cookie
		}
		if !found {
			t.Errorf("the open socket's translation was not carried over: %+v", entries)
		}
		if aff, _ := l.Affinity(); len(aff) == 0 {
			t.Error("affinity entries were not carried over")
		}
		l.Close()
		// Zero sizes adopt the new capacities: no rebuild.
		if again := le.open(Sizes{}); again.Staged() != "" || again.Sizes() != sizes {
			t.Errorf("reopening: staged %q, sizes %+v", again.Staged(), again.Sizes())
		}
	})

	t.Run("layout", func(t *testing.T) {
		// The pinned maps claim another layout, as an older build's
		// would after a struct in sock_lb.h changed.
		cur := le.open(Sizes{})
		m, err := pinset.ReadMeta(cur.objs.LbMeta)
		if err != nil {
			t.Fatal(err)
		}
		m.Layout, m.Build = layoutVersion+1, [32]byte{'o', 'l', 'd'}
		if err := pinset.WriteMeta(cur.objs.LbMeta, m); err != nil {
			t.Fatal(err)
		}
		cur.Close()
		if _, err := OpenReadOnly(le.PinDir); err == nil || !strings.Contains(err.Error(), "layout version") {
			t.Errorf("a read-only open of another layout: %v", err)
		}
		rebuild(t, Sizes{}, "layout version").Close()
	})
}

// TestLBCommitCrash: a process killed in Commit after the links switched to
// its programs, but before its maps were pinned, leaves the links on maps
// only those programs hold. Services keep working, and the next Open
// rebuilds and commits again.
func TestLBCommitCrash(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	want, _ := le.lb.Services()
	links := linkIDs(t, le.lb)
	old := pinnedMapIDs(t, le.PinDir)
	le.lb.Close()

	sizes := Sizes{Services: 100, Backends: 200, Affinity: 400}
	crashAt(t, le.Node, fpCommitLinks, helperRequest{Root: le.PinDir, Sizes: sizes, Services: want})
	if now := pinnedMapIDs(t, le.PinDir); !reflect.DeepEqual(now, old) {
		t.Fatalf("pins changed although Commit died before pinning: %v -> %v", old, now)
	}
	// The links run the dead process's programs on its maps, which it
	// filled: every service still answers.
	for _, f := range lbFamilies {
		le.client.must(dst("tcp", f.fam, f.addr, "orphaned"))
	}
	l := le.open(sizes)
	if l.Staged() == "" {
		t.Fatal("the pins of an interrupted rebuild were taken as current")
	}
	for _, s := range want {
		if err := l.Upsert(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Commit(); err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, l, links)
	for _, f := range lbFamilies {
		le.client.must(dst("tcp", f.fam, f.addr, "recovered"))
	}
}
