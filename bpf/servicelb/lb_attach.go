package servicelb

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/pin"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/mountinfo"
)

// The programs are attached with bpf_links (BPF_LINK_CREATE), pinned under
// <root>/lb/links/<cgroup hash>/<program>: a pinned link keeps the program
// attached after the attaching process exits (warpd restarts, the LB object
// is closed), it can be switched to a new program atomically on upgrade
// (BPF_LINK_UPDATE), and it cannot be detached by accident by another
// tool's BPF_PROG_DETACH. Links attach in multi mode, so other programs on
// the same cgroup (systemd's, a CNI's) keep running.
//
// A link belongs to the cgroup, not to the path: if the cgroup is removed,
// the kernel detaches it and the pin stays behind as a defunct link, which
// Attach (for the same path), Detach and upgrades clean up.

// cgroupLinkDir is the directory of a cgroup's links: bpffs names cannot
// hold dots and are limited in length, cgroup paths may have both, so the
// directory is named after a hash of the cleaned path.
func cgroupLinkDir(o pinset.Object, cgroupPath string) string {
	h := sha256.Sum256([]byte(cgroupPath))
	return filepath.Join(linksDir(o), hex.EncodeToString(h[:8]))
}

// cgroupID checks that path is a cgroup v2 directory and returns its
// cleaned path and ID (the inode number of the directory, which is what
// the kernel reports as the link's cgroup_id).
func cgroupID(path string) (string, uint64, error) {
	if !filepath.IsAbs(path) {
		return "", 0, fmt.Errorf("servicelb: cgroup path %q is not absolute", path)
	}
	path = filepath.Clean(path)
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return "", 0, fmt.Errorf("servicelb: cgroup %s: %w", path, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", 0, fmt.Errorf("servicelb: %s is not a cgroup v2 directory", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", 0, fmt.Errorf("servicelb: cgroup %s: %w", path, err)
	}
	return path, st.Ino, nil
}

// attachProgs returns the programs to attach, by name, and a function that
// closes what it opened: the pinned programs, which are newer than l's if
// another process upgraded since Open, or l's own while l is staged (its
// programs are not pinned yet). The caller holds the lock.
func (l *LB) attachProgs() (map[string]*ebpf.Program, func(), error) {
	own := pinset.Programs(&l.objs.lbPrograms)
	if l.Staged() != "" {
		return own, func() {}, nil
	}
	out := map[string]*ebpf.Program{}
	done := func() {
		for _, p := range out {
			p.Close()
		}
	}
	for name := range own {
		p, err := ebpf.LoadPinnedProgram(l.obj.ProgPin(name), nil)
		if err != nil {
			done()
			return nil, nil, fmt.Errorf("servicelb: open pinned %s: %w", name, err)
		}
		out[name] = p
	}
	return out, done, nil
}

// Attach attaches every program to the cgroup v2 at cgroupPath: sockets
// created by tasks in it or its descendants are load balanced. It is
// idempotent: a program already attached there by this pin set is left
// alone (or switched to the pinned program if it is an older one), a link
// whose cgroup was removed and re-created under the same path is replaced.
// While l is staged, links that exist keep their programs (Commit switches
// them) and missing ones get l's. Never attach to the machine's root
// cgroup unless the whole node's sockets are meant to be translated.
func (l *LB) Attach(cgroupPath string) error {
	if err := l.writable(); err != nil {
		return err
	}
	path, cgid, err := cgroupID(cgroupPath)
	if err != nil {
		return err
	}
	types, err := attachTypes()
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	progs, done, err := l.attachProgs()
	if err != nil {
		return err
	}
	defer done()
	staged := l.Staged() != ""
	dir := cgroupLinkDir(l.obj, path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(progs)) {
		prog, pinPath := progs[name], filepath.Join(dir, name)
		if lk, err := link.LoadPinnedLink(pinPath, nil); err == nil {
			info, ierr := lk.Info()
			if ierr != nil {
				lk.Close()
				return fmt.Errorf("servicelb: link %s: %w", pinPath, ierr)
			}
			if cg := info.Cgroup(); cg != nil && cg.CgroupId == cgid {
				id, _ := pinset.ProgID(prog)
				if uint32(info.Program) != id && !staged {
					err = lk.Update(prog)
				}
				lk.Close()
				if err != nil {
					return fmt.Errorf("servicelb: update link %s: %w", pinPath, err)
				}
				continue
			}
			// Another cgroup by that path (or none any more): drop it.
			err = errors.Join(lk.Detach(), lk.Unpin())
			lk.Close()
			if err != nil {
				return fmt.Errorf("servicelb: remove stale link %s: %w", pinPath, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("servicelb: open pinned link %s: %w", pinPath, err)
		}
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: types[name], Program: prog})
		if err != nil {
			return fmt.Errorf("servicelb: attach %s to %s: %w", name, path, err)
		}
		err = lk.Pin(pinPath)
		lk.Close() // the pin keeps it attached; without one, this detaches it
		if err != nil {
			return fmt.Errorf("servicelb: pin link %s: %w", pinPath, err)
		}
	}
	return nil
}

// Detach detaches the programs from the cgroup at cgroupPath and removes
// their pins. Nothing attached (or the cgroup gone) is not an error.
// Sockets keep the translation they got.
func (l *LB) Detach(cgroupPath string) error {
	if err := l.writable(); err != nil {
		return err
	}
	if !filepath.IsAbs(cgroupPath) {
		return fmt.Errorf("servicelb: cgroup path %q is not absolute", cgroupPath)
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	dir := cgroupLinkDir(l.obj, filepath.Clean(cgroupPath))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("servicelb: %w", err)
	}
	var errs []error
	for _, e := range ents {
		pinPath := filepath.Join(dir, e.Name())
		lk, err := link.LoadPinnedLink(pinPath, nil)
		if err != nil {
			// Not a link (or unreadable): remove the name anyway.
			if rerr := os.Remove(pinPath); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("servicelb: remove %s: %w (%v)", pinPath, rerr, err))
			}
			continue
		}
		// BPF_LINK_DETACH takes the program off the cgroup even if some
		// process still holds the link open (a defunct link has nothing
		// left to detach, which is not an error either).
		if err := lk.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("servicelb: detach %s: %w", pinPath, err))
		}
		if err := lk.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("servicelb: unpin %s: %w", pinPath, err))
		}
		lk.Close()
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("servicelb: %w", err))
	}
	return errors.Join(errs...)
}

// walkLinks calls fn for every pinned link under <dir>/links, with the
// pin's path; lk is closed after fn returns.
func walkLinks(o pinset.Object, fn func(pinPath string, lk link.Link, info *link.Info) error) error {
	root := linksDir(o)
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for p, err := range pin.WalkDir(root, nil) {
		if err != nil {
			return fmt.Errorf("servicelb: walk %s: %w", root, err)
		}
		lk, ok := p.Object.(link.Link)
		if !ok {
			continue // not a link: not ours
		}
		info, err := lk.Info()
		if err != nil {
			return fmt.Errorf("servicelb: link %s: %w", p.Path, err)
		}
		if err := fn(p.Path, lk, info); err != nil {
			return err
		}
	}
	return nil
}

// updateLinks points every pinned link at the program of the same name in
// progs. Links whose cgroup is gone are unpinned, and so are links of
// programs progs lacks (an older build's hook this build does without,
// such as lb_sock_release), after detaching them.
func updateLinks(o pinset.Object, progs map[string]*ebpf.Program) error {
	return walkLinks(o, func(pinPath string, lk link.Link, info *link.Info) error {
		prog := progs[filepath.Base(pinPath)]
		if prog == nil {
			if err := lk.Detach(); err != nil {
				return fmt.Errorf("servicelb: detach an older build's %s: %w", pinPath, err)
			}
			return unpinDefunct(pinPath, lk)
		}
		if cg := info.Cgroup(); cg == nil || cg.CgroupId == 0 {
			return unpinDefunct(pinPath, lk)
		}
		if id, err := pinset.ProgID(prog); err == nil && uint32(info.Program) == id {
			return nil
		}
		if err := lk.Update(prog); err != nil {
			return fmt.Errorf("servicelb: update link %s: %w", pinPath, err)
		}
		return nil
	})
}

// unpinDefunct removes the pin of a link whose cgroup has been removed
// (the kernel detached it then); the link goes away with its last fd.
func unpinDefunct(pinPath string, lk link.Link) error {
	if err := lk.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("servicelb: unpin %s: %w", pinPath, err)
	}
	// The cgroup's directory goes once its last link has.
	if err := os.Remove(filepath.Dir(pinPath)); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("servicelb: %w", err)
	}
	return nil
}

// Attachments returns, from the pinned links, the cgroups the programs are
// attached to (path → program names, sorted), for warpctl. The path is
// found by the cgroup's ID under the cgroup v2 mount; links whose cgroup is
// gone are listed under "(removed cgroup)".
func (l *LB) Attachments() (map[string][]string, error) {
	release, err := l.obj.Lock(false)
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	defer release()
	byID := map[uint64][]string{}
	if err := walkLinks(l.obj, func(pinPath string, _ link.Link, info *link.Info) error {
		var id uint64
		if cg := info.Cgroup(); cg != nil {
			id = cg.CgroupId
		}
		byID[id] = append(byID[id], filepath.Base(pinPath))
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
// Unreadable parts of the tree are skipped: the view is best effort.
func cgroupPaths(ids map[uint64][]string) map[uint64]string {
	out := map[uint64]string{}
	root, err := mountinfo.Cgroup2()
	if err != nil {
		return out
	}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
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
