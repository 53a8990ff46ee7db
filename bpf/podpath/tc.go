package podpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
)

// The tc program is attached to the host end's tcx ingress hook with a
// bpf_link (link.AttachTCX), one per endpoint, pinned explicitly under
// <root>/links/<owner, 16 hex digits>: the pin keeps the program attached
// after the plugin exits, DEL finds it from the owner alone (no cache, no
// interface needed), and an upgrade switches every link to the new program
// atomically (BPF_LINK_UPDATE). Unlike a netlink XDP attachment the link
// does not go with the device: when the veth is deleted, the link stays
// pinned (defunct, detached) until RemoveTC.
//
// The attach point is one function (attachTCLink): a netkit device would
// take the same program as a netkit link (link.AttachNetkit, primary or
// peer) in its place; see bpf/README.md.

// linksDir is the directory of the tc links below the pin directory.
const linksDir = "links"

// linkPin is where owner's tc link is pinned.
func (d *Datapath) linkPin(owner uint64) string {
	return filepath.Join(d.obj.Dir, linksDir, fmt.Sprintf("%016x", owner))
}

// AttachTC attaches the tc program to the tcx ingress hook of ifindex (the
// host end, in the calling thread's namespace) for owner, behind whatever
// programs the hook already runs, and pins the link. It attaches the pinned
// program, which is newer than the one Open returned if another process
// upgraded in between. Idempotent: a link of owner's on ifindex is kept
// (and switched to the pinned program if it runs another); one left on
// another interface or a deleted one is replaced.
//
// Register the endpoint (AddEndpoint, Hook TC) before attaching: packets on
// an interface the program does not know pass unchecked.
func (d *Datapath) AttachTC(owner uint64, ifindex int) error {
	if err := d.writable(); err != nil {
		return err
	}
	if owner == 0 || ifindex <= 0 {
		return fmt.Errorf("podpath: AttachTC(owner %#x, ifindex %d): both must be positive", owner, ifindex)
	}
	release, err := d.obj.Lock(false)
	if err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	defer release()
	prog, err := d.current(tcProgName)
	if err != nil {
		return err
	}
	pin := d.linkPin(owner)
	if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
		onIf, ierr := tcxIfindex(lk)
		if ierr == nil && onIf == ifindex {
			err = updateLink(lk, prog)
			lk.Close()
			if err != nil {
				return fmt.Errorf("podpath: update tc link %s: %w", pin, err)
			}
			return nil
		}
		detachNow(lk)
		lk.Close()
		if err := os.Remove(pin); err != nil {
			return fmt.Errorf("podpath: remove stale tc link %s: %w", pin, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("podpath: open tc link %s: %w", pin, err)
	}
	lk, err := attachTCLink(ifindex, prog)
	if err != nil {
		return err
	}
	defer lk.Close() // the pin keeps it attached; without one, this detaches it
	if err := pinset.PinReplace(lk, pin); err != nil {
		return fmt.Errorf("podpath: pin tc link: %w", err)
	}
	return nil
}

// attachTCLink is the attach point: tcx ingress of the host end, appended
// after the programs already there (which see the pod's packets first and
// may drop or redirect them; ours returns TCX_NEXT for what it passes),
// except warpd's north-south program: it translates replies of the pod's
// north-south flows and sends them on, so it must come after our
// anti-spoofing, and warpd attaches it at its next sync, which may come
// before this ADD.
func attachTCLink(ifindex int, prog *ebpf.Program) (link.Link, error) {
	opts := link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress}
	if id, ok := northSouthProgram(ifindex); ok {
		opts.Anchor = link.BeforeProgramByID(id)
		lk, err := link.AttachTCX(opts)
		if !errors.Is(err, os.ErrNotExist) {
			if err != nil {
				return nil, fmt.Errorf("podpath: attach %s to the tcx ingress of ifindex %d before %s: %w", tcProgName, ifindex, pinset.NorthSouthTCProg, err)
			}
			return lk, nil
		}
		opts.Anchor = nil // detached meanwhile: nothing to come before
	}
	lk, err := link.AttachTCX(opts)
	if err != nil {
		return nil, fmt.Errorf("podpath: attach %s to the tcx ingress of ifindex %d: %w", tcProgName, ifindex, err)
	}
	return lk, nil
}

// northSouthProgram finds warpd's north-south program on the tcx ingress
// of ifindex.
func northSouthProgram(ifindex int) (ebpf.ProgramID, bool) {
	q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return 0, false
	}
	for _, p := range q.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			continue
		}
		info, err := prog.Info()
		prog.Close()
		if err == nil && info.Name == pinset.NorthSouthTCProg {
			return p.ID, true
		}
	}
	return 0, false
}

// detachNow detaches lk at once. Dropping the last reference (pin and fds)
// would detach it too, but the kernel frees an unpinned link from an RCU
// callback, later: the program would still run on the interface for a
// moment, and a new attachment there could find it. A link whose device is
// gone is detached already, so an error here changes nothing.
func detachNow(lk link.Link) {
	_ = lk.Detach()
}

// updateLink switches lk to prog unless it runs prog already.
func updateLink(lk link.Link, prog *ebpf.Program) error {
	info, err := lk.Info()
	if err != nil {
		return err
	}
	if id, err := pinset.ProgID(prog); err == nil && uint32(info.Program) == id {
		return nil
	}
	return lk.Update(prog)
}

// tcxIfindex is the interface a tcx link is attached to, 0 once its device
// is gone (a defunct link).
func tcxIfindex(lk link.Link) (int, error) {
	info, err := lk.Info()
	if err != nil {
		return 0, err
	}
	tcx := info.TCX()
	if tcx == nil {
		return 0, fmt.Errorf("link %d is not a tcx link", info.ID)
	}
	if ebpf.AttachType(tcx.AttachType) != ebpf.AttachTCXIngress {
		return 0, fmt.Errorf("link %d is on %v, not tcx ingress", info.ID, tcx.AttachType)
	}
	return int(tcx.Ifindex), nil
}

// RemoveTC detaches owner's tc program and removes its link pin. Nothing
// pinned is not an error, so it is repeatable; it works on a Datapath from
// OpenExisting (it loads nothing).
func (d *Datapath) RemoveTC(owner uint64) error {
	if err := d.writable(); err != nil {
		return err
	}
	pin := d.linkPin(owner)
	lk, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		// Not a link (or unreadable): remove the name anyway.
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("podpath: remove %s: %w (%v)", pin, rerr, err)
		}
		return nil
	}
	defer lk.Close()
	detachNow(lk)
	if err := lk.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("podpath: unpin tc link %s: %w", pin, err)
	}
	return nil
}

// TCAttached reports whether owner's pinned tc link is attached to the tcx
// ingress of ifindex (in the calling thread's namespace) and runs the
// pinned tc program (or the one this Datapath holds), and whether the
// interface's tcx ingress really lists it. It loads nothing: it works on a
// Datapath from OpenExisting (CNI CHECK).
func (d *Datapath) TCAttached(owner uint64, ifindex int) (bool, error) {
	lk, err := link.LoadPinnedLink(d.linkPin(owner), nil)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("podpath: open tc link of %#x: %w", owner, err)
	}
	defer lk.Close()
	info, err := lk.Info()
	if err != nil {
		return false, fmt.Errorf("podpath: tc link of %#x: %w", owner, err)
	}
	if onIf, err := tcxIfindex(lk); err != nil || onIf != ifindex {
		return false, err
	}
	ours := map[ebpf.ProgramID]bool{}
	d.mu.Lock()
	if own := d.objs.WarpTcHost; own != nil {
		if id, err := pinset.ProgID(own); err == nil {
			ours[ebpf.ProgramID(id)] = true
		}
	}
	d.mu.Unlock()
	if pinned, err := ebpf.LoadPinnedProgram(d.obj.ProgPin(tcProgName), nil); err == nil {
		if id, err := pinset.ProgID(pinned); err == nil {
			ours[ebpf.ProgramID(id)] = true
		}
		pinned.Close()
	}
	if !ours[info.Program] {
		return false, nil
	}
	q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return false, fmt.Errorf("podpath: query tcx ingress of ifindex %d: %w", ifindex, err)
	}
	for _, p := range q.Programs {
		if id, ok := p.LinkID(); ok && id == info.ID && p.ID == info.Program {
			return true, nil
		}
	}
	return false, nil
}

// updateTCLinks switches every pinned tc link to prog (an upgrade; the
// caller holds the exclusive lock). Defunct links, whose device is gone,
// are left for RemoveTC.
func (d *Datapath) updateTCLinks(prog *ebpf.Program) error {
	dir := filepath.Join(d.obj.Dir, linksDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("podpath: upgrade: %w", err)
	}
	var errs []error
	for _, e := range ents {
		pin := filepath.Join(dir, e.Name())
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			continue // a temporary name or something else: not a link of ours
		}
		err = updateLink(lk, prog)
		lk.Close()
		if err != nil && !errors.Is(err, unix.ENOLINK) {
			errs = append(errs, fmt.Errorf("update tc link %s: %w", pin, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("podpath: upgrade: %w", errors.Join(errs...))
	}
	return nil
}
