package pinset

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/warpnet/warpnet/tests/harness"
)

// A bpf2go-shaped object: embedded unexported structs of tagged fields.
type testMaps struct {
	Meta *ebpf.Map `ebpf:"t_meta"`
	Data *ebpf.Map `ebpf:"t_data"`
}

type testPrograms struct {
	Prog *ebpf.Program `ebpf:"t_prog"`
}

type testObjects struct {
	testMaps
	testPrograms
	Other int // untagged: ignored
}

func testSpec(capacity uint32) *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			"t_meta": {Name: "t_meta", Type: ebpf.Array, KeySize: 4, ValueSize: 40, MaxEntries: 1, Pinning: ebpf.PinByName},
			"t_data": {Name: "t_data", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: capacity, Pinning: ebpf.PinByName},
		},
		Programs: map[string]*ebpf.ProgramSpec{
			"t_prog": {Name: "t_prog", Type: ebpf.SocketFilter, License: "GPL", Instructions: asm.Instructions{
				asm.LoadMapPtr(asm.R1, 0).WithReference("t_data"), // holds the map, like a real program
				asm.Mov.Imm(asm.R0, 0),
				asm.Return(),
			}},
		},
	}
}

func TestFields(t *testing.T) {
	var o testObjects
	fs, err := fieldsOf(&o)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range fs {
		names = append(names, f.name)
	}
	if !slices.Equal(names, []string{"t_meta", "t_data", "t_prog"}) {
		t.Errorf("fields %v", names)
	}
	if _, err := fieldsOf(o); err == nil {
		t.Error("a struct value (not a pointer) was accepted")
	}
	if len(Maps(&o)) != 2 || len(Programs(&o)) != 1 || len(Maps(&o.testMaps)) != 2 {
		t.Errorf("Maps %v, Programs %v", Maps(&o), Programs(&o))
	}
	if err := Close(&o); err != nil {
		t.Errorf("Close of nothing: %v", err)
	}
}

func TestAddr(t *testing.T) {
	for _, s := range []string{"10.244.0.10", "fd00::10", "1.2.3.4", "::ffff:1.2.3.4"} {
		a := netip.MustParseAddr(s)
		addr, family := EncodeAddr(a)
		if got := DecodeAddr(addr, family); got != a.Unmap() {
			t.Errorf("%s: round trip gives %s", a, got)
		}
		if v4 := a.Unmap(); v4.Is4() {
			b := v4.As4()
			if family != FamilyV4 || addr != [16]byte{b[0], b[1], b[2], b[3]} {
				t.Errorf("%s: %d %v, want family 4 and 4 bytes then zeros", a, family, addr)
			}
		} else if family != FamilyV6 || addr != a.As16() {
			t.Errorf("%s: %d %v", a, family, addr)
		}
	}
}

// Prepare outside bpffs fails and removes only what it created.
func TestPrepareUndo(t *testing.T) {
	base := t.TempDir()
	o := Object{Dir: filepath.Join(base, "a", "b")}
	if _, err := o.Prepare("links"); err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Prepare on a plain directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("left %s/a behind: %v", base, err)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Prepare(); err == nil {
		t.Fatal("Prepare on a plain directory succeeded")
	}
	if ents, err := os.ReadDir(o.Dir); err != nil || len(ents) != 0 {
		t.Errorf("%s after a failed Prepare: %v %v (want it kept, empty)", o.Dir, ents, err)
	}
	if _, err := CheckDir("relative/dir"); err == nil {
		t.Error("a relative pin directory was accepted")
	}
}

// The pinning protocol on a private bpffs: load and commit, reopen without
// loading (current build, any build read-only), refuse another layout or
// spec, and replace the pins with a rebuilt set.
func TestProtocol(t *testing.T) {
	e := harness.New(t)
	o := Object{Dir: filepath.Join(e.BPFFS(), "obj"), Meta: "t_meta", Layout: 3, Build: BuildID([]byte("build 1"))}
	if _, err := o.Prepare(); err != nil {
		t.Fatal(err)
	}
	var objs testObjects
	if err := o.OpenCurrent(&objs); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("OpenCurrent before anything is pinned: %v", err)
	}
	if err := o.Load(testSpec(16), &objs); err != nil {
		t.Fatal(err)
	}
	if err := o.Commit(&objs, false); err != nil {
		t.Fatal(err)
	}
	dataID := MapID(objs.Data)
	progID, _ := ProgID(objs.Prog)
	if err := Close(&objs); err != nil || objs.Data != nil {
		t.Fatalf("Close: %v, fields %+v", err, objs)
	}
	if got := harness.PinNames(t, o.ProgsDir()); !slices.Equal(got, []string{"t_prog"}) {
		t.Errorf("progs/ holds %v", got)
	}

	// This build: opened from the pins.
	if err := o.OpenCurrent(&objs); err != nil || MapID(objs.Data) != dataID {
		t.Fatalf("OpenCurrent: %v", err)
	}
	if id, _ := ProgID(objs.Prog); id != progID {
		t.Errorf("OpenCurrent opened program %d, pinned %d", id, progID)
	}
	Close(&objs)
	// Another build: not current, but its maps open read-only.
	other := o
	other.Build = BuildID([]byte("build 2"))
	if err := other.OpenCurrent(&objs); !errors.Is(err, ErrOtherBuild) {
		t.Fatalf("OpenCurrent of another build's pins: %v", err)
	}
	var maps testMaps
	if err := other.OpenMaps(&maps, true); err != nil || MapID(maps.Data) != dataID {
		t.Fatalf("OpenMaps read-only: %v", err)
	}
	if err := maps.Data.Put(uint32(1), uint32(1)); err == nil {
		t.Error("a write through a read-only open succeeded")
	}
	Close(&maps)

	// Another layout or another capacity: incompatible, nothing loaded.
	newer := other
	newer.Layout = 4
	if err := newer.OpenMaps(&maps, true); !errors.Is(err, ErrIncompatible) {
		t.Errorf("OpenMaps of another layout: %v", err)
	}
	if err := newer.Load(testSpec(16), &objs); !errors.Is(err, ErrIncompatible) || objs.Data != nil {
		t.Errorf("Load over another layout: %v", err)
	}
	var ie *IncompatibleError
	if err := other.Load(testSpec(32), &objs); !errors.As(err, &ie) || !strings.Contains(err.Error(), "t_data") {
		t.Errorf("Load with another capacity: %v", err)
	}

	// A rebuild replaces every pin at Commit, not before.
	if err := LoadUnpinned(testSpec(32), &objs); err != nil {
		t.Fatal(err)
	}
	if err := other.OpenMaps(&maps, true); err != nil || MapID(maps.Data) != dataID {
		t.Fatalf("pins changed before Commit: %v", err)
	}
	Close(&maps)
	if err := newer.Commit(&objs, true); err != nil {
		t.Fatal(err)
	}
	if err := newer.OpenCurrent(&maps); err != nil || MapID(maps.Data) != MapID(objs.Data) || maps.Data.MaxEntries() != 32 {
		t.Fatalf("after a rebuild's Commit: %v", err)
	}
	Close(&maps)
	Close(&objs)
	for _, d := range []string{o.MapsDir(), o.ProgsDir()} {
		for _, n := range harness.PinNames(t, d) {
			if strings.HasSuffix(n, "-new") {
				t.Errorf("temporary pin %s/%s left", d, n)
			}
		}
	}
}
