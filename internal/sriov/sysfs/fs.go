package sysfs

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	utilfs "github.com/k8snetworkplumbingwg/sriovnet/pkg/utils/filesystem"
)

// EnvSysfsRoot names the environment variable that makes UseEnv look up
// sysfs paths under another root: the simulator hands it to plugins
// (sim.PF.Env).
const EnvSysfsRoot = "WARP_SYSFS_ROOT"

var swapMu sync.Mutex

// UseEnv swaps sriovnet's filesystem for one rooted at $WARP_SYSFS_ROOT when
// that variable is set and not empty (paths like /sys/bus/pci/... are then
// looked up under that root), and reports whether it did. Call it once at
// program start, before any sriovnet function or Resolve runs: the swap is
// process-wide.
func UseEnv() bool {
	root := os.Getenv(EnvSysfsRoot)
	if root == "" {
		return false
	}
	UseRoot(root)
	return true
}

// UseRoot makes sriovnet (and Resolve) read sysfs under root, as UseEnv does,
// and returns a function that restores the previous filesystem. For tests
// and tools that handle a simulator directly.
func UseRoot(root string) (restore func()) {
	swapMu.Lock()
	defer swapMu.Unlock()
	prev := utilfs.Fs
	utilfs.Fs = Rooted(root)
	return func() {
		swapMu.Lock()
		defer swapMu.Unlock()
		utilfs.Fs = prev
	}
}

// Rooted returns a sriovnet Filesystem that maps every path under root:
// "/sys/bus/pci/devices/X" becomes "<root>/sys/bus/pci/devices/X". Symbolic
// links are resolved by the kernel, so a tree with relative links (like the
// real sysfs, and the simulator's) stays inside root; Readlink returns the
// link text unchanged, as on the real sysfs.
func Rooted(root string) utilfs.Filesystem {
	return rootedFs{root: filepath.Clean(root)}
}

type rootedFs struct{ root string }

func (r rootedFs) p(name string) string { return filepath.Join(r.root, name) }

// strip maps a host path back into the rooted namespace.
func (r rootedFs) strip(name string) string {
	if rel, ok := strings.CutPrefix(name, r.root); ok && (rel == "" || rel[0] == '/') {
		if rel == "" {
			return "/"
		}
		return rel
	}
	return name
}

func (r rootedFs) Stat(name string) (os.FileInfo, error) { return os.Stat(r.p(name)) }

func (r rootedFs) Create(name string) (utilfs.File, error) {
	f, err := os.Create(r.p(name))
	if err != nil {
		return nil, err
	}
	return &rootedFile{f, r}, nil
}

func (r rootedFs) Rename(oldpath, newpath string) error {
	return os.Rename(r.p(oldpath), r.p(newpath))
}

func (r rootedFs) MkdirAll(path string, perm os.FileMode) error {
	return os.MkdirAll(r.p(path), perm)
}

func (r rootedFs) Chtimes(name string, atime, mtime time.Time) error {
	return os.Chtimes(r.p(name), atime, mtime)
}

func (r rootedFs) RemoveAll(path string) error { return os.RemoveAll(r.p(path)) }

func (r rootedFs) Remove(name string) error { return os.Remove(r.p(name)) }

func (r rootedFs) Readlink(name string) (string, error) { return os.Readlink(r.p(name)) }

func (r rootedFs) Symlink(oldname, newname string) error { return os.Symlink(oldname, r.p(newname)) }

func (r rootedFs) ReadFile(filename string) ([]byte, error) { return os.ReadFile(r.p(filename)) }

func (r rootedFs) WriteFile(filename string, data []byte, perm os.FileMode) error {
	return os.WriteFile(r.p(filename), data, perm)
}

func (r rootedFs) TempDir(dir, prefix string) (string, error) {
	d, err := os.MkdirTemp(r.p(dir), prefix)
	return r.strip(d), err
}

func (r rootedFs) TempFile(dir, prefix string) (utilfs.File, error) {
	f, err := os.CreateTemp(r.p(dir), prefix)
	if err != nil {
		return nil, err
	}
	return &rootedFile{f, r}, nil
}

func (r rootedFs) ReadDir(dirname string) ([]os.FileInfo, error) {
	entries, err := os.ReadDir(r.p(dirname))
	if err != nil {
		return nil, err
	}
	infos := make([]fs.FileInfo, 0, len(entries))
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}

func (r rootedFs) Walk(root string, walkFn filepath.WalkFunc) error {
	return filepath.Walk(r.p(root), func(path string, info fs.FileInfo, err error) error {
		return walkFn(r.strip(path), info, err)
	})
}

// rootedFile reports its name inside the root, like the rest of rootedFs.
type rootedFile struct {
	f *os.File
	r rootedFs
}

func (f *rootedFile) Name() string                { return f.r.strip(f.f.Name()) }
func (f *rootedFile) Write(b []byte) (int, error) { return f.f.Write(b) }
func (f *rootedFile) Sync() error                 { return f.f.Sync() }
func (f *rootedFile) Close() error                { return f.f.Close() }
