package podpath

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
)

// XDP is attached through netlink (IFLA_XDP), not through a bpf_link: a
// netlink attachment belongs to the device, so it outlives the plugin
// process without a pin of its own and disappears with the device when the
// pod's veth is deleted. Everything here acts in the network namespace of the
// calling OS thread (the netlink socket is opened there).

// AttachHost attaches the host program in native (driver) mode to ifindex,
// replacing whatever native program it ran. It attaches the pinned program,
// which is newer than the one Open returned if another process upgraded in
// between; a shared lock on the pin directory keeps an upgrade from running
// concurrently, so an interface is never left with the old program.
//
// Register the endpoint (AddEndpoint) before attaching: frames arriving on an
// interface the program does not know pass unchecked.
func (d *Datapath) AttachHost(ifindex int) error {
	release, err := d.obj.Lock(false)
	if err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	defer release()
	prog, err := d.current(hostProgName)
	if err != nil {
		return err
	}
	return d.attach(ifindex, prog)
}

// AttachPod prepares the pod end (ifindex in the calling thread's namespace,
// the pod's) for redirected traffic:
//   - it attaches the no-op program in native mode: it does nothing to
//     packets, but a veth runs NAPI only while an XDP program is attached
//     to it, and without NAPI the frames redirected into the pair
//     (XDP_REDIRECT to the host end) are dropped;
//   - it turns TX checksum offload off, because redirected packets lose
//     the skb's "checksum still to be computed" state (see ethtool.go).
func (d *Datapath) AttachPod(ifindex int) error {
	d.mu.Lock()
	prog := d.objs.WarpXdpPod
	d.mu.Unlock()
	if prog == nil {
		return errNoPrograms
	}
	l, err := netlink.LinkByIndex(ifindex) // a get, not a dump
	if err != nil {
		return fmt.Errorf("podpath: pod link %d: %w", ifindex, err)
	}
	if err := txChecksumOff(l.Attrs().Name); err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	return d.attach(ifindex, prog)
}

func (d *Datapath) attach(ifindex int, prog *ebpf.Program) error {
	id, err := pinset.ProgID(prog)
	if err != nil {
		return err
	}
	cur, err := xdpDrvProgID(ifindex)
	if err != nil {
		return err
	}
	if cur == id {
		return nil
	}
	if err := setXDP(ifindex, prog.FD(), unix.XDP_FLAGS_DRV_MODE, -1); err != nil {
		return fmt.Errorf("podpath: attach XDP to ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Detach removes the native XDP program from ifindex. No program, or no
// such interface (the program went with the device), is not an error.
func Detach(ifindex int) error {
	cur, err := xdpDrvProgID(ifindex)
	if errors.Is(err, unix.ENODEV) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur == 0 {
		return nil
	}
	err = setXDP(ifindex, -1, unix.XDP_FLAGS_DRV_MODE, -1)
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("podpath: detach XDP from ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Attached reports whether ifindex runs our host program (pod=false) or our
// no-op program (pod=true) in native mode. The host program must be the
// pinned one (or the one this Datapath holds). The no-op program also counts
// if it is an older instance with the same code (name and kernel tag): an
// upgrade re-pins it but cannot reach the pod namespaces to replace it, and
// a no-op from another build is just as good. It works on a Datapath from
// OpenExisting too: it only reads the program pins.
func (d *Datapath) Attached(ifindex int, pod bool) (bool, error) {
	cur, err := xdpDrvProgID(ifindex)
	if err != nil || cur == 0 {
		return false, err
	}
	name := hostProgName
	d.mu.Lock()
	own := d.objs.WarpXdpHost
	if pod {
		name, own = podProgName, d.objs.WarpXdpPod
	}
	d.mu.Unlock()
	ours := map[uint32]bool{}
	var ref *ebpf.Program // an instance of ours, for the pod end's code
	if own != nil {
		if id, err := pinset.ProgID(own); err == nil {
			ours[id], ref = true, own
		}
	}
	if pinned, err := ebpf.LoadPinnedProgram(d.obj.ProgPin(name), nil); err == nil {
		defer pinned.Close()
		if id, err := pinset.ProgID(pinned); err == nil {
			ours[id] = true
			if ref == nil {
				ref = pinned
			}
		}
	}
	if ref == nil {
		return false, fmt.Errorf("podpath: no %s program pinned under %s", name, d.obj.ProgsDir())
	}
	if ours[cur] || !pod {
		return ours[cur], nil
	}
	attached, err := ebpf.NewProgramFromID(ebpf.ProgramID(cur))
	if err != nil {
		return false, nil // unloaded in between
	}
	defer attached.Close()
	ai, err1 := attached.Info()
	oi, err2 := ref.Info()
	if err1 != nil || err2 != nil {
		return false, errors.Join(err1, err2)
	}
	return ai.Name == name && ai.Tag == oi.Tag && ai.Type == ebpf.XDP, nil
}

// replaceHostProgram puts prog in place of old warpnet host programs on every
// interface of the calling thread's namespace: those running old (the
// pinned program being replaced) and those running any other program named
// like ours that uses this pin set's warp_ifaces map (ifacesID), such as one
// left behind by an upgrade that was cut short. Programs of other pin sets
// are left alone. The swap is a compare-and-exchange (XDP_FLAGS_REPLACE), so
// the interface always runs one of the two programs and a program someone
// else attached meanwhile is never overwritten.
func replaceHostProgram(old, prog *ebpf.Program, ifacesID ebpf.MapID) error {
	newID, err := pinset.ProgID(prog)
	if err != nil {
		return err
	}
	var oldID uint32
	if old != nil {
		if oldID, err = pinset.ProgID(old); err != nil {
			return err
		}
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return fmt.Errorf("podpath: list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if x := l.Attrs().Xdp; x == nil || !x.Attached {
			continue
		}
		ifindex := l.Attrs().Index
		cur, err := xdpDrvProgID(ifindex)
		if err != nil || cur == 0 || cur == newID {
			continue // gone, or nothing to replace
		}
		var expected *ebpf.Program
		if cur == oldID {
			expected = old
		} else {
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(cur))
			if err != nil {
				continue
			}
			info, err := p.Info()
			if err != nil || info.Name != hostProgName || info.Type != ebpf.XDP || !usesMap(info, ifacesID) {
				p.Close()
				continue
			}
			defer p.Close()
			expected = p
		}
		err = setXDP(ifindex, prog.FD(), unix.XDP_FLAGS_DRV_MODE|unix.XDP_FLAGS_REPLACE, expected.FD())
		switch {
		case err == nil:
		case errors.Is(err, unix.ENODEV):
			// deleted meanwhile: its program went with it
		case errors.Is(err, unix.EEXIST):
			// another program was attached meanwhile: not ours to replace
		default:
			errs = append(errs, fmt.Errorf("replace XDP program on %s (ifindex %d): %w", l.Attrs().Name, ifindex, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("podpath: upgrade: %w", errors.Join(errs...))
	}
	return nil
}

func usesMap(info *ebpf.ProgramInfo, id ebpf.MapID) bool {
	ids, _ := info.MapIDs()
	return slices.Contains(ids, id)
}

// xdpDrvProgID returns the ID of the native-mode XDP program on ifindex,
// 0 if none. netlink.LinkByIndex reports only IFLA_XDP_PROG_ID, which the
// kernel leaves out when programs are attached in several modes, so the
// attribute is parsed here. A missing interface is unix.ENODEV.
func xdpDrvProgID(ifindex int) (uint32, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("podpath: ifindex %d: %w", ifindex, unix.ENODEV)
		}
		return 0, fmt.Errorf("podpath: get link %d: %w", ifindex, err)
	}
	if len(msgs) == 0 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return 0, fmt.Errorf("podpath: get link %d: short answer", ifindex)
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return 0, fmt.Errorf("podpath: get link %d: %w", ifindex, err)
	}
	for _, a := range attrs {
		if a.Attr.Type&nl.NLA_TYPE_MASK != unix.IFLA_XDP {
			continue
		}
		xattrs, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return 0, fmt.Errorf("podpath: get link %d: IFLA_XDP: %w", ifindex, err)
		}
		var mode uint8
		var progID, drvID uint32
		for _, x := range xattrs {
			switch x.Attr.Type {
			case unix.IFLA_XDP_ATTACHED:
				if len(x.Value) >= 1 {
					mode = x.Value[0]
				}
			case unix.IFLA_XDP_PROG_ID:
				if len(x.Value) >= 4 {
					progID = nl.NativeEndian().Uint32(x.Value)
				}
			case unix.IFLA_XDP_DRV_PROG_ID:
				if len(x.Value) >= 4 {
					drvID = nl.NativeEndian().Uint32(x.Value)
				}
			}
		}
		switch {
		case drvID != 0:
			return drvID, nil
		case mode == nl.XDP_ATTACHED_DRV:
			return progID, nil
		}
		return 0, nil
	}
	return 0, nil
}

// setXDP sets (fd >= 0) or removes (fd == -1) the XDP program of ifindex.
// With XDP_FLAGS_REPLACE the kernel swaps only if expectedFD is the program
// attached now (IFLA_XDP_EXPECTED_FD, which vishvananda/netlink does not
// offer), failing with EEXIST otherwise.
func setXDP(ifindex, fd int, flags uint32, expectedFD int) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	attrs := nl.NewRtAttr(unix.IFLA_XDP|unix.NLA_F_NESTED, nil)
	attrs.AddRtAttr(unix.IFLA_XDP_FD, nl.Uint32Attr(uint32(int32(fd))))
	attrs.AddRtAttr(unix.IFLA_XDP_FLAGS, nl.Uint32Attr(flags))
	if flags&unix.XDP_FLAGS_REPLACE != 0 {
		attrs.AddRtAttr(unix.IFLA_XDP_EXPECTED_FD, nl.Uint32Attr(uint32(int32(expectedFD))))
	}
	req.AddData(attrs)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
