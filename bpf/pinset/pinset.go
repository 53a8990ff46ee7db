// Package pinset is what warpnet's BPF objects share below their own
// packages (bpf/podpath, bpf/servicelb): where they are pinned, how a build
// recognises its own pins (the metadata map), how pinned maps are checked
// against a build's specs, how an object is loaded and pinned, and how a
// process opens pins without loading anything (read-only for inspection).
//
// A BPF object (one bpf2go output) is pinned as a set under one directory:
//
//	<dir>/maps/<map>     every map of the object, one of them its metadata map
//	<dir>/progs/<prog>   every program
//
// The metadata map (struct meta in ../include/pinset.h, Meta here) holds a
// magic number, the layout version of the pinned maps and the build ID (the
// SHA-256 of the embedded ELF) of the pinned programs. Every user of an
// object goes through the same protocol, written once here:
//
//  1. Open without a lock when the metadata names this build (OpenCurrent).
//  2. Otherwise take the exclusive flock on <dir> and look again.
//  3. Load (Load): the metadata map first (a fresh one records the layout
//     at once), then every other map is created or reused if its pinned
//     spec and the recorded layout match this build, else ErrIncompatible.
//  4. The object's package switches whatever runs the old programs to the
//     new ones atomically (XDP_FLAGS_REPLACE, BPF_LINK_UPDATE).
//  5. Commit pins the new programs (and, after a rebuild, the new maps)
//     over the old pins by rename, then records the build. An upgrade cut
//     short before this step is redone by the next Open.
//
// Objects are described by their bpf2go structs (xdpObjects, lbMaps, ...):
// every function here takes such a struct and finds the maps and programs
// through its `ebpf:"name"` tags, so each object's list of maps and
// programs is written once, by bpf2go.
package pinset

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/internal/rollback"
)

// NorthSouthTCProg is the name of warpd's north-south tc program
// (bpf/nodeport's np_tc) as the kernel reports it. warp-veth's tc program
// runs before it on a pod's interface (bpf/podpath), whichever was attached
// first.
const NorthSouthTCProg = "np_tc"

// DefaultRoot is the bpffs directory warpnet pins under by default, shared
// by the CNI plugins, warpd and warpctl; each object has a directory below
// it (or, for the XDP pod datapath, the root itself).
const DefaultRoot = "/sys/fs/bpf/warpnet"

// Magic marks an initialised metadata value ("warp").
const Magic = 0x77617270

// Meta is struct meta of pinset.h: the value of an object's metadata map.
type Meta struct {
	Magic  uint32
	Layout uint32
	Build  [32]byte
}

// ErrIncompatible is wrapped by errors about pinned maps this build cannot
// use as they are (another layout version, another spec or capacity).
var ErrIncompatible = errors.New("pinned maps are incompatible with this build")

// ErrNotPinned is wrapped when an object is opened without loading and
// nothing of it is pinned.
var ErrNotPinned = errors.New("nothing is pinned")

// ErrOtherBuild is wrapped by OpenCurrent when the pins exist but come from
// another build (or an upgrade is half done): the caller loads.
var ErrOtherBuild = errors.New("pins are from another build")

// Object is one BPF object's pin set.
type Object struct {
	// Dir is the absolute, clean pin directory.
	Dir string
	// Meta names the object's metadata map.
	Meta string
	// Layout is the layout version of the maps this build reads and
	// writes; bump it whenever a struct or the meaning of a field changes.
	Layout uint32
	// Build identifies the embedded programs (BuildID of the ELF).
	Build [32]byte
}

// BuildID is the build ID of an embedded ELF object: its SHA-256.
func BuildID(elf []byte) [32]byte { return sha256.Sum256(elf) }

// CheckDir checks that dir is an absolute path and returns it cleaned.
func CheckDir(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("pin directory %q is not absolute", dir)
	}
	return filepath.Clean(dir), nil
}

// MapsDir is where the maps are pinned.
func (o Object) MapsDir() string { return filepath.Join(o.Dir, "maps") }

// ProgsDir is where the programs are pinned.
func (o Object) ProgsDir() string { return filepath.Join(o.Dir, "progs") }

// MapPin is the pin of the map called name.
func (o Object) MapPin(name string) string { return filepath.Join(o.MapsDir(), name) }

// ProgPin is the pin of the program called name.
func (o Object) ProgPin(name string) string { return filepath.Join(o.ProgsDir(), name) }

var removeMemlock = sync.OnceValue(rlimit.RemoveMemlock)

// RemoveMemlock lifts RLIMIT_MEMLOCK where the kernel still charges BPF
// objects to it (before 5.11); once per process.
func RemoveMemlock() error {
	if err := removeMemlock(); err != nil {
		return fmt.Errorf("memlock: %w", err)
	}
	return nil
}

// Lock takes the flock on the object's directory (bpffs holds no regular
// files, but a directory can be flock'ed), exclusive for writers and
// shared for readers, with flock's bounded wait; release drops it.
func (o Object) Lock(exclusive bool) (release func(), err error) {
	return flock.Acquire(o.Dir, exclusive)
}

// ReadMeta reads the value of a metadata map.
func ReadMeta(m *ebpf.Map) (Meta, error) {
	var v Meta
	if err := m.Lookup(uint32(0), &v); err != nil {
		return v, fmt.Errorf("read %s: %w", mapName(m), err)
	}
	return v, nil
}

// WriteMeta writes the value of a metadata map.
func WriteMeta(m *ebpf.Map, v Meta) error {
	if err := m.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write %s: %w", mapName(m), err)
	}
	return nil
}

// checkLayout returns an error wrapping ErrIncompatible if m was written
// by a build with another layout (or by no warpnet build).
func (o Object) checkLayout(m Meta) error {
	switch {
	case m.Magic != Magic:
		return o.incompatible(fmt.Sprintf("map %s holds no warpnet metadata", o.Meta))
	case m.Layout != o.Layout:
		return o.incompatible(fmt.Sprintf("maps have layout version %d, this build uses %d", m.Layout, o.Layout))
	}
	return nil
}

// IncompatibleError lists why pinned maps cannot be used; it wraps
// ErrIncompatible. The objects' packages add what to do about it.
type IncompatibleError struct {
	Dir     string
	Reasons []string
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("%v under %s: %s", ErrIncompatible, e.Dir, strings.Join(e.Reasons, "; "))
}

func (e *IncompatibleError) Unwrap() error { return ErrIncompatible }

func (o Object) incompatible(reasons ...string) error {
	return &IncompatibleError{Dir: o.Dir, Reasons: reasons}
}

// CheckPinned compares every pinned map with spec (type, key and value
// size, capacity, flags) and reports all differences at once. Maps not
// pinned yet are fine.
func (o Object) CheckPinned(spec *ebpf.CollectionSpec) error {
	var diffs []string
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		m, err := ebpf.LoadPinnedMap(o.MapPin(name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		if err := ms.Compatible(m); err != nil {
			diffs = append(diffs, fmt.Sprintf("%s: %v", name, err))
		}
		m.Close()
	}
	if len(diffs) > 0 {
		return o.incompatible(diffs...)
	}
	return nil
}

// OpenCurrent fills objs (a pointer to a bpf2go ...Objects, ...Maps or
// ...Programs struct) from the pins if the metadata says they are
// complete and from this build. Otherwise it returns an error wrapping
// ErrNotPinned or ErrOtherBuild (or another failure); objs is left empty.
// It never loads, pins or locks anything.
func (o Object) OpenCurrent(objs any) error {
	m, err := o.pinnedMeta(nil)
	if err != nil {
		return err
	}
	if m.Magic != Magic || m.Layout != o.Layout || m.Build != o.Build {
		return fmt.Errorf("%s: %w", o.Dir, ErrOtherBuild)
	}
	return o.openPins(objs, nil)
}

// OpenMaps fills the maps of objs from the pins, whatever build pinned
// them, as long as their layout is this build's: for tools that inspect
// (readOnly: the kernel refuses every write through these descriptors)
// and for cleanups that must not load anything. Nothing pinned is an error
// wrapping ErrNotPinned; another layout one wrapping ErrIncompatible. The
// maps named in optional (ones this build added to an existing layout,
// which the next Load creates) are left nil when they have no pin; any
// other missing map is an error. Program fields are left nil: a program pin
// cannot be opened read-only.
func (o Object) OpenMaps(objs any, readOnly bool, optional ...string) error {
	opts := &ebpf.LoadPinOptions{ReadOnly: readOnly}
	m, err := o.pinnedMeta(opts)
	if err != nil {
		return err
	}
	if err := o.checkLayout(m); err != nil {
		return err
	}
	fs, err := fieldsOf(objs)
	if err != nil {
		return err
	}
	var maps []field
	for _, f := range fs {
		if f.isMap() {
			maps = append(maps, f)
		}
	}
	return openFields(maps, func(f field) (any, error) {
		m, err := ebpf.LoadPinnedMap(o.MapPin(f.name), opts)
		if errors.Is(err, os.ErrNotExist) && slices.Contains(optional, f.name) {
			return nil, nil
		}
		return m, err
	})
}

// pinnedMeta reads the pinned metadata; none is an error wrapping
// ErrNotPinned.
func (o Object) pinnedMeta(opts *ebpf.LoadPinOptions) (Meta, error) {
	meta, err := ebpf.LoadPinnedMap(o.MapPin(o.Meta), opts)
	if errors.Is(err, os.ErrNotExist) {
		return Meta{}, fmt.Errorf("%s: %w", o.Dir, ErrNotPinned)
	}
	if err != nil {
		return Meta{}, err
	}
	defer meta.Close()
	return ReadMeta(meta)
}

// openPins fills every map and program field of objs from its pin.
func (o Object) openPins(objs any, opts *ebpf.LoadPinOptions) error {
	fs, err := fieldsOf(objs)
	if err != nil {
		return err
	}
	return openFields(fs, func(f field) (any, error) {
		if f.isMap() {
			return ebpf.LoadPinnedMap(o.MapPin(f.name), opts)
		}
		return ebpf.LoadPinnedProgram(o.ProgPin(f.name), opts)
	})
}

// Load loads spec into objs, with the maps pinned under MapsDir: existing
// pins are reused, missing ones created. The caller holds the exclusive
// lock. The metadata map comes first: a fresh one records this build's
// layout before any other map exists, so the layout never describes maps it
// did not see; pins of another layout or spec fail with an
// *IncompatibleError and nothing is loaded. The build is recorded only by
// Commit.
func (o Object) Load(spec *ebpf.CollectionSpec, objs any) (err error) {
	ms := spec.Maps[o.Meta]
	if ms == nil {
		return fmt.Errorf("object has no map %s", o.Meta)
	}
	meta, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: o.MapsDir()})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return o.incompatible(fmt.Sprintf("map %s: %v", o.Meta, err))
		}
		return fmt.Errorf("map %s: %w", o.Meta, err)
	}
	defer meta.Close()
	m, err := ReadMeta(meta)
	if err != nil {
		return err
	}
	if m.Magic == 0 {
		if err := WriteMeta(meta, Meta{Magic: Magic, Layout: o.Layout}); err != nil {
			return err
		}
	} else if err := o.checkLayout(m); err != nil {
		return err
	}
	if err := o.CheckPinned(spec); err != nil {
		return err
	}
	err = loadAndAssign(spec, objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: o.MapsDir()}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return o.incompatible(err.Error())
	}
	return LoadError(err)
}

// loadAndAssign is spec.LoadAndAssign that leaves objs empty on failure
// (it would hold the objects it loaded before failing, already closed).
func loadAndAssign(spec *ebpf.CollectionSpec, objs any, opts *ebpf.CollectionOptions) error {
	err := spec.LoadAndAssign(objs, opts)
	if err != nil {
		if fs, ferr := fieldsOf(objs); ferr == nil {
			for _, f := range fs {
				f.v.SetZero()
			}
		}
	}
	return err
}

// LoadUnpinned loads spec into objs with every map new and unpinned: a
// replacement for pins that are incompatible, which Commit(objs, true)
// later pins in their place. Nothing under the directory changes.
func LoadUnpinned(spec *ebpf.CollectionSpec, objs any) error {
	spec = spec.Copy()
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
	}
	return LoadError(loadAndAssign(spec, objs, nil))
}

// LoadError formats a load failure; a verifier error is printed in full,
// since its last lines alone rarely say which check failed.
func LoadError(err error) error {
	if err == nil {
		return nil
	}
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("load programs: %+v", verr)
	}
	return fmt.Errorf("load programs: %w", err)
}

// Commit makes objs the pinned object: with maps, every map of objs is
// pinned over the old pin (the metadata map last), then every program,
// each by an atomic rename, so a reader always finds one complete object;
// then the metadata records this build. Call it once whatever ran the old
// programs runs the new ones (see the package comment).
func (o Object) Commit(objs any, maps bool) error {
	fs, err := fieldsOf(objs)
	if err != nil {
		return err
	}
	var meta *ebpf.Map
	for _, f := range fs {
		switch {
		case f.name == o.Meta && f.isMap():
			meta = f.get().(*ebpf.Map)
		case f.isMap() && maps:
			if err := PinReplace(f.get().(pinner), o.MapPin(f.name)); err != nil {
				return err
			}
		case !f.isMap():
			if err := PinReplace(f.get().(pinner), o.ProgPin(f.name)); err != nil {
				return err
			}
		}
	}
	if meta == nil {
		return fmt.Errorf("commit %s: no map %s", o.Dir, o.Meta)
	}
	if maps {
		if err := PinReplace(meta, o.MapPin(o.Meta)); err != nil {
			return err
		}
	}
	return WriteMeta(meta, Meta{Magic: Magic, Layout: o.Layout, Build: o.Build})
}

type pinner interface{ Pin(string) error }

// PinReplace pins p (a map, program or link) at path, atomically replacing
// what is pinned there: it pins under a temporary name and renames over the
// old pin, so that readers always find one complete object.
func PinReplace(p pinner, path string) error {
	tmp := path + "-new" // bpffs reserves names with a dot
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s left by an interrupted run: %w", tmp, err)
	}
	if err := p.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return rollback.With(fmt.Errorf("pin %s: %w", path, err), os.Remove(tmp))
	}
	return nil
}

// ProgID returns the kernel's ID of p.
func ProgID(p *ebpf.Program) (uint32, error) {
	info, err := p.Info()
	if err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("kernel reports no program ID")
	}
	return uint32(id), nil
}

// SameProgram reports whether a and b are the same loaded program.
func SameProgram(a, b *ebpf.Program) bool {
	if a == nil || b == nil {
		return false
	}
	ia, err1 := ProgID(a)
	ib, err2 := ProgID(b)
	return err1 == nil && err2 == nil && ia == ib
}

// MapID returns the kernel's ID of m (0 if it cannot tell).
func MapID(m *ebpf.Map) ebpf.MapID {
	info, err := m.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return id
}

func mapName(m *ebpf.Map) string {
	if info, err := m.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return "map"
}

// CopyEntries copies what fits of src into dst, for a rebuild that keeps
// state (best effort: LRU maps evict, and entries written meanwhile by the
// old programs are missed). Maps whose key or value sizes differ (a layout
// change) are left alone.
func CopyEntries[K, V any](src, dst *ebpf.Map, k *K, v *V) {
	if src.KeySize() != dst.KeySize() || src.ValueSize() != dst.ValueSize() {
		return
	}
	for it := src.Iterate(); it.Next(k, v); {
		if dst.Put(k, v) != nil {
			return
		}
	}
}
