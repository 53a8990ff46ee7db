// Package plugin implements warp-ipam's CNI verbs (ADD, DEL, CHECK, STATUS,
// GC) on top of the allocator, a store (the node's disk, or the API server
// with "store": "kubernetes") and conflict detection. The binary's main only
// hands these to skel.
package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/dupaddr"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/ipam/allocator"
	"github.com/warpnet/warpnet/ipam/config"
	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/ipam/store"
	"github.com/warpnet/warpnet/ipam/store/disk"
	kubestore "github.com/warpnet/warpnet/ipam/store/kube"
)

// errMsg is the message of a CNI error, or the error's text.
func errMsg(err error) string {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Msg
	}
	return err.Error()
}

// Add reserves one address per range set and prints the result.
func Add(args *skel.CmdArgs) (err error) {
	cfg, err := config.Load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	// skel only checks this after ADD has run, which would leak the
	// reservation; refuse before allocating anything.
	if isPluginNS, nerr := ns.CheckNetNS(args.Netns); nerr != nil {
		return nerr
	} else if isPluginNS {
		return cnierr.New(types.ErrInvalidNetNS, "CNI_NETNS: is the plugin's own network namespace; pass the pod's")
	}
	var st store.Store
	routes, dns := cfg.Routes, cfg.DNS
	var kr *kubeRun
	var sel *kube.Selection
	var superseded []*kube.IPAllocation
	if cfg.Store == config.StoreKubernetes {
		if kr, err = openKube(cfg); err != nil {
			return err
		}
		defer kr.close()
		if sel, superseded, err = kr.prepareAdd(args); err != nil {
			return err
		}
		st = kr.st
	} else if st, err = openStore(cfg); err != nil {
		return err
	} else {
		defer st.Close()
	}
	alloc := allocator.New(cfg, st)
	key := store.Key{ContainerID: args.ContainerID, IfName: args.IfName}

	var probe allocator.Prober
	if cfg.DetectConflicts && args.Netns != "" {
		probe = prober(args.Netns, args.IfName, cfg.ProbeTimeout)
	}
	leases, err := alloc.Allocate(key, probe)
	if errors.Is(err, allocator.ErrExhausted) && kr != nil && kr.st.Relist() {
		// The node's view of the held addresses was a few seconds old.
		leases, err = alloc.Allocate(key, probe)
	}
	if err != nil {
		if kr != nil {
			if aerr := kr.st.Abandon(key); aerr != nil {
				err = rollback.With(err, aerr)
			}
		}
		return cniError(kr, err)
	}
	var undo rollback.Stack
	defer undo.OnError(&err)
	undo.Push("release the addresses of "+key.String(), func() error { _, err := alloc.Release(key); return err })
	if sel != nil {
		var used []string
		for _, l := range leases {
			used = append(used, l.Range.Pool)
		}
		routes, dns = sel.Result(cfg, used)
		kr.dropSuperseded(superseded)
	}
	if err := types.PrintResult(buildResult(leases, routes, dns), cfg.CNIVersion); err != nil {
		return cnierr.Internal(err)
	}
	faultpoint.Hit("warp-ipam.add.after-result")
	return nil
}

func buildResult(leases []allocator.Lease, routes []*types.Route, dns types.DNS) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: routes, DNS: dns}
	for _, l := range leases {
		ipc := &current.IPConfig{Address: net.IPNet{
			IP:   net.IP(l.IP.AsSlice()),
			Mask: net.CIDRMask(l.Range.Subnet.Bits(), l.IP.BitLen()),
		}}
		if l.Range.Gateway.IsValid() {
			ipc.Gateway = net.IP(l.Range.Gateway.AsSlice())
		}
		res.IPs = append(res.IPs, ipc)
	}
	return res
}

// prober probes from inside the pod's namespace on its interface. Plugins
// that call IPAM before creating the interface (ptp does) cannot be probed
// for; that is said on stderr, which the runtime logs, and not an error.
func prober(netns, ifName string, timeout time.Duration) allocator.Prober {
	return func(addrs []netip.Addr) ([]allocator.Answer, error) {
		res, err := dupaddr.ProbeAll(netns, ifName, addrs, dupaddr.Options{Timeout: timeout})
		if errors.Is(err, dupaddr.ErrNoInterface) {
			fmt.Fprintf(os.Stderr, "warp-ipam: %s is not in the pod namespace yet; conflict detection skipped for %v\n", ifName, addrs)
			return make([]allocator.Answer, len(addrs)), nil
		}
		if err != nil {
			return nil, err
		}
		answers := make([]allocator.Answer, len(res))
		for i, r := range res {
			answers[i] = allocator.Answer{InUse: r.InUse, Holder: "the host with MAC " + r.Holder.String()}
		}
		return answers, nil
	}
}

// Del releases the attachment's addresses. It only needs the network name,
// dataDir and the store's keys, and succeeds when there is nothing to
// release. With the kubernetes store and the API server out of reach, the
// release is queued on the node and DEL succeeds.
func Del(args *skel.CmdArgs) error {
	cfg, st, kr, err := openExistingStore(args.StdinData)
	if err != nil && cfg != nil && cfg.Store == config.StoreKubernetes {
		// No way to the API server with this configuration: queue the
		// release on the node, as when the API server is down.
		key := store.Key{ContainerID: args.ContainerID, IfName: args.IfName}
		if qerr := kubestore.QueueRelease(cfg.DataDir, cfg.Network, key); qerr != nil {
			return rollback.With(err, qerr)
		}
		fmt.Fprintf(os.Stderr, "warp-ipam: DEL of %s queued: %s\n", key, errMsg(err))
		return nil
	}
	if err != nil || st == nil {
		return err
	}
	if kr != nil {
		defer kr.close()
	} else {
		defer st.Close()
	}
	if _, err := allocator.New(cfg, st).Release(store.Key{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return cniError(kr, err)
	}
	return nil
}

// Check verifies that the attachment still holds its addresses and that
// they are the ones prevResult reported.
func Check(args *skel.CmdArgs) error {
	cfg, err := config.Load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	key := store.Key{ContainerID: args.ContainerID, IfName: args.IfName}
	if !storeExists(cfg) {
		return cnierr.New(types.ErrUnknownContainer, "%s holds no address in network %q", key, cfg.Network)
	}
	var st store.Store
	var kr *kubeRun
	if cfg.Store == config.StoreKubernetes {
		if kr, err = openKube(cfg); err != nil {
			return err
		}
		defer kr.close()
		st = kr.st
	} else if st, err = openStore(cfg); err != nil {
		return err
	} else {
		defer st.Close()
	}
	held, err := allocator.New(cfg, st).Held(key)
	if err != nil {
		return cniError(kr, err)
	}
	if len(held) == 0 {
		return cnierr.New(types.ErrUnknownContainer, "%s holds no address in network %q", key, cfg.Network)
	}
	// The kubernetes store's range sets depend on the pod (its
	// annotations); prevResult is compared below all the same.
	if kr == nil && len(held) != len(cfg.Ranges) {
		return cnierr.New(cnierr.CheckMismatch, "%s holds %d addresses but the network has %d range sets", key, len(held), len(cfg.Ranges))
	}
	prev, err := prevResultIPs(args.StdinData)
	if err != nil {
		return err
	}
	for _, ip := range prev {
		if (kr != nil || inRanges(cfg, ip)) && !slices.Contains(held, ip) {
			return cnierr.New(cnierr.CheckMismatch, "prevResult: %s is not reserved for %s (it holds %s)", ip, key, held)
		}
	}
	for _, ip := range held {
		if prev != nil && !slices.Contains(prev, ip) {
			return cnierr.New(cnierr.CheckMismatch, "prevResult: lacks %s, which is reserved for %s", ip, key)
		}
	}
	return nil
}

func prevResultIPs(stdin []byte) ([]netip.Addr, error) {
	conf := &types.PluginConf{}
	if err := cnierr.Decode(stdin, conf); err != nil {
		return nil, err
	}
	if conf.RawPrevResult == nil {
		return nil, nil
	}
	if err := version.ParsePrevResult(conf); err != nil {
		return nil, cnierr.New(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, cnierr.New(types.ErrDecodingFailure, "prevResult: %v", err)
	}
	ips := []netip.Addr{}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	return ips, nil
}

func inRanges(cfg *config.Config, ip netip.Addr) bool {
	for _, rs := range cfg.Ranges {
		if rs.Contains(ip) {
			return true
		}
	}
	return false
}

// Status reports error 50 when ADD cannot succeed: a range set with no free
// address, or a store that cannot be opened.
func Status(args *skel.CmdArgs) error {
	cfg, err := config.Load(args.StdinData, args.Args)
	var te *types.Error
	if errors.As(err, &te) && te.Code == types.ErrTryAgainLater {
		// Not ready yet (the node's pod CIDRs are not published).
		return cnierr.New(cnierr.PluginNotAvailable, "%s", te.Msg)
	}
	if err != nil {
		return err
	}
	var st store.Store
	if cfg.Store == config.StoreKubernetes {
		kr, err := openKube(cfg)
		if err != nil {
			return cnierr.New(cnierr.PluginNotAvailable, "%s", errMsg(err))
		}
		defer kr.close()
		if len(cfg.Kube.Pools) == 0 {
			return nil // every pod names its pools: nothing to check per network
		}
		pools, err := kr.client.ListPools(kr.ctx)
		if err != nil {
			return cnierr.New(cnierr.PluginNotAvailable, "%s", errMsg(kr.apiError(err)))
		}
		if _, err := kube.Select(kr.ctx, kr.client, cfg, &kube.Pod{}, kr.node, "", pools); err != nil {
			return cnierr.New(cnierr.PluginNotAvailable, "%s", errMsg(kr.apiError(err)))
		}
		kr.st.ForPod(cfg, &kubestore.Owner{}, nil)
		st = kr.st
	} else if st, err = openStore(cfg); err != nil {
		return cnierr.New(cnierr.PluginNotAvailable, "%v", err)
	} else {
		defer st.Close()
	}
	full, err := allocator.New(cfg, st).Exhausted()
	if err != nil {
		return cnierr.New(cnierr.PluginNotAvailable, "cannot read reservations: %v", err)
	}
	if len(full) > 0 {
		var sets []string
		for _, i := range full {
			sets = append(sets, fmt.Sprintf("%d (%s)", i, cfg.Ranges[i]))
		}
		widen := "widen the range"
		if cfg.Store == config.StoreKubernetes {
			widen = "add an IPPool to ipam.pools"
		}
		return cnierr.New(cnierr.PluginNotAvailable,
			"network %q: range set %s has no free address; %s, or run GC to free leaked ones", cfg.Network, strings.Join(sets, ", "), widen)
	}
	return nil
}

// GC releases every attachment not listed in cni.dev/valid-attachments (or
// the pre-1.1 cni.dev/attachments).
func GC(args *skel.CmdArgs) error {
	cfg, st, kr, err := openExistingStore(args.StdinData)
	if err != nil || st == nil {
		return err
	}
	if kr != nil {
		defer kr.close()
	} else {
		defer st.Close()
	}
	keep := map[store.Key]bool{}
	for _, a := range cfg.ValidAttachments {
		keep[store.Key{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	freed, err := allocator.New(cfg, st).GC(keep)
	if kr != nil && err != nil {
		err = kr.apiError(err)
	}
	for _, r := range freed {
		fmt.Fprintf(os.Stderr, "warp-ipam: GC released %s held by %s\n", r.IP, r.Key)
	}
	if err != nil {
		return cnierr.New(types.ErrIOFailure, "GC released %d addresses but failed on some: %v", len(freed), err)
	}
	return nil
}

// openExistingStore is for the verbs that only release (DEL, GC): it reads
// just what locates the store, and returns a nil store, not an error, when
// this node never used the network, so there is nothing to release. For the
// kubernetes store it also returns the run (close it instead of the store).
func openExistingStore(stdin []byte) (*config.Config, store.Store, *kubeRun, error) {
	cfg, err := config.LoadStore(stdin)
	if err != nil || !storeExists(cfg) {
		return cfg, nil, nil, err
	}
	if cfg.Store == config.StoreKubernetes {
		kr, err := openKube(cfg)
		if err != nil {
			return cfg, nil, nil, err
		}
		return cfg, kr.st, kr, nil
	}
	st, err := openStore(cfg)
	return cfg, st, nil, err
}

func storeExists(cfg *config.Config) bool {
	dir := filepath.Join(cfg.DataDir, cfg.Network)
	if cfg.Store == config.StoreKubernetes {
		// Objects whose node-local state is gone are still found through
		// the API server (by their attachment label).
		return true
	}
	_, err := os.Stat(dir)
	return err == nil
}

func openStore(cfg *config.Config) (*disk.Store, error) {
	st, err := disk.Open(cfg.DataDir, cfg.Network)
	if err != nil {
		return nil, cnierr.New(types.ErrIOFailure, "ipam.dataDir: %v", err)
	}
	return st, nil
}

// cniError gives allocator and store errors their CNI codes; kr is the
// kubernetes store's run, nil for the disk store.
func cniError(kr *kubeRun, err error) error {
	switch {
	case errors.As(err, new(*types.Error)):
		return cnierr.Internal(err)
	case kr != nil && (errors.Is(err, kube.ErrUnreachable) || errors.As(err, new(*kube.APIError))):
		return kr.apiError(err)
	case errors.Is(err, allocator.ErrAlreadyAllocated):
		return cnierr.New(cnierr.AlreadyExists, "%v", err)
	case errors.Is(err, allocator.ErrInUse), errors.Is(err, allocator.ErrExhausted),
		errors.Is(err, allocator.ErrConflict), errors.Is(err, flock.ErrTimeout):
		return cnierr.New(types.ErrTryAgainLater, "%v", err)
	default:
		return cnierr.New(types.ErrIOFailure, "%v", err)
	}
}
