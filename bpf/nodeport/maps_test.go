package nodeport

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// Upsert and Delete remove only a service's own stale frontends, from what
// they know of np_frontends: a frontend that moved to another service
// stays with it, and an LB opened on pinned maps (a restarted warpd) knows
// the frontends an earlier one wrote.
func TestUpsertFrontendsOfOneService(t *testing.T) {
	root := harness.New(t).BPFFS()
	sizes := Sizes{Frontends: 64, Services: 16, Backends: 64, Conns: 256}
	lb, err := Open(root, sizes)
	if err != nil {
		t.Fatal(err)
	}
	fe := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port) }
	backends := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:80")}
	a := Service{ID: 1, Proto: l4.TCP, Frontends: []netip.AddrPort{fe(1), fe(2)}, Backends: backends, TableSize: 251}
	b := Service{ID: 2, Proto: l4.TCP, Frontends: []netip.AddrPort{fe(3)}, Backends: backends, TableSize: 251}
	upsert := func(lb *LB, s Service, frontends ...netip.AddrPort) {
		t.Helper()
		s.Frontends = frontends
		if err := lb.Upsert(s); err != nil {
			t.Fatal(err)
		}
	}
	want := func(lb *LB, step string, frontends map[uint32][]netip.AddrPort) {
		t.Helper()
		svcs, err := lb.Services()
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint32][]netip.AddrPort{}
		for _, s := range svcs {
			f := slices.Clone(s.Frontends)
			slices.SortFunc(f, func(x, y netip.AddrPort) int { return x.Compare(y) })
			got[s.ID] = f
		}
		if !maps.EqualFunc(got, frontends, slices.Equal) {
			t.Errorf("%s: frontends by service %v, want %v", step, got, frontends)
		}
	}
	upsert(lb, a, fe(1), fe(2))
	upsert(lb, b, fe(3))
	upsert(lb, b, fe(2), fe(3)) // fe(2) moves from a to b
	upsert(lb, a, fe(1))        // a no longer lists it: it is b's now
	want(lb, "frontend moved", map[uint32][]netip.AddrPort{1: {fe(1)}, 2: {fe(2), fe(3)}})
	if err := lb.Delete(a.Key()); err != nil {
		t.Fatal(err)
	}
	want(lb, "a deleted", map[uint32][]netip.AddrPort{2: {fe(2), fe(3)}})
	lb.Close()

	// A new LB on the pins: its first Upsert drops what the old one wrote.
	lb, err = Open(root, sizes)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	upsert(lb, b, fe(3))
	want(lb, "reopened", map[uint32][]netip.AddrPort{2: {fe(3)}})
}
