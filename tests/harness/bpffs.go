package harness

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFS mounts a fresh bpffs under the Env's temp dir and returns its path,
// for tests that pin BPF objects: they never touch the node's
// /sys/fs/bpf/warpnet, and everything pinned there disappears at cleanup
// (the temp dir's removal unmounts what is mounted inside it).
func (e *Env) BPFFS() string {
	e.t.Helper()
	dir, err := os.MkdirTemp(e.TempDir, "bpffs-")
	if err != nil {
		e.fatalf("bpffs dir: %v", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		e.fatalf("mount bpffs on %s: %v", dir, err)
	}
	e.Defer("unmount bpffs "+filepath.Base(dir), func() error { return unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// PinNames lists the names in a directory of pins (or any directory),
// sorted; the test fails if it cannot be read.
func PinNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
