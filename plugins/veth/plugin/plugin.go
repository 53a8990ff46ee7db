// Package plugin implements warp-veth's CNI verbs: a routed veth pair per pod
// (no bridge), addresses from any IPAM plugin, and the XDP datapath on the
// host end. The binary's main only hands these to skel.
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
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/plugins/veth/config"
)

func openPodNS(path string) (ns.NetNS, error) {
	podNS, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS: cannot open %q: %v", path, err), "")
	}
	return podNS, nil
}

// Add builds the pod's veth pair and routes. Every step is undone if a later
// one fails: the pair (which takes its routes, neighbours and XDP programs
// with it), the BPF map entries, and the IPAM reservation.
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
		return types.NewError(cnierr.AlreadyExists,
			fmt.Sprintf("host interface %s for container %s %s already exists: a runtime must DEL before it ADDs the same attachment again",
				att.HostIfName, args.ContainerID, args.IfName), "")
	}
	var present bool
	_ = podNS.Do(func(ns.NetNS) error { present = linkExists(args.IfName); return nil })
	if present {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_IFNAME: %q already exists in the pod namespace %s", args.IfName, args.Netns), "")
	}

	// IPAM before the link, as ptp does: warp-ipam's conflict probe has
	// nothing to find on a point-to-point veth to our own host end, so it
	// is skipped instead of costing a probe window.
	r, err := invoke.DelegateAdd(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
		}
	}()
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "IPAM result: "+err.Error(), "")
	}
	ips, err := podAddrs(res, conf.MTU)
	if err != nil {
		return err
	}

	if err := createPair(att, args.IfName, conf.MTU, podNS); err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	defer func() {
		if err != nil {
			_ = deleteLink(att.HostIfName) // takes the pod end, routes, neighbours and XDP with it
		}
	}()
	var podIndex int
	if err := podNS.Do(func(ns.NetNS) error {
		podIndex, err = configurePod(args.IfName, att, ips, res.Routes)
		return err
	}); err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	hostIndex, err := configureHost(att, ips)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	if conf.XDP.Enabled {
		if err := attachXDP(conf, att, hostIndex, podNS, podIndex, ips); err != nil {
			return types.NewError(types.ErrInternal, "xdp: "+err.Error(), "")
		}
	}
	return types.PrintResult(buildResult(res, att, args, ips), conf.CNIVersion)
}

// podAddrs extracts the pod's addresses from the IPAM result and checks that
// the MTU suits them.
func podAddrs(res *current.Result, mtu int) ([]netip.Addr, error) {
	if len(res.IPs) == 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "ipam: the IPAM plugin returned no address", "")
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("IPAM result: bad address %v", ipc.Address), "")
		}
		a = a.Unmap()
		if a.Is6() && mtu < 1280 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("mtu: %d is below IPv6's minimum of 1280, and the pod has %s", mtu, a), "")
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

// Del removes the pair, its routes and BPF state, and releases the address.
// It succeeds when the namespace or the link are already gone, and when run
// again.
func Del(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData)
	if err != nil {
		return err
	}
	att := Derive(args.ContainerID, args.IfName)
	var errs []error
	if err := detachXDP(conf, att); err != nil {
		errs = append(errs, fmt.Errorf("xdp: %w", err))
	}
	if args.Netns != "" {
		// The pod end is ours only if it carries the MAC we gave it.
		_ = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			if l, err := netlink.LinkByName(args.IfName); err == nil && macEqual(l.Attrs().HardwareAddr, att.PodMAC) {
				errs = append(errs, deleteLink(args.IfName))
			}
			return nil
		})
	}
	errs = append(errs, deleteLink(att.HostIfName))
	if err := invoke.DelegateDel(context.TODO(), conf.IPAM.Type, args.StdinData, nil); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return te
		}
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	return nil
}

func macEqual(a, b net.HardwareAddr) bool { return a.String() == b.String() }

// Check verifies the link, addresses, routes and XDP attachment against
// prevResult, and asks the IPAM plugin to check its side.
func Check(args *skel.CmdArgs) error {
	conf, err := config.Load(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult: missing; CHECK needs the result of ADD", "")
	}
	if err := invoke.DelegateCheck(context.TODO(), conf.IPAM.Type, args.StdinData, nil); err != nil {
		return err
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
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
			return checkErr("prevResult: interface %s has MAC %s, want %s", ifc.Name, ifc.Mac, want)
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
	if conf.XDP.Enabled {
		return checkXDP(conf, att, hostIndex, podNS, podIndex, ips)
	}
	return nil
}

func checkErr(format string, a ...any) error {
	return types.NewError(types.ErrInternal, fmt.Sprintf(format, a...), "")
}

func checkPod(ifName string, att Attachment, ips []netip.Addr) (int, error) {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return 0, checkErr("%s is missing from the pod namespace", ifName)
	}
	if link.Type() != "veth" || !macEqual(link.Attrs().HardwareAddr, att.PodMAC) {
		return 0, checkErr("%s in the pod is a %s with MAC %s, want a veth with MAC %s", ifName, link.Type(), link.Attrs().HardwareAddr, att.PodMAC)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return 0, checkErr("list addresses of %s: %v", ifName, err)
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == hostPrefix(ip).String() }) {
			return 0, checkErr("%s lacks address %s", ifName, hostPrefix(ip))
		}
	}
	for _, gw := range gateways(ips) {
		routes, err := netlink.RouteList(link, family(gw))
		if err != nil {
			return 0, checkErr("list routes of %s: %v", ifName, err)
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(addrIP(gw))
		}) {
			return 0, checkErr("%s lacks the default route via %s", ifName, gw)
		}
	}
	return link.Attrs().Index, nil
}

func checkHost(att Attachment, ips []netip.Addr) (int, error) {
	link, err := netlink.LinkByName(att.HostIfName)
	if err != nil {
		return 0, checkErr("host interface %s is missing", att.HostIfName)
	}
	if !macEqual(link.Attrs().HardwareAddr, att.HostMAC) {
		return 0, checkErr("host interface %s has MAC %s, want %s", att.HostIfName, link.Attrs().HardwareAddr, att.HostMAC)
	}
	for _, ip := range ips {
		routes, err := netlink.RouteGet(addrIP(ip))
		if err != nil || len(routes) == 0 || routes[0].LinkIndex != link.Attrs().Index {
			return 0, checkErr("the node does not route %s to %s", ip, att.HostIfName)
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
