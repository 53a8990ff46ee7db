// Package plugin implements warp-sriov's CNI verbs: an SR-IOV VF moved into
// the pod (netdev mode) or handed over by PCI address (DPDK mode), with its
// PF-side settings applied and restored. sysfs and the PF-side operations are
// behind internal/sriov, so the same code runs on real NICs and on the
// simulator.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/dupaddr"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
	"github.com/warpnet/warpnet/plugins/sriov/config"
)

func internalErr(err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

// resolve finds the VF, mapping sysfs errors to configuration errors that
// name deviceID.
func resolve(pci string) (sysfs.VF, error) {
	sysfs.UseEnv()
	vf, err := sysfs.Resolve(pci)
	switch {
	case err == nil:
		return vf, nil
	case errors.Is(err, sysfs.ErrMalformed):
		return vf, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("deviceID: %q is not a PCI address (want DDDD:BB:DD.F)", pci), "")
	case errors.Is(err, sysfs.ErrNotFound):
		return vf, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("deviceID: no PCI device %s on this node", pci), err.Error())
	case errors.Is(err, sysfs.ErrNotVF):
		return vf, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("deviceID: %s is not an SR-IOV VF (is it the PF?)", pci), err.Error())
	default:
		return vf, types.NewError(types.ErrInternal, fmt.Sprintf("deviceID: resolve %s: %v", pci, err), "")
	}
}

// undoStack runs compensations in reverse order, for layered rollback.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }
func (u undoStack) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// Add gives the pod the VF named by deviceID.
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
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS: cannot open %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()
	me := key{args.ContainerID, args.IfName}

	unlock, err := lockVF(conf.DataDir, vf.PCI)
	if err != nil {
		return internalErr(err)
	}
	defer unlock()
	var held allocation
	if ok, err := readJSON(allocPath(conf.DataDir, vf.PCI), &held); err != nil {
		return internalErr(err)
	} else if ok {
		switch {
		case held.key() == me:
			return types.NewError(cnierr.AlreadyExists, fmt.Sprintf("VF %s is already attached to container %s %s: a runtime must DEL before it ADDs again", vf.PCI, me.ContainerID, me.IfName), "")
		case netnsExists(held.Netns):
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("deviceID: VF %s is held by container %s (%s in %s); it is free once that attachment is deleted",
				vf.PCI, held.ContainerID, held.IfName, held.Netns), "")
		}
		// The holder's namespace is gone: a record its DEL never cleared.
	}
	if !vf.DPDK() {
		var present bool
		_ = podNS.Do(func(ns.NetNS) error { _, lerr := netlink.LinkByName(args.IfName); present = lerr == nil; return nil })
		if present {
			return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME: %q already exists in the pod namespace %s", args.IfName, args.Netns), "")
		}
	}

	// Record the VF as it is before touching it, so DEL (or this ADD's
	// rollback) can restore it even after a crash halfway.
	ops := pf.FromEnv()
	rec := record{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, VF: vf, Stdin: args.StdinData}
	if rec.Orig.PF, err = ops.VF(vf.PFName, vf.Index); err != nil {
		return internalErr(fmt.Errorf("read VF %d of %s: %w", vf.Index, vf.PFName, err))
	}
	if !vf.DPDK() {
		link, err := netlink.LinkByName(vf.Netdev)
		if err != nil {
			return internalErr(fmt.Errorf("deviceID: VF %s's netdev %s is not in the host namespace (held by another pod?): %w", vf.PCI, vf.Netdev, err))
		}
		a := link.Attrs()
		rec.Orig.Name, rec.Orig.AltNames, rec.Orig.MAC, rec.Orig.MTU = vf.Netdev, a.AltNames, a.HardwareAddr.String(), a.MTU
	}
	cache := cachePath(conf.DataDir, me)
	if err := writeJSON(cache, rec); err != nil {
		return internalErr(err)
	}
	var undo undoStack
	undo.push(func() { _ = removeFile(cache) })
	defer func() {
		if err != nil {
			undo.run()
		}
	}()

	undo.push(func() { _ = restorePF(ops, vf, rec.Orig.PF) })
	if err := applyPF(ops, vf, rec.Orig.PF, desiredPF(rec.Orig.PF, conf)); err != nil {
		return internalErr(err)
	}

	iface := &current.Interface{Name: args.IfName, Sandbox: args.Netns, PciID: vf.PCI}
	if !vf.DPDK() {
		mtu := 0
		if conf.MTU != nil {
			mtu = *conf.MTU
		}
		undo.push(func() { _ = moveOut(podNS, args.IfName, rec.Orig) })
		if err := moveIn(vf.Netdev, podNS, args.IfName, conf.MAC, mtu); err != nil {
			return internalErr(err)
		}
		_ = podNS.Do(func(ns.NetNS) error {
			if l, lerr := netlink.LinkByName(args.IfName); lerr == nil {
				iface.Mac = l.Attrs().HardwareAddr.String()
			}
			return nil
		})
	} else if conf.MAC != "" {
		iface.Mac = conf.MAC
	}

	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Interfaces: []*current.Interface{iface}}
	if conf.IPAM.Type != "" {
		r, err := invoke.DelegateAdd(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
		if err != nil {
			return err
		}
		undo.push(func() { _ = invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil) })
		ipamRes, err := current.NewResultFromResult(r)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "IPAM result: "+err.Error(), "")
		}
		for _, ipc := range ipamRes.IPs {
			ipc.Interface = current.Int(0)
		}
		res.IPs, res.Routes, res.DNS = ipamRes.IPs, ipamRes.Routes, ipamRes.DNS
		if !vf.DPDK() {
			if err := podNS.Do(func(ns.NetNS) error { return configureIPs(args.IfName, res) }); err != nil {
				return internalErr(err)
			}
			// Neighbours may still map these addresses to the VF's
			// previous holder; tell them. Best effort: the pod works
			// without it once their entries expire.
			if err := dupaddr.Announce(args.Netns, args.IfName, resultAddrs(res)); err != nil {
				fmt.Fprintf(os.Stderr, "warp-sriov: gratuitous ARP/NA on %s: %v\n", args.IfName, err)
			}
		}
	}
	if err := writeJSON(allocPath(conf.DataDir, vf.PCI), allocation{args.ContainerID, args.IfName, args.Netns}); err != nil {
		return internalErr(err)
	}
	return types.PrintResult(res, conf.CNIVersion)
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

// Del undoes ADD from the cached record, so it needs neither the original
// stdin nor deviceID. The VF is only reset if this attachment still holds
// it: a late DEL of an old pod must not touch a VF a new pod now has. It
// succeeds when the namespace or the cache is gone, and when repeated.
func Del(args *skel.CmdArgs) error {
	conf, err := config.Decode(args.StdinData)
	if err != nil {
		return err
	}
	me := key{args.ContainerID, args.IfName}
	var rec record
	ok, err := readJSON(cachePath(conf.DataDir, me), &rec)
	if err != nil {
		return internalErr(fmt.Errorf("read cache: %w", err))
	}
	if !ok {
		// Nothing was attached, or an earlier DEL finished: at most
		// release what the IPAM plugin might still hold.
		if conf.IPAM.Type != "" {
			return invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
		}
		return nil
	}
	unlock, err := lockVF(conf.DataDir, rec.VF.PCI)
	if err != nil {
		return internalErr(err)
	}
	defer unlock()
	var held allocation
	if _, err := readJSON(allocPath(conf.DataDir, rec.VF.PCI), &held); err != nil {
		return internalErr(err)
	}
	var errs []error
	if held.ContainerID == "" || held.key() == me {
		errs = append(errs, restorePF(pf.FromEnv(), rec.VF, rec.Orig.PF))
		if !rec.VF.DPDK() && args.Netns != "" && netnsExists(args.Netns) {
			if podNS, err := ns.GetNS(args.Netns); err == nil {
				errs = append(errs, moveOut(podNS, args.IfName, rec.Orig))
				podNS.Close()
			}
		}
		if held.key() == me {
			errs = append(errs, removeFile(allocPath(conf.DataDir, rec.VF.PCI)))
		}
	} else {
		fmt.Fprintf(os.Stderr, "warp-sriov: VF %s now belongs to container %s %s; DEL of %s %s leaves it alone\n",
			rec.VF.PCI, held.ContainerID, held.IfName, me.ContainerID, me.IfName)
	}
	var addConf struct {
		IPAM types.IPAM `json:"ipam"`
	}
	if err := json.Unmarshal(rec.Stdin, &addConf); err == nil && addConf.IPAM.Type != "" {
		if err := invoke.DelegateDel(context.TODO(), addConf.IPAM.Type, rec.Stdin, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return internalErr(err) // keep the cache: a retried DEL can finish
	}
	return internalErrOrNil(removeFile(cachePath(conf.DataDir, me)))
}

func internalErrOrNil(err error) error {
	if err == nil {
		return nil
	}
	return internalErr(err)
}

// Check verifies the VF in the pod (name, MAC, addresses) and its PF-side
// settings against the configuration and prevResult, then IPAM's side.
func Check(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult: missing; CHECK needs the result of ADD", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	var rec record
	if ok, err := readJSON(cachePath(conf.DataDir, key{args.ContainerID, args.IfName}), &rec); err != nil || !ok {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("no attachment of container %s %s is recorded (%v)", args.ContainerID, args.IfName, err), "")
	}
	ops := pf.FromEnv()
	cur, err := ops.VF(rec.VF.PFName, rec.VF.Index)
	if err != nil {
		return internalErr(err)
	}
	if want := desiredPF(rec.Orig.PF, conf); cur != want {
		return internalErr(fmt.Errorf("VF %d of %s has PF-side settings %+v, want %+v", rec.VF.Index, rec.VF.PFName, cur, want))
	}
	if !rec.VF.DPDK() {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			link, err := netlink.LinkByName(args.IfName)
			if err != nil {
				return fmt.Errorf("%s is missing from the pod namespace", args.IfName)
			}
			for _, ifc := range prev.Interfaces {
				if ifc.Sandbox != "" && ifc.Name == args.IfName && ifc.Mac != "" && ifc.Mac != link.Attrs().HardwareAddr.String() {
					return fmt.Errorf("%s has MAC %s, prevResult says %s", args.IfName, link.Attrs().HardwareAddr, ifc.Mac)
				}
			}
			addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
			if err != nil {
				return err
			}
			for _, ipc := range prev.IPs {
				found := false
				for _, a := range addrs {
					found = found || a.IPNet.String() == (&net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}).String()
				}
				if !found {
					return fmt.Errorf("%s lacks address %s", args.IfName, ipc.Address.String())
				}
			}
			return nil
		})
		if err != nil {
			return internalErr(err)
		}
	}
	if conf.IPAM.Type != "" {
		return invoke.DelegateCheck(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	}
	return nil
}

// Status and GC are the IPAM plugin's: warp-sriov holds nothing else that
// can run out or leak across attachments.
func Status(args *skel.CmdArgs) error {
	conf, err := config.Decode(args.StdinData)
	if err != nil || conf.IPAM.Type == "" {
		return err
	}
	return invoke.DelegateStatus(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
}

func GC(args *skel.CmdArgs) error {
	conf, err := config.Decode(args.StdinData)
	if err != nil || conf.IPAM.Type == "" {
		return err
	}
	return invoke.DelegateGC(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
}
