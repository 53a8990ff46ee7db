package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/mountinfo"
)

// Sweep removes what earlier test runs left behind when they could not clean
// up (killed, crashed, timed out): network namespaces /run/netns/<runID>-*,
// cgroups <cgroup2 mount>/warpnet-test/<runID> and temp dirs
// os.TempDir()/warpnet-test-<runID>-*, for every run whose PID no longer
// exists. Objects of live runs (including this process and test packages
// running concurrently) are never touched, and neither are names that do not
// follow the harness's naming exactly. Processes still inside a dead run's
// cgroups or namespaces are killed first: they were started by that run, and
// would otherwise keep the cgroup busy and the namespace and its links
// alive. Safe to run concurrently with other sweepers.
func Sweep() error {
	return sweep(func(pid int) bool { return pid != os.Getpid() && !pidAlive(pid) })
}

// sweep removes the objects whose owner PID satisfies stale. The order
// matters: cgroups first (kills the "pods"), then namespaces (kills what else
// runs in them), then temp dirs (nothing is left that could write to them).
func sweep(stale func(pid int) bool) error {
	return errors.Join(sweepCgroups(stale), sweepNetNS(stale), sweepTempDirs(stale))
}

func sweepNetNS(stale func(int) bool) error {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, ent := range ents {
		if pid, ok := ownerPID(ent.Name()); ok && stale(pid) {
			if err := deleteNetNS(ent.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func sweepCgroups(stale func(int) bool) error {
	mnt, err := Cgroup2Mount()
	if err != nil {
		return nil // no cgroup2: the harness cannot have created cgroups
	}
	parent := filepath.Join(mnt, cgroupParent)
	ents, err := os.ReadDir(parent)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, ent := range ents {
		if !ent.IsDir() {
			continue
		}
		if pid, ok := parseRunID(ent.Name()); ok && stale(pid) {
			if err := removeCgroupTree(filepath.Join(parent, ent.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// parent itself stays: removing it would race with a concurrent run
	// that is about to create its own directory in it.
	return errors.Join(errs...)
}

func sweepTempDirs(stale func(int) bool) error {
	tmp := os.TempDir()
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	var errs []error
	for _, ent := range ents {
		rest, ok := strings.CutPrefix(ent.Name(), tempPrefix)
		if !ok || !ent.IsDir() {
			continue
		}
		if pid, ok := ownerPID(rest); ok && stale(pid) {
			if err := removeTempDir(filepath.Join(tmp, ent.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeTempDir detaches whatever is mounted inside dir (a test may have
// mounted bpffs or a bind mount there) and then removes it. Without the
// unmount, RemoveAll would descend into the mounted filesystem and delete
// files that do not belong to the test.
func removeTempDir(dir string) error {
	for attempt := 0; ; attempt++ {
		inside, err := mountsUnder(dir)
		if err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
		if len(inside) == 0 {
			return os.RemoveAll(dir)
		}
		if attempt == 3 {
			return fmt.Errorf("remove %s: still mounted: %v (not removing)", dir, inside)
		}
		for _, mp := range inside {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var inside []string
	for _, m := range mounts {
		if m.MountPoint == dir || strings.HasPrefix(m.MountPoint, dir+"/") {
			inside = append(inside, m.MountPoint)
		}
	}
	sort.Slice(inside, func(i, j int) bool { return len(inside[i]) > len(inside[j]) })
	return inside, nil
}
