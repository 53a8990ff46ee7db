package nodeport

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func backendsN(n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(1 + i%250)}), 8080))
	}
	return out
}

// owners maps every slot to its backend.
func owners(t *testing.T, bes []netip.AddrPort, m int) []netip.AddrPort {
	t.Helper()
	table, err := MaglevTable(bes, m)
	if err != nil {
		t.Fatal(err)
	}
	sorted := SortBackends(bes)
	out := make([]netip.AddrPort, len(table))
	for i, b := range table {
		out[i] = sorted[b]
	}
	return out
}

// Every node computes the same table for the same backend set, whatever
// order it lists them in; and the table is pinned to its hash (a change
// of the hash would split a cluster in a rolling upgrade).
func TestMaglevSameTableForSameBackends(t *testing.T) {
	bes := backendsN(7)
	want := owners(t, bes, 251)
	for i := range 20 {
		shuffled := slices.Clone(bes)
		rand.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		shuffled = append(shuffled, shuffled[i%len(shuffled)]) // a duplicate changes nothing
		if got := owners(t, shuffled, 251); !slices.Equal(got, want) {
			t.Fatalf("order %v: another table", shuffled)
		}
	}
	// a fixed point of the algorithm and hash, computed once
	if got := fmt.Sprint(want[:4]); got != "[10.244.0.6:8080 10.244.0.1:8080 10.244.0.4:8080 10.244.0.3:8080]" {
		t.Errorf("the first slots are %s: the table's hash or algorithm changed, and nodes of different versions would disagree", got)
	}
}

// Each backend owns about M/N slots.
func TestMaglevSpread(t *testing.T) {
	const m = DefaultTableSize
	for _, n := range []int{1, 2, 3, 10, 100} {
		count := map[netip.AddrPort]int{}
		for _, b := range owners(t, backendsN(n), m) {
			count[b]++
		}
		if len(count) != n {
			t.Fatalf("%d backends: %d own slots", n, len(count))
		}
		for b, c := range count {
			if float64(c) < 0.9*float64(m)/float64(n) || float64(c) > 1.1*float64(m)/float64(n) {
				t.Errorf("%d backends: %v owns %d slots, want about %d", n, b, c, m/n)
			}
		}
	}
}

// Adding a backend to N moves about 1/(N+1) of the slots (those the new
// backend takes) and few others (Maglev trades a little extra movement,
// here at most 2% of the table, for its even spread); removing one moves
// its own slots and few others.
func TestMaglevDisruption(t *testing.T) {
	const m = DefaultTableSize
	for _, n := range []int{2, 5, 10, 50} {
		before := owners(t, backendsN(n), m)
		grown := backendsN(n + 1)
		after := owners(t, grown, m)
		added := grown[n]
		moved, toNew := 0, 0
		for i := range before {
			if before[i] != after[i] {
				moved++
				if after[i] == added {
					toNew++
				}
			}
		}
		ideal := float64(m) / float64(n+1)
		if float64(moved) > ideal+0.02*m || float64(toNew) < 0.85*ideal {
			t.Errorf("adding a backend to %d moved %d slots (%d to it); the ideal is %.0f", n, moved, toNew, ideal)
		}
		// removal: only the removed backend's slots must move, mostly
		shrunk := owners(t, backendsN(n + 1)[1:], m)
		movedOther := 0
		for i := range after {
			if after[i] != grown[0] && after[i] != shrunk[i] {
				movedOther++
			}
		}
		if float64(movedOther) > 0.02*m {
			t.Errorf("removing a backend from %d moved %d slots of the others (ideal 0; %.0f are its own)", n+1, movedOther, ideal)
		}
	}
}

func TestCheckTableSize(t *testing.T) {
	for _, m := range []int{251, 1021, DefaultTableSize, 65521, 131071} {
		if err := CheckTableSize(m); err != nil {
			t.Errorf("%d: %v", m, err)
		}
	}
	for _, m := range []int{0, 250, 256, 16383, 131101} {
		if err := CheckTableSize(m); err == nil {
			t.Errorf("%d accepted", m)
		}
	}
	if _, err := MaglevTable(backendsN(252), 251); err == nil {
		t.Error("252 backends in 251 slots accepted")
	}
}
