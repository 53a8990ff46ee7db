package services

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// frontendStrings renders frontends for assertions.
func frontendStrings(fes []Frontend) []string {
	var out []string
	for _, f := range fes {
		out = append(out, f.String())
	}
	return out
}

// A change to one service is translated alone: Update reports only its
// frontends, and the others' entries are the same values as before.
func TestTrackerUpdatesOneServiceAtATime(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	a := svc("a")
	b := svc("b", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", nil })
	c := svc("c", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.12", nil })
	bSlice := slice("b", v4, 8080, ready("10.244.1.2", "node1"))
	tr := NewTracker(node)
	all := tr.Update(NewListView([]*corev1.Service{a, b, c}, []*discoveryv1.EndpointSlice{bSlice}), nil)
	if len(all) != 3 {
		t.Fatalf("first update: %v", frontendStrings(all))
	}
	before, _ := tr.Desired(Frontend{AddrPort: mustAddrPort("10.96.0.10:80"), Proto: 6})

	// A new endpoint in b's slice: only b's frontend changed.
	bSlice2 := slice("b", v4, 8080, ready("10.244.1.2", "node1"), ready("10.244.1.3", "node1"))
	view := NewListView([]*corev1.Service{a, b, c}, []*discoveryv1.EndpointSlice{bSlice2})
	changed := tr.Update(view, []string{"ns/b"})
	if got := frontendStrings(changed); !slices.Equal(got, []string{"10.96.0.11:80/tcp"}) {
		t.Fatalf("changed %v", got)
	}
	if e, _ := tr.Desired(changed[0]); len(e.Backends) != 2 {
		t.Fatalf("b's entry %+v", e)
	}
	after, _ := tr.Desired(Frontend{AddrPort: mustAddrPort("10.96.0.10:80"), Proto: 6})
	if after.ID != before.ID || after.Name != before.Name {
		t.Fatalf("a's entry changed: %+v -> %+v", before, after)
	}
	if f, b := tr.Size(); f != 3 || b != 2 {
		t.Fatalf("size %d frontends, %d backends", f, b)
	}
	// The same again: nothing changed.
	if changed := tr.Update(view, []string{"ns/b"}); len(changed) != 0 {
		t.Fatalf("an unchanged service reported %v", frontendStrings(changed))
	}
	// b deleted (its slice too): its frontend goes.
	changed = tr.Update(NewListView([]*corev1.Service{a, c}, nil), []string{"ns/b"})
	if got := frontendStrings(changed); !slices.Equal(got, []string{"10.96.0.11:80/tcp"}) {
		t.Fatalf("changed %v", got)
	}
	if _, ok := tr.Desired(changed[0]); ok {
		t.Fatal("b's frontend is still desired")
	}
	if f, b := tr.Size(); f != 2 || b != 0 {
		t.Fatalf("size %d frontends, %d backends", f, b)
	}
}

// A frontend claimed by two services passes to the other one when its
// owner goes, although only the owner changed.
func TestTrackerConflictHandover(t *testing.T) {
	a := svc("a", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.168.1.10"} })
	b := svc("b", func(s *corev1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", nil
		s.Spec.ExternalIPs = []string{"192.168.1.10"}
	})
	tr := NewTracker(node)
	tr.Update(NewListView([]*corev1.Service{a, b}, nil), nil)
	ext := Frontend{AddrPort: mustAddrPort("192.168.1.10:80"), Proto: 6}
	if e, _ := tr.Desired(ext); e.Name != "ns/a:http/tcp" || len(tr.Conflicts()) != 1 {
		t.Fatalf("owner %q, conflicts %v", e.Name, tr.Conflicts())
	}
	changed := tr.Update(NewListView([]*corev1.Service{b}, nil), []string{"ns/a"})
	if !slices.Contains(changed, ext) {
		t.Fatalf("changed %v lacks %v", frontendStrings(changed), ext)
	}
	if e, _ := tr.Desired(ext); e.Name != "ns/b:http/tcp" || len(tr.Conflicts()) != 0 {
		t.Fatalf("owner %q, conflicts %v", e.Name, tr.Conflicts())
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// BenchmarkTrackerMemory reports what a Tracker keeps per Service (after
// a collection) with 10,000 Services of ten endpoints each, and how long
// translating all of them takes: warpd's first sync at that scale.
func BenchmarkTrackerMemory(b *testing.B) {
	const n = 10000
	var svcs []*corev1.Service
	var epSlices []*discoveryv1.EndpointSlice
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		ip := fmt.Sprintf("10.96.%d.%d", 16+i/256, i%256)
		svcs = append(svcs, svc(name, func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ip, []string{ip} }))
		var eps []ep
		for j := range 10 {
			eps = append(eps, ready(fmt.Sprintf("10.244.1.%d", j+2), "node1"))
		}
		epSlices = append(epSlices, slice(name, discoveryv1.AddressTypeIPv4, 8080, eps...))
	}
	view := NewListView(svcs, epSlices)
	var perService float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tr := NewTracker(node)
		if changed := tr.Update(view, nil); len(changed) != n {
			b.Fatalf("%d frontends changed, want %d", len(changed), n)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perService = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(tr)
	}
	b.ReportMetric(perService, "B/service")
}
