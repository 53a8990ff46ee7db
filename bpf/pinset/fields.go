package pinset

import (
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/cilium/ebpf"
)

// field is one `ebpf:"name"` field of a bpf2go struct: a *ebpf.Map or a
// *ebpf.Program, found the way ebpf.CollectionSpec.LoadAndAssign finds
// them (embedded structs included), so that opening pins fills the same
// fields as loading does.
type field struct {
	name string
	v    reflect.Value
}

var (
	mapType  = reflect.TypeFor[*ebpf.Map]()
	progType = reflect.TypeFor[*ebpf.Program]()
)

func (f field) isMap() bool { return f.v.Type() == mapType }
func (f field) get() any    { return f.v.Interface() }

// fieldsOf lists the map and program fields of objs, a pointer to a struct.
func fieldsOf(objs any) ([]field, error) {
	v := reflect.ValueOf(objs)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("%T is not a pointer to a struct", objs)
	}
	var out []field
	var walk func(s reflect.Value)
	walk = func(s reflect.Value) {
		for i := range s.NumField() {
			sf, fv := s.Type().Field(i), s.Field(i)
			if sf.Anonymous && sf.Type.Kind() == reflect.Struct {
				walk(fv)
				continue
			}
			name, ok := sf.Tag.Lookup("ebpf")
			if !ok || (sf.Type != mapType && sf.Type != progType) {
				continue
			}
			out = append(out, field{name: name, v: fv})
		}
	}
	walk(v.Elem())
	return out, nil
}

// openFields sets every field to what open returns for it (nil leaves it
// nil); on error it closes and clears what it opened.
func openFields(fs []field, open func(field) (any, error)) (err error) {
	defer func() {
		if err != nil {
			for _, f := range fs {
				closeField(f)
			}
		}
	}()
	for _, f := range fs {
		obj, err := open(f)
		if err != nil {
			return fmt.Errorf("open pinned %s: %w", f.name, err)
		}
		if obj != nil {
			f.v.Set(reflect.ValueOf(obj))
		}
	}
	return nil
}

func closeField(f field) error {
	if f.v.IsNil() {
		return nil
	}
	err := f.get().(io.Closer).Close()
	f.v.SetZero()
	return err
}

// Close closes every map and program of objs and clears the fields, so a
// second Close is harmless; it reports every failure (bpf2go's Close stops
// at the first and leaves the fields set).
func Close(objs any) error {
	fs, err := fieldsOf(objs)
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range fs {
		errs = append(errs, closeField(f))
	}
	return errors.Join(errs...)
}

// Programs returns the programs of objs by name (nil ones included).
func Programs(objs any) map[string]*ebpf.Program {
	fs, _ := fieldsOf(objs)
	out := map[string]*ebpf.Program{}
	for _, f := range fs {
		if !f.isMap() {
			out[f.name] = f.get().(*ebpf.Program)
		}
	}
	return out
}

// Maps returns the maps of objs by name (nil ones included).
func Maps(objs any) map[string]*ebpf.Map {
	fs, _ := fieldsOf(objs)
	out := map[string]*ebpf.Map{}
	for _, f := range fs {
		if f.isMap() {
			out[f.name] = f.get().(*ebpf.Map)
		}
	}
	return out
}
