// Package plugin implements warp-sriov's CNI verbs: an SR-IOV VF moved into
// the pod (netdev mode) or handed over by PCI address (DPDK mode), with its
// PF-side settings applied, and put back as it was before its first
// attachment when its last holder leaves. sysfs and the PF-side operations
// are behind internal/sriov, so the same code runs on real NICs and on the
// simulator. state.go says what is kept on disk and why.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/dupaddr"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
	"github.com/warpnet/warpnet/plugins/sriov/config"
)

// resolve finds the VF, mapping sysfs errors to configuration errors that
// name deviceID (whose form config.Load has checked).
func resolve(pci string) (sysfs.VF, error) {
	vf, err := sysfs.Resolve(pci)
	switch {
	case err == nil:
		return vf, nil
	case errors.Is(err, sysfs.ErrNotFound):
		return vf, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("deviceID: no PCI device %s on this node", pci), err.Error())
	case errors.Is(err, sysfs.ErrNotVF):
		return vf, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("deviceID: %s is not an SR-IOV VF (is it the PF?)", pci), err.Error())
	default:
		return vf, cnierr.New(types.ErrInternal, "deviceID: resolve %s: %v", pci, err)
	}
}

// Add gives the pod the VF named by deviceID. Every step is undone if a
// later one fails; faultpoint.Hit marks the steps a crash can land between.
func Add(args *skel.CmdArgs) (err error) {
	conf, err := config.Load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	vf, err := resolve(conf.DeviceID)
	if err != nil {
		return err
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return cnierr.New(types.ErrInvalidNetNS, "CNI_NETNS: cannot open %q: %v", args.Netns, err)
	}
	defer podNS.Close()
	me := attachment{args.ContainerID, args.IfName, args.Netns}
	cache := cachePath(conf.DataDir, me.key())
	var prev cacheRecord
	if ok, err := readJSON(cache, &prev); err != nil {
		return err
	} else if ok {
		return cnierr.New(cnierr.AlreadyExists, "container %s %s already has VF %s: a runtime must DEL before it ADDs again", me.ContainerID, me.IfName, prev.VF.PCI)
	}

	unlock, err := lockVF(conf.DataDir, vf.PCI)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := readVF(conf.DataDir, vf.PCI)
	if err != nil {
		return err
	}
	if rec != nil {
		h := rec.Holder
		switch {
		case h.key() == me.key():
			return cnierr.New(cnierr.AlreadyExists, "VF %s is already attached to container %s %s: a runtime must DEL before it ADDs again", vf.PCI, h.ContainerID, h.IfName)
		case netnsExists(h.Netns):
			return cnierr.New(types.ErrTryAgainLater, "deviceID: VF %s is held by container %s (%s in %s); it is free once that attachment is deleted",
				vf.PCI, h.ContainerID, h.IfName, h.Netns)
		}
		// The holder's namespace is gone without a DEL: take the VF over.
		// Its record keeps the pristine state, which the holder's
		// settings must not replace.
		fmt.Fprintf(os.Stderr, "warp-sriov: VF %s: taking it over from container %s %s, whose namespace %s is gone\n", vf.PCI, h.ContainerID, h.IfName, h.Netns)
	}
	var hostLink netlink.Link
	if !vf.DPDK() {
		var inPod bool
		if err := podNS.Do(func(ns.NetNS) error { _, lerr := netlinksafe.LinkByName(args.IfName); inPod = lerr == nil; return nil }); err != nil {
			return cnierr.Internal(err)
		}
		if inPod {
			return cnierr.New(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: %q already exists in the pod namespace %s", args.IfName, args.Netns)
		}
		if hostLink, err = netlinksafe.LinkByName(vf.Netdev); vf.Netdev == "" || err != nil {
			return cnierr.New(types.ErrInternal, "deviceID: VF %s has no netdev %q in the host namespace (is it held by a pod warp-sriov does not know?)", vf.PCI, vf.Netdev)
		}
	}
	ops := pf.FromEnv()
	if rec == nil || rec.Pristine == nil {
		orig, err := snapshot(ops, vf, hostLink)
		if err != nil {
			return cnierr.Internal(err)
		}
		if rec == nil {
			rec = &vfRecord{}
		}
		rec.Pristine = &orig
	}

	var undo rollback.Stack
	defer undo.OnError(&err)
	if err := writeJSON(cache, cacheRecord{attachment: me, VF: vf, Stdin: args.StdinData}); err != nil {
		return err
	}
	undo.Push("remove "+cache, func() error { return removeFile(cache) })
	faultpoint.Hit("warp-sriov.add.after-cache")

	// The claim: from here on the record says how to put the VF back.
	rec.Holder, rec.VF = me, vf
	if err := writeJSON(vfPath(conf.DataDir, vf.PCI), rec); err != nil {
		return err
	}
	undo.Push("put VF "+vf.PCI+" back as it was before its first attachment", func() error {
		return release(ops, conf.DataDir, rec, args.Netns, "")
	})
	faultpoint.Hit("warp-sriov.add.after-claim")

	cur, err := ops.VF(vf.PFName, vf.Index)
	if err != nil {
		return cnierr.Internal(fmt.Errorf("read VF %d of %s: %w", vf.Index, vf.PFName, err))
	}
	if err := applyPF(ops, vf, cur, desiredPF(rec.Pristine.PF, conf)); err != nil {
		return cnierr.Internal(err)
	}
	faultpoint.Hit("warp-sriov.add.after-pf")

	iface := &current.Interface{Name: args.IfName, Sandbox: args.Netns, PciID: vf.PCI, Mac: conf.MAC}
	if !vf.DPDK() {
		// Unset keys take the VF's pristine MAC and MTU, not what a
		// previous holder left on it.
		mac, mtu := rec.Pristine.MAC, rec.Pristine.MTU
		if conf.MAC != "" {
			mac = conf.MAC
		}
		if conf.MTU != nil {
			mtu = *conf.MTU
		}
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return cnierr.Internal(fmt.Errorf("VF %s: MAC %q: %w", vf.PCI, mac, err))
		}
		if err := moveIn(vf.Netdev, podNS, args.IfName, hw, mtu); err != nil {
			return cnierr.Internal(err)
		}
		iface.Mac = hw.String()
		faultpoint.Hit("warp-sriov.add.after-move")
	}

	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Interfaces: []*current.Interface{iface}}
	if conf.IPAM.Type != "" {
		// Pushed first: an IPAM plugin killed halfway may have reserved.
		undo.Push("release the addresses (IPAM DEL)", func() error {
			return invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
		})
		r, err := invoke.DelegateAdd(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
		if err != nil {
			return err
		}
		faultpoint.Hit("warp-sriov.add.after-ipam")
		ipamRes, err := current.NewResultFromResult(r)
		if err != nil {
			return cnierr.New(types.ErrDecodingFailure, "IPAM result: %v", err)
		}
		for _, ipc := range ipamRes.IPs {
			ipc.Interface = current.Int(0)
		}
		res.IPs, res.Routes, res.DNS = ipamRes.IPs, ipamRes.Routes, ipamRes.DNS
		if !vf.DPDK() {
			if err := podNS.Do(func(ns.NetNS) error { return configureIPs(args.IfName, res) }); err != nil {
				return cnierr.Internal(err)
			}
			faultpoint.Hit("warp-sriov.add.after-addrs")
			// Neighbours may still map these addresses to the VF's
			// previous holder; tell them. Best effort: the pod works
			// without it once their entries expire.
			if err := dupaddr.Announce(args.Netns, args.IfName, resultAddrs(res)); err != nil {
				fmt.Fprintf(os.Stderr, "warp-sriov: gratuitous ARP/NA on %s: %v\n", args.IfName, err)
			}
		}
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// snapshot reads the VF's pristine state: PF side and, in netdev mode, its
// host netdev.
func snapshot(ops pf.PF, vf sysfs.VF, hostLink netlink.Link) (Original, error) {
	var o Original
	var err error
	if o.PF, err = ops.VF(vf.PFName, vf.Index); err != nil {
		return o, fmt.Errorf("read VF %d of %s: %w", vf.Index, vf.PFName, err)
	}
	if hostLink != nil {
		a := hostLink.Attrs()
		o.Name, o.AltNames, o.MAC, o.MTU = a.Name, a.AltNames, a.HardwareAddr.String(), a.MTU
	}
	return o, nil
}

// release puts the VF back as it was before its first attachment and
// removes its record: its last holder has left (DEL, GC, or a failed ADD).
// podPath is where the holder's netdev may still be. verb names the crash
// points ("del", "gc"; "" for none).
func release(ops pf.PF, dataDir string, rec *vfRecord, podPath, verb string) error {
	hit := func(step string) {
		if verb != "" {
			faultpoint.Hit("warp-sriov." + verb + "." + step)
		}
	}
	if rec.Pristine == nil {
		fmt.Fprintf(os.Stderr, "warp-sriov: VF %s: an older warp-sriov recorded no original state; leaving its settings as they are\n", rec.VF.PCI)
	} else {
		if err := restorePF(ops, rec.VF, rec.Pristine.PF); err != nil {
			return fmt.Errorf("restore the PF-side settings of VF %s: %w", rec.VF.PCI, err)
		}
		hit("after-restore-pf")
		if !rec.VF.DPDK() {
			if err := restoreNetdev(rec.VF, *rec.Pristine, podPath, rec.Holder.IfName); err != nil {
				return fmt.Errorf("restore the netdev of VF %s: %w", rec.VF.PCI, err)
			}
			hit("after-restore-netdev")
		}
	}
	if err := removeFile(vfPath(dataDir, rec.VF.PCI)); err != nil {
		return err
	}
	hit("after-release")
	return nil
}

func resultAddrs(res *current.Result) []netip.Addr {
	var out []netip.Addr
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// ipamType is the IPAM plugin of a cached ADD configuration ("" for none).
func ipamType(stdin []byte) string {
	if s, err := config.LoadStore(stdin); err == nil {
		return s.IPAM.Type
	}
	return ""
}

// Del undoes ADD from the cache, so it reads nothing of stdin but dataDir
// and the IPAM type: it needs neither the original stdin nor deviceID, and
// works when the rest of the configuration has since become invalid. The
// VF is put back only if this attachment still holds it: a late DEL of an
// old pod must not touch a VF a new pod has since taken over. It succeeds
// when the namespace or the cache is gone, and when repeated.
func Del(args *skel.CmdArgs) error {
	conf, err := config.LoadStore(args.StdinData)
	if err != nil {
		return err
	}
	me := key{args.ContainerID, args.IfName}
	cache := cachePath(conf.DataDir, me)
	var c cacheRecord
	ok, err := readJSON(cache, &c)
	if err != nil {
		return err
	}
	if !ok {
		// Nothing was attached, or an earlier DEL finished: at most
		// release what the IPAM plugin might still hold.
		if conf.IPAM.Type != "" {
			return invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
		}
		return nil
	}
	unlock, err := lockVF(conf.DataDir, c.VF.PCI)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := readVF(conf.DataDir, c.VF.PCI)
	if err != nil {
		return err
	}
	switch {
	case rec != nil && rec.Holder.key() == me:
		podPath := args.Netns
		if podPath == "" {
			podPath = rec.Holder.Netns
		}
		if err := release(pf.FromEnv(), conf.DataDir, rec, podPath, "del"); err != nil {
			return cnierr.Internal(err) // the cache stays: a retried DEL finishes
		}
	case rec != nil:
		fmt.Fprintf(os.Stderr, "warp-sriov: VF %s now belongs to container %s %s; DEL of %s %s leaves it alone\n",
			c.VF.PCI, rec.Holder.ContainerID, rec.Holder.IfName, me.ContainerID, me.IfName)
	}
	if t := ipamType(c.Stdin); t != "" {
		if err := invoke.DelegateDel(context.TODO(), t, c.Stdin, nil); err != nil {
			return err
		}
	}
	faultpoint.Hit("warp-sriov.del.after-ipam")
	return removeFile(cache)
}

// Check verifies that this attachment still holds its VF, the VF in the pod
// (name, MAC, addresses) and its PF-side settings against the
// configuration and prevResult, then IPAM's side.
func Check(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return cnierr.Invalid("prevResult", "missing; CHECK needs the result of ADD")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return cnierr.New(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	me := key{args.ContainerID, args.IfName}
	var c cacheRecord
	if ok, err := readJSON(cachePath(conf.DataDir, me), &c); err != nil {
		return err
	} else if !ok {
		return cnierr.New(types.ErrUnknownContainer, "no attachment of container %s %s is recorded", args.ContainerID, args.IfName)
	}
	rec, err := readVF(conf.DataDir, c.VF.PCI)
	if err != nil {
		return err
	}
	if rec == nil || rec.Holder.key() != me {
		return cnierr.New(cnierr.CheckMismatch, "VF %s is no longer held by container %s %s", c.VF.PCI, me.ContainerID, me.IfName)
	}
	if rec.Pristine != nil {
		cur, err := pf.FromEnv().VF(rec.VF.PFName, rec.VF.Index)
		if err != nil {
			return cnierr.Internal(err)
		}
		if want := desiredPF(rec.Pristine.PF, conf); cur != want {
			return cnierr.New(cnierr.CheckMismatch, "VF %d of %s has PF-side settings %+v, want %+v", rec.VF.Index, rec.VF.PFName, cur, want)
		}
	}
	if !rec.VF.DPDK() {
		if err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error { return checkLink(args.IfName, prev) }); err != nil {
			return cnierr.Internal(err)
		}
	}
	if conf.IPAM.Type != "" {
		return invoke.DelegateCheck(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	}
	return nil
}

// checkLink compares the VF in the pod with prevResult.
func checkLink(ifName string, prev *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return cnierr.New(cnierr.CheckMismatch, "%s is missing from the pod namespace", ifName)
	}
	for _, ifc := range prev.Interfaces {
		if ifc.Sandbox != "" && ifc.Name == ifName && ifc.Mac != "" && ifc.Mac != link.Attrs().HardwareAddr.String() {
			return cnierr.New(cnierr.CheckMismatch, "%s has MAC %s, prevResult says %s", ifName, link.Attrs().HardwareAddr, ifc.Mac)
		}
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return cnierr.Internal(err)
	}
	for _, ipc := range prev.IPs {
		want := (&net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}).String()
		found := false
		for _, a := range addrs {
			found = found || a.IPNet.String() == want
		}
		if !found {
			return cnierr.New(cnierr.CheckMismatch, "%s lacks address %s", ifName, ipc.Address.String())
		}
	}
	return nil
}

// Status succeeds when ADD can work as far as warp-sriov can tell: dataDir
// can be written (code 50 if not) and the IPAM plugin's STATUS succeeds.
// Which VF the next ADD gets is the device plugin's choice, so STATUS does
// not look at VFs.
func Status(args *skel.CmdArgs) error {
	conf, err := config.LoadStore(args.StdinData)
	if err != nil {
		return err
	}
	dir := filepath.Join(conf.DataDir, "vf")
	probe := func() error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		f, err := os.CreateTemp(dir, ".status-")
		if err != nil {
			return err
		}
		f.Close()
		return os.Remove(f.Name())
	}
	if err := probe(); err != nil {
		return cnierr.New(cnierr.PluginNotAvailable, "dataDir: cannot write the VF records: %v", err)
	}
	if conf.IPAM.Type != "" {
		return invoke.DelegateStatus(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	}
	return nil
}

// GC cleans up after the attachments missing from cni.dev/valid-attachments
// (the runtime lists every attachment it knows): each VF they hold is put
// back as it was before its first attachment (moved out of the holder's
// namespace if that still exists) and its record removed, their cache
// entries are removed, and the IPAM plugin's GC releases their addresses.
// It keeps going past failures and reports them all.
func GC(args *skel.CmdArgs) error {
	conf, err := config.LoadStore(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[key]bool{}
	for _, a := range conf.ValidAttachments {
		valid[key{a.ContainerID, a.IfName}] = true
	}
	ops := pf.FromEnv()
	vfs, err := listJSON(conf.DataDir, "vf")
	errs := []error{err}
	for _, path := range vfs {
		errs = append(errs, gcVF(ops, conf.DataDir, strings.TrimSuffix(filepath.Base(path), ".json"), valid))
	}
	caches, err := listJSON(conf.DataDir, "cache")
	errs = append(errs, err)
	for _, path := range caches {
		var c cacheRecord
		if _, err := readJSON(path, &c); err != nil {
			errs = append(errs, err)
			continue
		}
		if !valid[c.key()] {
			fmt.Fprintf(os.Stderr, "warp-sriov: GC: removing the cache of container %s %s\n", c.ContainerID, c.IfName)
			errs = append(errs, removeFile(path))
		}
	}
	if conf.IPAM.Type != "" {
		errs = append(errs, invoke.DelegateGC(context.TODO(), conf.IPAM.Type, args.StdinData, nil))
	}
	if err := errors.Join(errs...); err != nil {
		return cnierr.New(types.ErrInternal, "GC could not clean up everything (run it again): %v", err)
	}
	return nil
}

// gcVF releases the VF at pci if an attachment that is not valid holds it.
func gcVF(ops pf.PF, dataDir, pci string, valid map[key]bool) error {
	unlock, err := lockVF(dataDir, pci)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := readVF(dataDir, pci)
	if err != nil || rec == nil || valid[rec.Holder.key()] {
		return err
	}
	fmt.Fprintf(os.Stderr, "warp-sriov: GC: VF %s is held by container %s %s, which is not a valid attachment; putting it back\n", pci, rec.Holder.ContainerID, rec.Holder.IfName)
	return release(ops, dataDir, rec, rec.Holder.Netns, "gc")
}
