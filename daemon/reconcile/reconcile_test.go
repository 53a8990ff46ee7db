package reconcile

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
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
	if fe == f.fail {
		return errors.New("boom")
	}
	f.calls = append(f.calls, "delete "+fe.Addr.String())
	delete(f.svcs, fe)
	return nil
}

func lbFE(ip string) servicelb.Frontend {
	return servicelb.Frontend{Addr: netip.MustParseAddr(ip), Port: 80, Proto: l4.TCP}
}
func lbBE(ip string) servicelb.Backend {
	return servicelb.Backend{Addr: netip.MustParseAddr(ip), Port: 8080}
}

func fe(ip string) services.Frontend {
	return services.Frontend{AddrPort: netip.AddrPortFrom(netip.MustParseAddr(ip), 80), Proto: l4.TCP}
}
func be(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), 8080) }

func entry(name, ip string, id uint32, affinity time.Duration, backends ...string) services.Entry {
	e := services.Entry{Name: name, Service: services.Service{Frontend: fe(ip), ID: id, AffinityTimeout: affinity}}
	for _, b := range backends {
		e.Backends = append(e.Backends, be(b))
	}
	return e
}

func TestSyncChangesOnlyWhatDiffers(t *testing.T) {
	ctx := context.Background()
	m := &fakeMaps{svcs: map[servicelb.Frontend]servicelb.Service{
		lbFE("10.96.0.1"): {Frontend: lbFE("10.96.0.1"), ID: 1, Backends: []servicelb.Backend{lbBE("10.0.0.2"), lbBE("10.0.0.1")}},
		lbFE("10.96.0.2"): {Frontend: lbFE("10.96.0.2"), ID: 2, Backends: []servicelb.Backend{lbBE("10.0.0.1")}},
		lbFE("10.96.0.3"): {Frontend: lbFE("10.96.0.3"), ID: 3},
		lbFE("10.96.0.5"): {Frontend: lbFE("10.96.0.5"), ID: 5, Backends: []servicelb.Backend{}},
	}}
	desired := []services.Entry{
		// same backends in another order: untouched
		entry("a", "10.96.0.1", 1, 0, "10.0.0.1", "10.0.0.2"),
		// affinity changed: upserted
		entry("b", "10.96.0.2", 2, time.Minute, "10.0.0.1"),
		// new
		entry("d", "10.96.0.4", 4, 0),
		// no backends, nil here and empty in the maps: untouched
		entry("e", "10.96.0.5", 5, 0),
	}
	st, err := New(m).Full(ctx, desired)
	if err != nil {
		t.Fatal(err)
	}
	if st.Upserted != 2 || st.Deleted != 1 || st.Skipped != 2 || st.Services != 4 || st.Backends != 3 {
		t.Fatalf("stats %+v", st)
	}
	if len(m.calls) != 3 || m.calls[2] != "delete 10.96.0.3" {
		t.Fatalf("calls %v: deletes must come after upserts", m.calls)
	}
	if len(st.Removed) != 0 {
		t.Fatalf("removed %v: no backend left a frontend", st.Removed)
	}
	// Dropping a backend reports it.
	desired[0] = entry("a", "10.96.0.1", 1, 0, "10.0.0.2")
	if st, _ := New(m).Full(ctx, desired); len(st.Removed) != 1 || st.Removed[0].Backend != be("10.0.0.1") || st.Removed[0].Proto != l4.TCP {
		t.Fatalf("removed %+v", st.Removed)
	}
	desired[0] = entry("a", "10.96.0.1", 1, 0, "10.0.0.1", "10.0.0.2")
	New(m).Full(ctx, desired)
	// A second sync is a no-op.
	m.calls = nil
	if st, _ := New(m).Full(ctx, desired); st.Upserted+st.Deleted != 0 || len(m.calls) != 0 {
		t.Fatalf("second sync changed things: %+v %v", st, m.calls)
	}
}

// One failure does not stop the others; what did succeed is reported
// (its removed backends too, so their sockets are destroyed), and the
// counts are what the maps hold.
func TestSyncGoesOnPastFailures(t *testing.T) {
	m := &fakeMaps{fail: lbFE("10.96.0.1"), svcs: map[servicelb.Frontend]servicelb.Service{
		lbFE("10.96.0.2"): {Frontend: lbFE("10.96.0.2"), ID: 2, Backends: []servicelb.Backend{lbBE("10.0.0.1"), lbBE("10.0.0.2")}},
	}}
	st, err := New(m).Full(context.Background(), []services.Entry{
		entry("bad", "10.96.0.1", 1, 0, "10.0.0.9"),
		entry("good", "10.96.0.2", 2, 0, "10.0.0.2"),
	})
	if err == nil || st.Upserted != 1 {
		t.Fatalf("err %v stats %+v", err, st)
	}
	if len(st.Removed) != 1 || st.Removed[0].Backend != be("10.0.0.1") {
		t.Fatalf("removed %+v: the successful change's removed backend must be reported", st.Removed)
	}
	if st.Services != 1 || st.Backends != 1 {
		t.Fatalf("stats %+v: count what is in the maps, not what was asked for", st)
	}
}

// A frontend listed twice is programmed once and counted once.
func TestSyncDuplicateFrontend(t *testing.T) {
	m := &fakeMaps{svcs: map[servicelb.Frontend]servicelb.Service{}}
	st, err := New(m).Full(context.Background(), []services.Entry{
		entry("a", "10.96.0.1", 1, 0, "10.0.0.1"),
		entry("b", "10.96.0.1", 2, 0, "10.0.0.2", "10.0.0.3"),
	})
	if err == nil || st.Services != 1 || st.Backends != 1 || m.svcs[lbFE("10.96.0.1")].ID != 1 {
		t.Fatalf("err %v stats %+v maps %v", err, st, m.svcs)
	}
}

// A cancelled context stops a sync between entries.
func TestSyncStopsWhenCancelled(t *testing.T) {
	m := &fakeMaps{svcs: map[servicelb.Frontend]servicelb.Service{}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	st, err := New(m).Full(ctx, []services.Entry{entry("a", "10.96.0.1", 1, 0)})
	if !errors.Is(err, context.Canceled) || st.Upserted != 0 || len(m.calls) != 0 {
		t.Fatalf("err %v stats %+v calls %v", err, st, m.calls)
	}
}

// Every field of services.Service must reach the load balancer's type: a
// field added there but not converted would make two different desired
// states look the same to change detection.
func TestConversionCarriesEveryField(t *testing.T) {
	base := services.Service{Frontend: fe("10.96.0.1"), ID: 1, Backends: []netip.AddrPort{be("10.0.0.1")}, AffinityTimeout: time.Second}
	eachFieldChanged(t, base, func(t *testing.T, field string, changed services.Service) {
		if same(toLB(base), toLB(changed)) {
			t.Fatalf("changing %s is not seen after conversion: convert it in toLB", field)
		}
	})
}

// same must compare every field of servicelb.Service, not a hand-picked list.
func TestSameComparesEveryField(t *testing.T) {
	base := toLB(services.Service{Frontend: fe("10.96.0.1"), ID: 1, Backends: []netip.AddrPort{be("10.0.0.1")}, AffinityTimeout: time.Second})
	eachFieldChanged(t, base, func(t *testing.T, field string, changed servicelb.Service) {
		if same(base, changed) {
			t.Fatalf("same ignores %s", field)
		}
	})
}

// eachFieldChanged runs check, as a subtest per field of base (a struct),
// on a copy of base with that field changed.
func eachFieldChanged[T any](t *testing.T, base T, check func(t *testing.T, field string, changed T)) {
	typ := reflect.TypeOf(base)
	for _, path := range leafFields(typ) {
		field := pathName(typ, path)
		t.Run(field, func(t *testing.T) {
			var changed T
			// A deep copy, so that changing a slice leaves base alone.
			v := reflect.ValueOf(&changed).Elem()
			v.Set(reflect.ValueOf(base))
			for i := range v.NumField() {
				if f := v.Field(i); f.Kind() == reflect.Slice && f.CanSet() {
					f.Set(reflect.AppendSlice(reflect.MakeSlice(f.Type(), 0, f.Len()), f))
				}
			}
			setOther(t, v, path)
			check(t, field, changed)
		})
	}
}

// leafFields lists the paths (field indexes) to every field that is not a
// struct of our own (embedded Frontend is walked into; netip.Addr,
// netip.AddrPort and slices are leaves).
func leafFields(t reflect.Type) [][]int {
	var out [][]int
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(netip.Addr{}) && f.Type != reflect.TypeOf(netip.AddrPort{}) {
			for _, sub := range leafFields(f.Type) {
				out = append(out, append([]int{i}, sub...))
			}
			continue
		}
		out = append(out, []int{i})
	}
	return out
}

func pathName(t reflect.Type, path []int) string {
	var names []string
	for _, i := range path {
		f := t.Field(i)
		names, t = append(names, f.Name), f.Type
	}
	return strings.Join(names, ".")
}

// setOther gives the field at path a value different from its current one.
func setOther(t *testing.T, v reflect.Value, path []int) { change(t, v.FieldByIndex(path)) }

func change(t *testing.T, f reflect.Value) {
	switch {
	case f.Type() == reflect.TypeOf(netip.Addr{}):
		f.Set(reflect.ValueOf(netip.MustParseAddr("10.99.99.99")))
	case f.Type() == reflect.TypeOf(netip.AddrPort{}):
		f.Set(reflect.ValueOf(netip.MustParseAddrPort("10.99.99.99:9")))
	case f.Kind() == reflect.Slice:
		elem := reflect.New(f.Type().Elem()).Elem()
		change(t, elem)
		f.Set(reflect.Append(f, elem))
	case f.Kind() == reflect.Struct:
		for i := range f.NumField() {
			change(t, f.Field(i))
		}
	case f.CanUint():
		f.SetUint(f.Uint() + 1)
	case f.CanInt():
		f.SetInt(f.Int() + 1)
	case f.Kind() == reflect.String:
		f.SetString(f.String() + "x")
	case f.Kind() == reflect.Bool:
		f.SetBool(!f.Bool())
	default:
		t.Fatalf("field of type %v: teach change to change it", f.Type())
	}
}

// countingMaps counts reads of the maps.
type countingMaps struct {
	*fakeMaps
	reads int
}

func (c *countingMaps) Services() ([]servicelb.Service, error) {
	c.reads++
	return c.fakeMaps.Services()
}

// Apply writes only the changed frontends, reads nothing, and retries a
// write that failed at the next Apply.
func TestApplyWritesOnlyWhatChanged(t *testing.T) {
	m := &countingMaps{fakeMaps: &fakeMaps{svcs: map[servicelb.Frontend]servicelb.Service{}}}
	ctx := context.Background()
	desired := map[services.Frontend]services.Entry{}
	for _, e := range []services.Entry{entry("a", "10.96.0.1", 1, 0, "10.0.0.1"), entry("b", "10.96.0.2", 2, 0, "10.0.0.2"), entry("c", "10.96.0.3", 3, 0)} {
		desired[e.Frontend] = e
	}
	lookup := func(f services.Frontend) (services.Entry, bool) { e, ok := desired[f]; return e, ok }
	r := New(m)
	if _, err := r.Apply(ctx, nil, lookup); err == nil {
		t.Fatal("Apply before Full succeeded")
	}
	var all []services.Entry
	for _, e := range desired {
		all = append(all, e)
	}
	if _, err := r.Full(ctx, all); err != nil || m.reads != 1 || len(m.calls) != 3 {
		t.Fatalf("Full: %v, %d reads, calls %v", err, m.reads, m.calls)
	}
	m.calls = nil

	// b gets another backend, c goes; a's entry is untouched.
	desired[fe("10.96.0.2")] = entry("b", "10.96.0.2", 2, 0, "10.0.0.3")
	delete(desired, fe("10.96.0.3"))
	m.fail = lbFE("10.96.0.2")
	st, err := r.Apply(ctx, []services.Frontend{fe("10.96.0.2"), fe("10.96.0.3")}, lookup)
	if err == nil || st.Upserted != 0 || st.Deleted != 1 || !slices.Equal(m.calls, []string{"delete 10.96.0.3"}) || m.reads != 1 {
		t.Fatalf("Apply: %v %+v calls %v reads %d", err, st, m.calls, m.reads)
	}
	if st.Services != 2 || st.Backends != 2 {
		t.Fatalf("counted %d services, %d backends", st.Services, st.Backends)
	}
	// The failed write is retried with the next change (none here).
	m.fail, m.calls = servicelb.Frontend{}, nil
	st, err = r.Apply(ctx, nil, lookup)
	if err != nil || st.Upserted != 1 || !slices.Equal(m.calls, []string{"upsert 10.96.0.2"}) || m.reads != 1 {
		t.Fatalf("retry: %v %+v calls %v", err, st, m.calls)
	}
	if len(st.Removed) != 1 || st.Removed[0].Backend != be("10.0.0.2") {
		t.Fatalf("removed %v", st.Removed)
	}
}
