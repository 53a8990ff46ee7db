// Package plugin implements warp-veth's CNI verbs: a routed veth pair per pod
// (no bridge), addresses from any IPAM plugin, and the pod datapath (XDP or
// tc, bpf/podpath) on the host end. The binary's main only hands these to
// skel.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/plugins/veth/config"
)

func openPodNS(path string) (ns.NetNS, error) {
	podNS, err := ns.GetNS(path)
	if err != nil {
		return nil, cnierr.New(types.ErrInvalidNetNS, "CNI_NETNS: cannot open %q: %v", path, err)
	}
	return podNS, nil
}

// Add builds the pod's veth pair and routes. Every step is undone if a later
// one fails: the BPF map entries and tc link, the pair (which takes its
// routes, neighbours and XDP programs with it) and the IPAM reservation.
// Each step is a crash point (internal/faultpoint) from which DEL recovers.
func Add(args *skel.CmdArgs) (err error) {
	conf, err := config.Load(args.StdinData)
	if err != nil {
		return err
	}
	att := Derive(args.ContainerID, args.IfName)
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	// Refuse before any side effect.
	if linkExists(att.HostIfName) {
		return cnierr.New(cnierr.AlreadyExists,
			"host interface %s for container %s %s already exists: a runtime must DEL before it ADDs the same attachment again",
			att.HostIfName, args.ContainerID, args.IfName)
	}
	var present bool
	if err := podNS.Do(func(ns.NetNS) error { present = linkExists(args.IfName); return nil }); err != nil {
		return cnierr.Internal(err)
	}
	if present {
		return cnierr.New(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: %q already exists in the pod namespace %s", args.IfName, args.Netns)
	}

	var undo rollback.Stack
	defer undo.OnError(&err)
	// IPAM before the link, as ptp does: warp-ipam's conflict probe has
	// nothing to find on a point-to-point veth to our own host end, so it
	// is skipped instead of costing a probe window.
	r, err := invoke.DelegateAdd(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	if err != nil {
		return err
	}
	undo.Push("release the addresses (IPAM DEL)", func() error {
		return invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	})
	faultpoint.Hit("warp-veth.add.after-ipam")
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return cnierr.New(types.ErrDecodingFailure, "IPAM result: %v", err)
	}
	ips, err := podAddrs(res, conf.MTU)
	if err != nil {
		return err
	}

	if err := createPair(att, args.IfName, conf.MTU, podNS); err != nil {
		return cnierr.Internal(err)
	}
	// Deleting the host end takes the pod end, routes, neighbours and XDP
	// programs with it.
	undo.Push("delete veth "+att.HostIfName, func() error { return deleteLink(att.HostIfName) })
	faultpoint.Hit("warp-veth.add.after-pair")
	var podIndex int
	if err := podNS.Do(func(ns.NetNS) (err error) {
		podIndex, err = configurePod(args.IfName, att, ips, res.Routes)
		return err
	}); err != nil {
		return cnierr.Internal(err)
	}
	faultpoint.Hit("warp-veth.add.after-pod-config")
	hostIndex, err := configureHost(att, ips)
	if err != nil {
		return cnierr.Internal(err)
	}
	faultpoint.Hit("warp-veth.add.after-host-config")
	switch {
	case conf.XDP.Enabled:
		if err := attachXDP(conf, att, hostIndex, podNS, podIndex, ips, &undo); err != nil {
			return cnierr.Internal(fmt.Errorf("xdp: %w", err))
		}
	case conf.TC.Enabled():
		if err := attachTC(conf, att, hostIndex, ips, &undo); err != nil {
			return cnierr.Internal(fmt.Errorf("tc: %w", err))
		}
	}
	if err := types.PrintResult(buildResult(res, att, args, ips), conf.CNIVersion); err != nil {
		return cnierr.Internal(err)
	}
	faultpoint.Hit("warp-veth.add.after-result")
	return nil
}

// podAddrs extracts the pod's addresses from the IPAM result and checks that
// the MTU suits them.
func podAddrs(res *current.Result, mtu int) ([]netip.Addr, error) {
	if len(res.IPs) == 0 {
		return nil, cnierr.Invalid("ipam", "the IPAM plugin returned no address")
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, cnierr.New(types.ErrDecodingFailure, "IPAM result: bad address %v", ipc.Address)
		}
		a = a.Unmap()
		if a.Is6() && mtu < 1280 {
			return nil, cnierr.Invalid("mtu", "%d is below IPv6's minimum of 1280, and the pod has %s", mtu, a)
		}
		ips = append(ips, a)
	}
	return ips, nil
}

func buildResult(ipamRes *current.Result, att Attachment, args *skel.CmdArgs, ips []netip.Addr) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: att.HostIfName, Mac: att.HostMAC.String()},
			{Name: args.IfName, Mac: att.PodMAC.String(), Sandbox: args.Netns},
		},
		DNS: ipamRes.DNS,
	}
	for _, ip := range ips {
		gw := gatewayFor(ip)
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Address: *hostPrefix(ip), Gateway: addrIP(gw)})
	}
	for _, gw := range gateways(ips) {
		for _, dst := range podRoutes(gw, ipamRes.Routes) {
			res.Routes = append(res.Routes, &types.Route{Dst: *dst, GW: addrIP(gw)})
		}
	}
	return res
}

// Del removes the BPF state (tc link, map entries), the pair and its
// routes, and releases the addresses. It reads only the IPAM type and
// bpffsRoot (config.LoadDel), so it still works when the rest of the
// configuration has since become invalid. It succeeds when the namespace or the link is already gone, and
// when run again; each step is a crash point that a repeated DEL finishes.
func Del(args *skel.CmdArgs) error {
	conf, err := config.LoadDel(args.StdinData)
	if err != nil {
		return err
	}
	att := Derive(args.ContainerID, args.IfName)
	var errs []error
	// BPF state first (either datapath's: DEL does not know which one the
	// pod had): the map entries name the host end's ifindex, which the
	// kernel may give to another pod once the link is gone.
	if err := removeBPF(conf, att); err != nil {
		errs = append(errs, fmt.Errorf("pod datapath: %w", err))
	}
	faultpoint.Hit("warp-veth.del.after-endpoint")
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			// The pod end is ours only if it carries the MAC we gave it.
			if l, err := netlinksafe.LinkByName(args.IfName); err == nil && macEqual(l.Attrs().HardwareAddr, att.PodMAC) {
				return deleteLink(args.IfName)
			}
			return nil
		})
		if err != nil && !nsGone(err) {
			errs = append(errs, fmt.Errorf("pod end %s: %w", args.IfName, err))
		}
	}
	faultpoint.Hit("warp-veth.del.after-pod-link")
	if err := deleteLink(att.HostIfName); err != nil {
		errs = append(errs, err)
	}
	faultpoint.Hit("warp-veth.del.after-host-link")
	if err := invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil); err != nil {
		errs = append(errs, fmt.Errorf("IPAM DEL: %w", err))
	}
	faultpoint.Hit("warp-veth.del.after-ipam")
	if err := errors.Join(errs...); err != nil {
		// Every failure in the message; the IPAM plugin's code if it failed.
		code := uint(types.ErrInternal)
		if te, ok := errors.AsType[*types.Error](err); ok {
			code = te.Code
		}
		return cnierr.New(code, "%v", err)
	}
	return nil
}

// nsGone reports whether ns.WithNetNSPath failed because the pod namespace
// no longer exists (the pod end died with it).
func nsGone(err error) bool {
	_, missing := err.(ns.NSPathNotExistErr)
	_, notNS := err.(ns.NSPathNotNSErr)
	return missing || notNS
}

func macEqual(a, b net.HardwareAddr) bool { return a.String() == b.String() }

// Check verifies the link, addresses, routes and the datapath's attachment
// (XDP or tc) and map entries against prevResult, and asks the IPAM plugin
// to check its side.
func Check(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return cnierr.Invalid("prevResult", "missing; CHECK needs the result of ADD")
	}
	if err := invoke.DelegateCheck(context.TODO(), conf.IPAM.Type, args.StdinData, nil); err != nil {
		return err
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return cnierr.New(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	att := Derive(args.ContainerID, args.IfName)
	ips, err := podAddrs(prev, conf.MTU)
	if err != nil {
		return err
	}
	for _, ifc := range prev.Interfaces {
		want := att.HostMAC.String()
		if ifc.Sandbox != "" {
			want = att.PodMAC.String()
		}
		if ifc.Mac != want {
			return cnierr.New(types.ErrInternal, "prevResult: interface %s has MAC %s, want %s", ifc.Name, ifc.Mac, want)
		}
	}
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	var podIndex int
	if err := podNS.Do(func(ns.NetNS) error {
		podIndex, err = checkPod(args.IfName, att, ips)
		return err
	}); err != nil {
		return err
	}
	hostIndex, err := checkHost(att, ips)
	if err != nil {
		return err
	}
	switch {
	case conf.XDP.Enabled:
		return checkXDP(conf, att, hostIndex, podNS, podIndex, ips)
	case conf.TC.Enabled():
		return checkTC(conf, att, hostIndex, ips)
	}
	return nil
}

func checkPod(ifName string, att Attachment, ips []netip.Addr) (int, error) {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return 0, cnierr.New(types.ErrInternal, "%s is missing from the pod namespace", ifName)
	}
	if link.Type() != "veth" || !macEqual(link.Attrs().HardwareAddr, att.PodMAC) {
		return 0, cnierr.New(types.ErrInternal, "%s in the pod is a %s with MAC %s, want a veth with MAC %s", ifName, link.Type(), link.Attrs().HardwareAddr, att.PodMAC)
	}
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return 0, cnierr.New(types.ErrInternal, "list addresses of %s: %v", ifName, err)
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == hostPrefix(ip).String() }) {
			return 0, cnierr.New(types.ErrInternal, "%s lacks address %s", ifName, hostPrefix(ip))
		}
	}
	for _, gw := range gateways(ips) {
		routes, err := netlinksafe.RouteList(link, family(gw))
		if err != nil {
			return 0, cnierr.New(types.ErrInternal, "list routes of %s: %v", ifName, err)
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(addrIP(gw))
		}) {
			return 0, cnierr.New(types.ErrInternal, "%s lacks the default route via %s", ifName, gw)
		}
	}
	return link.Attrs().Index, nil
}

func checkHost(att Attachment, ips []netip.Addr) (int, error) {
	link, err := netlinksafe.LinkByName(att.HostIfName)
	if err != nil {
		return 0, cnierr.New(types.ErrInternal, "host interface %s is missing", att.HostIfName)
	}
	if !macEqual(link.Attrs().HardwareAddr, att.HostMAC) {
		return 0, cnierr.New(types.ErrInternal, "host interface %s has MAC %s, want %s", att.HostIfName, link.Attrs().HardwareAddr, att.HostMAC)
	}
	for _, ip := range ips {
		routes, err := netlink.RouteGet(addrIP(ip))
		if err != nil || len(routes) == 0 || routes[0].LinkIndex != link.Attrs().Index {
			return 0, cnierr.New(types.ErrInternal, "the node does not route %s to %s", ip, att.HostIfName)
		}
	}
	return link.Attrs().Index, nil
}

// Status reports the IPAM plugin's status: warp-veth itself needs nothing
// that can run out.
func Status(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData)
	if err != nil {
		return err
	}
	return invoke.DelegateStatus(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
}

// GC forwards to the IPAM plugin, which releases addresses of attachments
// that are no longer valid.
func GC(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData)
	if err != nil {
		return err
	}
	return invoke.DelegateGC(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
}
