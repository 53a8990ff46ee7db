package reconcile

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/internal/l4"
)

// fakeMaps is an in-memory Maps that records calls.
type fakeMaps struct {
	svcs  map[servicelb.Frontend]servicelb.Service
	calls []string
	fail  servicelb.Frontend
}

func (f *fakeMaps) Services() ([]servicelb.Service, error) {
	var out []servicelb.Service
	for _, s := range f.svcs {
		out = append(out, s)
	}
	return out, nil
}
func (f *fakeMaps) Upsert(s servicelb.Service) error {
	if s.Frontend == f.fail {
		return errors.New("boom")
	}
	f.calls = append(f.calls, "upsert "+s.Addr.String())
	f.svcs[s.Frontend] = s
	return nil
}
func (f *fakeMaps) Delete(fe servicelb.Frontend) error {
	f.calls = append(f.calls, "delete "+fe.Addr.String())
	delete(f.svcs, fe)
	return nil
}

func fe(ip string) servicelb.Frontend {
	return servicelb.Frontend{Addr: netip.MustParseAddr(ip), Port: 80, Proto: l4.TCP}
}
func be(ip string) servicelb.Backend {
	return servicelb.Backend{Addr: netip.MustParseAddr(ip), Port: 8080}
}

func TestSyncChangesOnlyWhatDiffers(t *testing.T) {
	m := &fakeMaps{svcs: map[servicelb.Frontend]servicelb.Service{
		fe("10.96.0.1"): {Frontend: fe("10.96.0.1"), ID: 1, Backends: []servicelb.Backend{be("10.0.0.1"), be("10.0.0.2")}},
		fe("10.96.0.2"): {Frontend: fe("10.96.0.2"), ID: 2, Backends: []servicelb.Backend{be("10.0.0.1")}},
		fe("10.96.0.3"): {Frontend: fe("10.96.0.3"), ID: 3},
	}}
	desired := []services.Entry{
		// same backends in another order: untouched
		{Name: "a", Service: servicelb.Service{Frontend: fe("10.96.0.1"), ID: 1, Backends: []servicelb.Backend{be("10.0.0.2"), be("10.0.0.1")}}},
		// affinity changed: upserted
		{Name: "b", Service: servicelb.Service{Frontend: fe("10.96.0.2"), ID: 2, Backends: []servicelb.Backend{be("10.0.0.1")}, AffinityTimeout: time.Minute}},
		// new
		{Name: "d", Service: servicelb.Service{Frontend: fe("10.96.0.4"), ID: 4}},
	}
	st, err := Sync(m, desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.Upserted != 2 || st.Deleted != 1 || st.Skipped != 1 || st.Services != 3 || st.Backends != 3 {
		t.Fatalf("stats %+v", st)
	}
	if len(m.calls) != 3 || m.calls[2] != "delete 10.96.0.3" {
		t.Fatalf("calls %v: deletes must come after upserts", m.calls)
	}
	if len(st.Removed) != 0 {
		t.Fatalf("removed %v: no backend left a frontend", st.Removed)
	}
	// Dropping a backend reports it.
	desired[0].Backends = []servicelb.Backend{be("10.0.0.2")}
	if st, _ := Sync(m, desired); len(st.Removed) != 1 || st.Removed[0].Backend != be("10.0.0.1") || st.Removed[0].Proto != l4.TCP {
		t.Fatalf("removed %+v", st.Removed)
	}
	desired[0].Backends = []servicelb.Backend{be("10.0.0.1"), be("10.0.0.2")}
	Sync(m, desired)
	// A second sync is a no-op.
	m.calls = nil
	if st, _ := Sync(m, desired); st.Upserted+st.Deleted != 0 || len(m.calls) != 0 {
		t.Fatalf("second sync changed things: %+v %v", st, m.calls)
	}
}

func TestSyncGoesOnPastFailures(t *testing.T) {
	m := &fakeMaps{svcs: map[servicelb.Frontend]servicelb.Service{}, fail: fe("10.96.0.1")}
	st, err := Sync(m, []services.Entry{
		{Name: "bad", Service: servicelb.Service{Frontend: fe("10.96.0.1"), ID: 1}},
		{Name: "good", Service: servicelb.Service{Frontend: fe("10.96.0.2"), ID: 2}},
	})
	if err == nil || st.Upserted != 1 {
		t.Fatalf("err %v stats %+v", err, st)
	}
}
