package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for i, c := range []struct {
		data    string
		mode    os.FileMode
		changed bool
	}{
		{"a", 0o644, true},
		{"a", 0o644, false}, // same content and mode: untouched
		{"a", 0o600, true},  // the mode alone changed
		{"b", 0o600, true},
	} {
		changed, err := Write(p, []byte(c.data), c.mode)
		if err != nil || changed != c.changed {
			t.Fatalf("step %d: changed %v err %v, want changed %v", i, changed, err, c.changed)
		}
		got, _ := os.ReadFile(p)
		st, _ := os.Stat(p)
		if string(got) != c.data || st.Mode().Perm() != c.mode {
			t.Fatalf("step %d: %q %v", i, got, st.Mode())
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if _, err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644); err == nil {
		t.Fatal("a write into a missing directory succeeded")
	}
}

func TestReplace(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, data := range []string{"a", "bb", ""} {
		if err := Replace(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		st, _ := os.Stat(p)
		if string(got) != data || st.Mode().Perm() != 0o600 {
			t.Fatalf("%q %v, want %q 0600", got, st.Mode(), data)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := Replace(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644); err == nil {
		t.Fatal("a write into a missing directory succeeded")
	}
}
