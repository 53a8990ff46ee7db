package plugin

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/plugins/veth/config"
)

func endpointOf(conf *config.NetConf, att Attachment, hostIndex int, ips []netip.Addr) podpath.Endpoint {
	return podpath.Endpoint{
		Owner: att.Owner, HostIfIndex: hostIndex, PodMAC: att.PodMAC, HostMAC: att.HostMAC, IPs: ips,
		Features: podpath.Features{Redirect: conf.XDP.Redirect, AntiSpoof: conf.XDP.AntiSpoof},
	}
}

// attachXDP attaches the no-op program to the pod end, registers the pod in
// the pinned maps, and attaches the datapath program to the host end. The
// order matters: a veth drops redirected frames silently unless its peer
// runs XDP, so other pods may only be redirected to this one (its map entry)
// once the pod end has its program. The map entries' undo goes on Add's
// stack; the programs go with the link.
func attachXDP(conf *config.NetConf, att Attachment, hostIndex int, podNS ns.NetNS, podIndex int, ips []netip.Addr, undo *rollback.Stack) error {
	dp, err := podpath.Open(conf.BPFFSRoot)
	if err != nil {
		return fmt.Errorf("%w (bpffsRoot %s)", err, conf.BPFFSRoot)
	}
	defer dp.Close()
	if err := podNS.Do(func(ns.NetNS) error { return dp.AttachPod(podIndex) }); err != nil {
		return fmt.Errorf("attach to the pod end: %w", err)
	}
	faultpoint.Hit("warp-veth.add.after-xdp-pod")
	// AddEndpoint resolves the host ifindex for the redirect map in the
	// calling namespace: the node's, where the plugin runs.
	if err := dp.AddEndpoint(endpointOf(conf, att, hostIndex, ips)); err != nil {
		return err
	}
	// The undo runs after dp is closed: it opens the pins again.
	undo.Push("remove the XDP endpoint", func() error { return detachXDP(conf, att) })
	faultpoint.Hit("warp-veth.add.after-xdp-endpoint")
	if err := dp.AttachHost(hostIndex); err != nil {
		return fmt.Errorf("attach to %s: %w", att.HostIfName, err)
	}
	faultpoint.Hit("warp-veth.add.after-xdp-host")
	return nil
}

// detachXDP removes the pod's map entries. It opens the pinned maps only,
// never loads: nothing pinned (a node that never ran XDP, even if warpd
// created the bpffs root) means nothing to remove.
func detachXDP(conf *config.NetConf, att Attachment) error {
	dp, err := podpath.OpenExisting(conf.BPFFSRoot)
	if errors.Is(err, pinset.ErrNotPinned) {
		return nil
	}
	if err != nil {
		return err
	}
	defer dp.Close()
	return dp.RemoveEndpoint(att.Owner)
}

func checkXDP(conf *config.NetConf, att Attachment, hostIndex int, podNS ns.NetNS, podIndex int, ips []netip.Addr) error {
	dp, err := podpath.OpenExisting(conf.BPFFSRoot) // CHECK looks, it never loads
	if err != nil {
		return cnierr.New(types.ErrInternal, "xdp: %v", err)
	}
	defer dp.Close()
	if ok, err := dp.Attached(hostIndex, false); err != nil || !ok {
		return cnierr.New(types.ErrInternal, "xdp: the datapath program is not attached to %s (%v)", att.HostIfName, err)
	}
	var podOK bool
	if err := podNS.Do(func(ns.NetNS) (err error) { podOK, err = dp.Attached(podIndex, true); return err }); err != nil || !podOK {
		return cnierr.New(types.ErrInternal, "xdp: the pod end's program is not attached (%v)", err)
	}
	ep, ok, err := dp.Endpoint(att.Owner)
	if err != nil || !ok {
		return cnierr.New(types.ErrInternal, "xdp: no endpoint registered for %s (%v)", att.HostIfName, err)
	}
	want := endpointOf(conf, att, hostIndex, ips)
	slices.SortFunc(ep.IPs, netip.Addr.Compare)
	slices.SortFunc(want.IPs, netip.Addr.Compare)
	if ep.HostIfIndex != want.HostIfIndex || !slices.Equal(ep.IPs, want.IPs) || ep.Features != want.Features {
		return cnierr.New(types.ErrInternal, "xdp: endpoint %+v differs from the expected %+v", ep, want)
	}
	return nil
}
