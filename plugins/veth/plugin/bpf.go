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

// The pod datapath (bpf/podpath) on the host end: the XDP program ("xdp")
// or the tc program ("redirect": "tc", "antiSpoof"), never both. Both
// register the pod in the same pinned maps.

func endpointOf(conf *config.NetConf, att Attachment, hostIndex int, ips []netip.Addr) podpath.Endpoint {
	f := podpath.Features{Hook: podpath.XDP, Redirect: conf.XDP.Redirect, AntiSpoof: conf.XDP.AntiSpoof}
	if conf.TC.Enabled() {
		f = podpath.Features{Hook: podpath.TC, Redirect: conf.TC.Redirect, AntiSpoof: conf.TC.AntiSpoof}
	}
	return podpath.Endpoint{
		Owner: att.Owner, HostIfIndex: hostIndex, PodMAC: att.PodMAC, HostMAC: att.HostMAC, IPs: ips, Features: f,
	}
}

// openDatapath loads (or reuses) the pinned programs and maps.
func openDatapath(conf *config.NetConf) (*podpath.Datapath, error) {
	dp, err := podpath.Open(conf.BPFFSRoot)
	if err != nil {
		return nil, fmt.Errorf("%w (bpffsRoot %s)", err, conf.BPFFSRoot)
	}
	return dp, nil
}

// attachXDP attaches the no-op program to the pod end, registers the pod in
// the pinned maps, and attaches the datapath program to the host end. The
// order matters: a veth drops redirected frames silently unless its peer
// runs XDP, so other pods may only be redirected to this one (its map entry)
// once the pod end has its program. The map entries' undo goes on Add's
// stack; the programs go with the link.
func attachXDP(conf *config.NetConf, att Attachment, hostIndex int, podNS ns.NetNS, podIndex int, ips []netip.Addr, undo *rollback.Stack) error {
	dp, err := openDatapath(conf)
	if err != nil {
		return err
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
	undo.Push("remove the XDP endpoint", func() error { return removeBPF(conf, att) })
	faultpoint.Hit("warp-veth.add.after-xdp-endpoint")
	if err := dp.AttachHost(hostIndex); err != nil {
		return fmt.Errorf("attach to %s: %w", att.HostIfName, err)
	}
	faultpoint.Hit("warp-veth.add.after-xdp-host")
	return nil
}

// attachTC registers the pod in the pinned maps, then attaches the tc
// program to the host end's tcx ingress through a link pinned for the pod
// (which, unlike an XDP program, does not go with the veth: the undo
// removes it). With redirect on, it also brings the destinations the
// program may send to their next hop up to date with warpd's facts.
func attachTC(conf *config.NetConf, att Attachment, hostIndex int, ips []netip.Addr, undo *rollback.Stack) error {
	dp, err := openDatapath(conf)
	if err != nil {
		return err
	}
	defer dp.Close()
	if err := dp.AddEndpoint(endpointOf(conf, att, hostIndex, ips)); err != nil {
		return err
	}
	undo.Push("remove the tc link and endpoint", func() error { return removeBPF(conf, att) })
	faultpoint.Hit("warp-veth.add.after-tc-endpoint")
	// Until warpd publishes the cluster's pod CIDRs, the set stays as it
	// is (and traffic to other nodes takes the stack).
	if conf.TC.Redirect && len(conf.ClusterPodCIDRs) > 0 {
		if err := dp.SetNeighDsts(conf.ClusterPodCIDRs); err != nil {
			return err
		}
	}
	if err := dp.AttachTC(att.Owner, hostIndex); err != nil {
		return fmt.Errorf("attach to %s: %w", att.HostIfName, err)
	}
	faultpoint.Hit("warp-veth.add.after-tc-link")
	return nil
}

// removeBPF removes the pod's tc link (if any) and then its map entries. It
// opens the pinned maps only, never loads: nothing pinned (a node that never
// ran the pod datapath, even if warpd created the bpffs root) means nothing
// to remove. The link goes first: it is found by the owner alone, the map
// entries through the endpoint record, so a DEL killed in between finds
// both again.
func removeBPF(conf *config.NetConf, att Attachment) error {
	dp, err := podpath.OpenExisting(conf.BPFFSRoot)
	if errors.Is(err, pinset.ErrNotPinned) {
		faultpoint.Hit("warp-veth.del.after-tc-link")
		return nil
	}
	if err != nil {
		return err
	}
	defer dp.Close()
	if err := dp.RemoveTC(att.Owner); err != nil {
		return err
	}
	faultpoint.Hit("warp-veth.del.after-tc-link")
	return dp.RemoveEndpoint(att.Owner)
}

// checkEndpoint compares what is registered for the pod with what conf says.
func checkEndpoint(dp *podpath.Datapath, conf *config.NetConf, att Attachment, hostIndex int, ips []netip.Addr) error {
	ep, ok, err := dp.Endpoint(att.Owner)
	if err != nil || !ok {
		return fmt.Errorf("no endpoint registered for %s (%v)", att.HostIfName, err)
	}
	want := endpointOf(conf, att, hostIndex, ips)
	slices.SortFunc(ep.IPs, netip.Addr.Compare)
	slices.SortFunc(want.IPs, netip.Addr.Compare)
	if ep.HostIfIndex != want.HostIfIndex || !slices.Equal(ep.IPs, want.IPs) || ep.Features != want.Features {
		return fmt.Errorf("endpoint %+v differs from the expected %+v", ep, want)
	}
	return nil
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
	if err := checkEndpoint(dp, conf, att, hostIndex, ips); err != nil {
		return cnierr.New(types.ErrInternal, "xdp: %v", err)
	}
	return nil
}

func checkTC(conf *config.NetConf, att Attachment, hostIndex int, ips []netip.Addr) error {
	dp, err := podpath.OpenExisting(conf.BPFFSRoot) // CHECK looks, it never loads
	if err != nil {
		return cnierr.New(types.ErrInternal, "tc: %v", err)
	}
	defer dp.Close()
	if ok, err := dp.TCAttached(att.Owner, hostIndex); err != nil || !ok {
		return cnierr.New(types.ErrInternal, "tc: the datapath program is not attached to the tcx ingress of %s (%v)", att.HostIfName, err)
	}
	if err := checkEndpoint(dp, conf, att, hostIndex, ips); err != nil {
		return cnierr.New(types.ErrInternal, "tc: %v", err)
	}
	return nil
}
