package pinset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/flock"
)

// bpffsMount is where bpffs is mounted when a pin directory below it has
// no bpffs yet.
const bpffsMount = "/sys/fs/bpf"

// Prepare makes sure o.Dir, its maps/ and progs/ and the extra
// subdirectories exist on a bpffs, mounting bpffs at /sys/fs/bpf first if
// the directory is below it and nothing is mounted there. undo removes the
// directories Prepare created (those still empty): an Open that fails
// afterwards leaves nothing behind it did not find.
func (o Object) Prepare(extra ...string) (_ func() error, err error) {
	if o.Dir == bpffsMount || strings.HasPrefix(o.Dir, bpffsMount+"/") {
		if err := mountBPFFS(bpffsMount); err != nil {
			return nil, err
		}
	}
	var created []string // parents first
	undo := func() error {
		var errs []error
		for _, d := range slices.Backward(created) {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, undo())
		}
	}()
	dirs := []string{o.MapsDir(), o.ProgsDir()}
	for _, e := range extra {
		dirs = append(dirs, filepath.Join(o.Dir, e))
	}
	for _, d := range dirs {
		made, err := mkdirAll(d)
		created = append(created, made...)
		if err != nil {
			return nil, err
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(o.Dir, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", o.Dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("%s is not on a bpf filesystem (mount -t bpf bpf DIR)", o.Dir)
	}
	return undo, nil
}

// mkdirAll is os.MkdirAll that returns the directories it created, parents
// first.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	var made []string
	for _, d := range slices.Backward(missing) {
		err := os.Mkdir(d, 0o700)
		if errors.Is(err, os.ErrExist) {
			continue // made by a concurrent process: not ours to remove
		}
		if err != nil {
			return made, err
		}
		made = append(made, d)
	}
	return made, nil
}

// mountBPFFS mounts bpffs at root unless it is there already. Concurrent
// callers serialise on a flock of root itself, so bpffs is never mounted
// twice on top of itself.
func mountBPFFS(root string) error {
	isBPF := func() (bool, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil {
			return false, fmt.Errorf("statfs %s: %w", root, err)
		}
		switch st.Type {
		case unix.BPF_FS_MAGIC:
			return true, nil
		case unix.SYSFS_MAGIC: // the empty mount point in /sys
			return false, nil
		default:
			return false, fmt.Errorf("%s holds a filesystem of type %#x, not bpffs", root, st.Type)
		}
	}
	if ok, err := isBPF(); ok || err != nil {
		return err
	}
	release, err := flock.Acquire(root, true)
	if err != nil {
		return err
	}
	defer release()
	if ok, err := isBPF(); ok || err != nil {
		return err
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", root, err)
	}
	return nil
}
