package bpf

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/mountinfo"
)

// The programs are attached with bpf_links (BPF_LINK_CREATE), pinned under
// <pinDir>/lb/links/<cgroup hash>/<program>: a pinned link keeps the
// program attached after the attaching process exits (warpd restarts, the
// LB object is closed), it can be switched to a new program atomically on
// upgrade (BPF_LINK_UPDATE), and it cannot be detached by accident by
// another tool's BPF_PROG_DETACH. Links attach in multi mode, so other
// programs on the same cgroup (systemd's, a CNI's) keep running.
//
// A link belongs to the cgroup, not to the path: if the cgroup is removed,
// the kernel detaches it and the pin stays behind as a defunct link, which
// Attach (for the same path), Detach and upgrades clean up.

// cgroupLinkDir is the directory of a cgroup's links: bpffs names cannot
// hold dots and are limited in length, cgroup paths may have both, so the
// directory is named after a hash of the cleaned path.
func cgroupLinkDir(dir, cgroupPath string) string {
	h := sha256.Sum256([]byte(cgroupPath))
	return filepath.Join(linksDir(dir), hex.EncodeToString(h[:8]))
}

// cgroupID checks that path is a cgroup v2 directory and returns its
// cleaned path and ID (the inode number of the directory, which is what
// the kernel reports as the link's cgroup_id).
func cgroupID(path string) (string, uint64, error) {
	if !filepath.IsAbs(path) {
		return "", 0, fmt.Errorf("bpf: cgroup path %q is not absolute", path)
	}
	path = filepath.Clean(path)
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return "", 0, fmt.Errorf("bpf: cgroup %s: %w", path, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", 0, fmt.Errorf("bpf: %s is not a cgroup v2 directory", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", 0, fmt.Errorf("bpf: cgroup %s: %w", path, err)
	}
	return path, st.Ino, nil
}

// Attach attaches every program to the cgroup v2 at cgroupPath: sockets
// created by tasks in it or its descendants are load balanced. It is
// idempotent: a program already attached there by this pin set is left
// alone (or switched to the pinned program if it is an older one), a link
// whose cgroup was removed and re-created under the same path is replaced.
// Never attach to the machine's root cgroup unless the whole node's
// sockets are meant to be translated.
func (l *LB) Attach(cgroupPath string) error {
	path, cgid, err := cgroupID(cgroupPath)
	if err != nil {
		return err
	}
	unlock, err := lockDir(l.dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	progs, err := l.currentProgs()
	if err != nil {
		return err
	}
	dir := cgroupLinkDir(l.dir, path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bpf: %w", err)
	}
	for _, p := range lbProgs {
		prog := progs[p.name]
		pin := filepath.Join(dir, p.name)
		if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := lk.Info()
			if ierr != nil {
				lk.Close()
				return fmt.Errorf("bpf: link %s: %w", pin, ierr)
			}
			if cg := info.Cgroup(); cg != nil && cg.CgroupId == cgid {
				id, _ := progID(prog)
				if uint32(info.Program) != id {
					err = lk.Update(prog)
				}
				lk.Close()
				if err != nil {
					return fmt.Errorf("bpf: update link %s: %w", pin, err)
				}
				continue
			}
			// Another cgroup by that path (or none any more): drop it.
			_ = lk.Detach()
			err = lk.Unpin()
			lk.Close()
			if err != nil {
				return fmt.Errorf("bpf: unpin stale link %s: %w", pin, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("bpf: open pinned link %s: %w", pin, err)
		}
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: p.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("bpf: attach %s to %s: %w", p.name, path, err)
		}
		err = lk.Pin(pin)
		lk.Close() // the pin keeps it attached; without one, this detaches it
		if err != nil {
			return fmt.Errorf("bpf: pin link %s: %w", pin, err)
		}
	}
	return nil
}

// Detach detaches the programs from the cgroup at cgroupPath and removes
// their pins. Nothing attached (or the cgroup gone) is not an error.
// Sockets keep the translation they got.
func (l *LB) Detach(cgroupPath string) error {
	if !filepath.IsAbs(cgroupPath) {
		return fmt.Errorf("bpf: cgroup path %q is not absolute", cgroupPath)
	}
	unlock, err := lockDir(l.dir, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	dir := cgroupLinkDir(l.dir, filepath.Clean(cgroupPath))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bpf: %w", err)
	}
	var errs []error
	for _, e := range ents {
		pin := filepath.Join(dir, e.Name())
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			// Not a link (or unreadable): remove the name anyway.
			if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("bpf: remove %s: %w (%v)", pin, rerr, err))
			}
			continue
		}
		// BPF_LINK_DETACH takes the program off the cgroup even if some
		// process still holds the link open; a defunct link has nothing
		// to detach.
		_ = lk.Detach()
		if err := lk.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("bpf: unpin %s: %w", pin, err))
		}
		lk.Close()
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("bpf: %w", err))
	}
	return errors.Join(errs...)
}

// Attachments returns, from the pinned links, the cgroups the programs are
// attached to (path → program names, sorted), for warpctl. The path is
// found by the cgroup's ID under the cgroup v2 mount; links whose cgroup is
// gone are listed under "(removed cgroup)".
func (l *LB) Attachments() (map[string][]string, error) {
	unlock, err := lockDir(l.dir, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	byID := map[uint64][]string{}
	if err := walkLinks(l.dir, func(_, name string, _ link.Link, info *link.Info) error {
		var id uint64
		if cg := info.Cgroup(); cg != nil {
			id = cg.CgroupId
		}
		byID[id] = append(byID[id], name)
		return nil
	}); err != nil {
		return nil, err
	}
	out := map[string][]string{}
	if len(byID) == 0 {
		return out, nil
	}
	paths := cgroupPaths(byID)
	for id, names := range byID {
		sort.Strings(names)
		key, ok := paths[id]
		if !ok {
			key = "(removed cgroup)"
			if id != 0 {
				key = fmt.Sprintf("(cgroup id %d, not found)", id)
			}
		}
		out[key] = append(out[key], names...)
	}
	return out, nil
}

// cgroupPaths finds the paths of the cgroups with the given IDs by walking
// the cgroup v2 mount (a cgroup's ID is its directory's inode number).
func cgroupPaths(ids map[uint64][]string) map[uint64]string {
	out := map[uint64]string{}
	root, err := mountinfo.Cgroup2()
	if err != nil {
		return out
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil {
			if _, want := ids[st.Ino]; want {
				out[st.Ino] = path
				if len(out) == len(ids) {
					return filepath.SkipAll
				}
			}
		}
		return nil
	})
	return out
}
