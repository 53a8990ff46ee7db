package nodeport

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/warpnet/warpnet/bpf/pinset"
)

// The programs are attached with bpf_links, pinned under
// <root>/nodeport/links/<hook>-<ifindex>: a pinned link keeps the program
// attached after warpd exits, switches to a new program atomically on
// upgrade (BPF_LINK_UPDATE), and is not detached by another tool's
// netlink XDP or tc commands. XDP links attach in native (driver) mode;
// tcx links attach at the end of the interface's tcx ingress chain, so
// other programs there keep running first.
//
// A link belongs to the interface: when the interface is deleted (a pod's
// veth with its pod), the kernel detaches it and the pin stays behind as a
// defunct link, which Prune removes.

// Hook is where a program runs.
type Hook string

// The hooks.
const (
	XDP Hook = "xdp" // np_xdp, native XDP
	TC  Hook = "tc"  // np_tc, tcx ingress
)

// Attachment is one pinned link.
type Attachment struct {
	Ifindex int
	Hook    Hook
	// Defunct: the interface is gone (the link is detached).
	Defunct bool
}

func linkPin(o pinset.Object, h Hook, ifindex int) string {
	return filepath.Join(linksDir(o), fmt.Sprintf("%s-%d", h, ifindex))
}

// attachProg returns the program to attach for h: the pinned one (newer
// than l's if another process upgraded since Open), or l's own while l is
// staged. The caller closes it.
func (l *LB) attachProg(h Hook) (*ebpf.Program, error) {
	own := l.objs.NpTc
	name := npProgNpTc
	if h == XDP {
		own, name = l.objs.NpXdp, npProgNpXdp
	}
	if l.Staged() != "" {
		return own.Clone()
	}
	p, err := ebpf.LoadPinnedProgram(l.obj.ProgPin(name), nil)
	if err != nil {
		return nil, fmt.Errorf("nodeport: open pinned %s: %w", name, err)
	}
	return p, nil
}

// AttachXDP attaches np_xdp to ifindex in native mode. It fails where the
// driver has no native XDP (use AttachTC). Idempotent.
func (l *LB) AttachXDP(ifindex int) error { return l.attach(XDP, ifindex) }

// AttachTC attaches np_tc to the tcx ingress of ifindex. Idempotent.
func (l *LB) AttachTC(ifindex int) error { return l.attach(TC, ifindex) }

func (l *LB) attach(h Hook, ifindex int) error {
	if err := l.writable(); err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	prog, err := l.attachProg(h)
	if err != nil {
		return err
	}
	defer prog.Close()
	pin := linkPin(l.obj, h, ifindex)
	if lk, err := link.LoadPinnedLink(pin, nil); err == nil {
		live, id := linkState(lk, h)
		if live == ifindex {
			want, _ := pinset.ProgID(prog)
			if id != want && l.Staged() == "" {
				err = lk.Update(prog)
			}
			lk.Close()
			if err != nil {
				return fmt.Errorf("nodeport: update link %s: %w", pin, err)
			}
			return nil
		}
		// defunct (or another interface by that index): replace it
		err = errors.Join(lk.Unpin(), lk.Close())
		if err != nil {
			return fmt.Errorf("nodeport: remove stale link %s: %w", pin, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("nodeport: open pinned link %s: %w", pin, err)
	}
	var lk link.Link
	if h == XDP {
		lk, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	} else {
		lk, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
	}
	if err != nil {
		return fmt.Errorf("nodeport: attach %s to interface %d: %w", h, ifindex, err)
	}
	err = lk.Pin(pin)
	lk.Close() // the pin keeps it attached; without one, this detaches it
	if err != nil {
		return fmt.Errorf("nodeport: pin link %s: %w", pin, err)
	}
	return nil
}

// linkState returns the interface a link is attached to (0: defunct) and
// its program's ID.
func linkState(lk link.Link, h Hook) (ifindex int, prog uint32) {
	info, err := lk.Info()
	if err != nil {
		return 0, 0
	}
	if h == XDP {
		if x := info.XDP(); x != nil {
			ifindex = int(x.Ifindex)
		}
	} else if t := info.TCX(); t != nil {
		ifindex = int(t.Ifindex)
	}
	return ifindex, uint32(info.Program)
}

// Detach detaches the hook from ifindex and removes its pin. Nothing
// attached is not an error.
func (l *LB) Detach(h Hook, ifindex int) error {
	if err := l.writable(); err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	return detachPin(linkPin(l.obj, h, ifindex))
}

func detachPin(pin string) error {
	lk, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// not a link: remove the name anyway
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("nodeport: remove %s: %w (%v)", pin, rerr, err)
		}
		return nil
	}
	defer lk.Close()
	// A defunct link has nothing to detach from.
	if derr := lk.Detach(); derr != nil && !errors.Is(derr, os.ErrNotExist) {
		if h, idx := hookOfPin(pin); idx != 0 {
			if live, _ := linkState(lk, h); live != 0 {
				return fmt.Errorf("nodeport: detach %s: %w", pin, derr)
			}
		}
	}
	if err := lk.Unpin(); err != nil {
		return fmt.Errorf("nodeport: unpin %s: %w", pin, err)
	}
	return nil
}

func hookOfPin(pin string) (Hook, int) {
	name := filepath.Base(pin)
	h, idx, ok := strings.Cut(name, "-")
	if !ok || (Hook(h) != XDP && Hook(h) != TC) {
		return "", 0
	}
	n, err := strconv.Atoi(idx)
	if err != nil || n <= 0 {
		return "", 0
	}
	return Hook(h), n
}

// Attachments lists the pinned links.
func (l *LB) Attachments() ([]Attachment, error) {
	ents, err := os.ReadDir(linksDir(l.obj))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("nodeport: %w", err)
	}
	var out []Attachment
	for _, e := range ents {
		h, idx := hookOfPin(e.Name())
		if idx == 0 {
			continue
		}
		a := Attachment{Ifindex: idx, Hook: h}
		// Links open read-write only (the kernel refuses BPF_F_RDONLY
		// for them); opening changes nothing. One that cannot be opened
		// is not called defunct: Prune would detach it.
		if lk, err := link.LoadPinnedLink(filepath.Join(linksDir(l.obj), e.Name()), nil); err == nil {
			live, _ := linkState(lk, h)
			a.Defunct = live != idx
			lk.Close()
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Attachment) int {
		if a.Ifindex != b.Ifindex {
			return a.Ifindex - b.Ifindex
		}
		return strings.Compare(string(a.Hook), string(b.Hook))
	})
	return out, nil
}

// Prune removes the pins of defunct links (their interfaces are gone) and
// returns how many.
func (l *LB) Prune() (int, error) {
	if err := l.writable(); err != nil {
		return 0, err
	}
	att, err := l.Attachments()
	if err != nil {
		return 0, err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return 0, fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	n := 0
	var errs []error
	for _, a := range att {
		if !a.Defunct {
			continue
		}
		if err := detachPin(linkPin(l.obj, a.Hook, a.Ifindex)); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// updateLinks switches every live pinned link to l's programs (an upgrade,
// or the Commit of a rebuild); the caller holds the lock.
func (l *LB) updateLinks() error {
	ents, err := os.ReadDir(linksDir(l.obj))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	var errs []error
	for _, e := range ents {
		h, idx := hookOfPin(e.Name())
		if idx == 0 {
			continue
		}
		prog := l.objs.NpTc
		if h == XDP {
			prog = l.objs.NpXdp
		}
		pin := filepath.Join(linksDir(l.obj), e.Name())
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("nodeport: open pinned link %s: %w", pin, err))
			continue
		}
		if live, _ := linkState(lk, h); live == 0 {
			// defunct: nothing runs there any more
			errs = append(errs, errors.Join(lk.Unpin()))
		} else if err := lk.Update(prog); err != nil {
			errs = append(errs, fmt.Errorf("nodeport: update link %s: %w", pin, err))
		}
		lk.Close()
	}
	return errors.Join(errs...)
}
