// Package plugin implements warp-ipam's CNI verbs (ADD, DEL, CHECK, STATUS,
// GC) on top of the allocator, the disk store and conflict detection. The
// binary's main only hands these to skel.
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
	"github.com/warpnet/warpnet/ipam/store"
	"github.com/warpnet/warpnet/ipam/store/disk"
)

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
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	alloc := allocator.New(cfg, st)
	key := store.Key{ContainerID: args.ContainerID, IfName: args.IfName}

	var probe allocator.Prober
	if cfg.DetectConflicts && args.Netns != "" {
		probe = prober(args.Netns, args.IfName, cfg.ProbeTimeout)
	}
	leases, err := alloc.Allocate(key, probe)
	if err != nil {
		return cniError(err)
	}
	var undo rollback.Stack
	defer undo.OnError(&err)
	undo.Push("release the addresses of "+key.String(), func() error { _, err := alloc.Release(key); return err })
	if err := types.PrintResult(buildResult(cfg, leases), cfg.CNIVersion); err != nil {
		return cnierr.Internal(err)
	}
	faultpoint.Hit("warp-ipam.add.after-result")
	return nil
}

func buildResult(cfg *config.Config, leases []allocator.Lease) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: cfg.Routes, DNS: cfg.DNS}
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

// Del releases the attachment's addresses. It only needs the network name
// and dataDir, and succeeds when there is nothing to release.
func Del(args *skel.CmdArgs) error {
	cfg, st, err := openExistingStore(args.StdinData)
	if err != nil || st == nil {
		return err
	}
	defer st.Close()
	if _, err := allocator.New(cfg, st).Release(store.Key{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return cniError(err)
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
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	held, err := allocator.New(cfg, st).Held(key)
	if err != nil {
		return cniError(err)
	}
	if len(held) == 0 {
		return cnierr.New(types.ErrUnknownContainer, "%s holds no address in network %q", key, cfg.Network)
	}
	if len(held) != len(cfg.Ranges) {
		return cnierr.New(cnierr.CheckMismatch, "%s holds %d addresses but the network has %d range sets", key, len(held), len(cfg.Ranges))
	}
	prev, err := prevResultIPs(args.StdinData)
	if err != nil {
		return err
	}
	for _, ip := range prev {
		if inRanges(cfg, ip) && !slices.Contains(held, ip) {
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
	st, err := openStore(cfg)
	if err != nil {
		return cnierr.New(cnierr.PluginNotAvailable, "%v", err)
	}
	defer st.Close()
	full, err := allocator.New(cfg, st).Exhausted()
	if err != nil {
		return cnierr.New(cnierr.PluginNotAvailable, "cannot read reservations: %v", err)
	}
	if len(full) > 0 {
		var sets []string
		for _, i := range full {
			sets = append(sets, fmt.Sprintf("%d (%s)", i, cfg.Ranges[i]))
		}
		return cnierr.New(cnierr.PluginNotAvailable,
			"network %q: range set %s has no free address; widen the range, or run GC to free leaked ones", cfg.Network, strings.Join(sets, ", "))
	}
	return nil
}

// GC releases every attachment not listed in cni.dev/valid-attachments (or
// the pre-1.1 cni.dev/attachments).
func GC(args *skel.CmdArgs) error {
	cfg, st, err := openExistingStore(args.StdinData)
	if err != nil || st == nil {
		return err
	}
	defer st.Close()
	keep := map[store.Key]bool{}
	for _, a := range cfg.ValidAttachments {
		keep[store.Key{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	freed, err := allocator.New(cfg, st).GC(keep)
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
// this node never used the network, so there is nothing to release.
func openExistingStore(stdin []byte) (*config.Config, *disk.Store, error) {
	cfg, err := config.LoadStore(stdin)
	if err != nil || !storeExists(cfg) {
		return cfg, nil, err
	}
	st, err := openStore(cfg)
	return cfg, st, err
}

func storeExists(cfg *config.Config) bool {
	_, err := os.Stat(filepath.Join(cfg.DataDir, cfg.Network))
	return err == nil
}

func openStore(cfg *config.Config) (*disk.Store, error) {
	st, err := disk.Open(cfg.DataDir, cfg.Network)
	if err != nil {
		return nil, cnierr.New(types.ErrIOFailure, "ipam.dataDir: %v", err)
	}
	return st, nil
}

// cniError gives allocator and store errors their CNI codes.
func cniError(err error) error {
	switch {
	case errors.As(err, new(*types.Error)):
		return cnierr.Internal(err)
	case errors.Is(err, allocator.ErrAlreadyAllocated):
		return cnierr.New(cnierr.AlreadyExists, "%v", err)
	case errors.Is(err, allocator.ErrInUse), errors.Is(err, allocator.ErrExhausted),
		errors.Is(err, allocator.ErrConflict), errors.Is(err, flock.ErrTimeout):
		return cnierr.New(types.ErrTryAgainLater, "%v", err)
	default:
		return cnierr.New(types.ErrIOFailure, "%v", err)
	}
}
