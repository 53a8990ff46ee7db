// Package podpath is warp-veth's pod datapath (pod.c) and the typed Go API
// over its maps: BPF programs on the host end of every pod veth that serves
// it, one of two ways per pod (Features.Hook):
//
//   - XDP: warp_xdp_host in native mode on the host end, a no-op program on
//     the pod end (which is what makes a veth accept redirected frames at
//     all, see pod.c). Same-node pod-to-pod traffic is redirected through a
//     devmap.
//   - TC: warp_tc_host on the host end's tcx ingress hook, through a bpf_link
//     pinned per pod. Traffic to a local pod goes into its namespace with
//     bpf_redirect_peer, traffic to another node's pods to the route's next
//     hop with bpf_redirect_neigh (for the destinations SetNeighDsts names);
//     GSO and checksum offload stay on.
//
// Both drop spoofed packets and count what they passed, forwarded and
// dropped per pod, from the same maps: one registry of the node's pods
// (AddEndpoint), whichever program serves each.
//
// All state lives in maps pinned under the bpffs root (pinset.DefaultRoot:
// maps/, progs/, links/), shared by every plugin process: each CNI
// invocation is a short-lived process, so the pods' state must outlive it,
// and the programs stay attached (XDP through netlink, tc through pinned
// links) after the process exits. Loading, pinning and upgrading follow
// package pinset.
//
// Network namespaces: interface indexes are per namespace. Open (when it
// upgrades), AttachHost, AttachTC, AttachPod, Detach, Attached,
// TCAttached and AddEndpoint act in the network namespace of the calling OS
// thread, which must be the node's (where the host-side veths live) for
// all but AttachPod and the pod-end uses of Detach and Attached: the
// DEVMAP_HASH and tcx resolve an ifindex when an entry or link is made.
// Callers that switch namespaces must lock the goroutine to its thread
// (ns.Do does). Use one pin directory per node namespace.
package podpath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/rollback"
)

// Capacity of the maps. They are part of the pinned maps' specs: changing
// them makes the pinned maps incompatible (see Open).
const (
	// MaxEndpoints bounds the pods (host-side veths) per node.
	MaxEndpoints = 65536
	// MaxIPsPerEndpoint bounds the addresses of one pod; dual-stack needs 2.
	MaxIPsPerEndpoint = 8
	// maxIPs is the capacity of the address map, MAX_IPS in pod.h.
	maxIPs = 4 * MaxEndpoints
	// MaxNeighDsts bounds the prefixes SetNeighDsts takes (MAX_NEIGH_DSTS).
	MaxNeighDsts = 1024
)

// layoutVersion names the meaning of the pinned maps' contents. Map specs
// (type, key and value sizes, capacity, flags) are compared by the kernel's
// numbers, but a field could change meaning without changing a size: bump
// this whenever a struct in pod.h or the meaning of a field changes, so
// that Open refuses to reinterpret maps written by an older build. (New
// flag bits that older programs ignore, and new maps, are not changes of
// layout: the tc datapath added both to layout 1.)
const layoutVersion = 1

// Names of the programs (kernel object names, pin file names).
const (
	hostProgName = podProgWarpXdpHost
	podProgName  = podProgWarpXdpPod
	tcProgName   = podProgWarpTcHost
)

// ErrNotRegistered is wrapped by Counters for an ifindex no endpoint uses.
var ErrNotRegistered = errors.New("not a registered endpoint")

// errNoPrograms is returned by what needs the programs on a Datapath
// opened with OpenExisting or OpenReadOnly, or closed.
var errNoPrograms = errors.New("podpath: datapath opened without its programs (or closed)")

var buildID = sync.OnceValue(func() [32]byte { return pinset.BuildID(_PodBytes) })

// object is the pin set under pinDir.
func object(pinDir string) (pinset.Object, error) {
	dir, err := pinset.CheckDir(pinDir)
	if err != nil {
		return pinset.Object{}, fmt.Errorf("podpath: %w", err)
	}
	return pinset.Object{Dir: dir, Meta: podMapWarpMeta, Layout: layoutVersion, Build: buildID()}, nil
}

// Hook is the program that serves an endpoint's host end.
type Hook uint8

const (
	// XDP is warp_xdp_host in native XDP mode (AttachHost), with the no-op
	// program on the pod end (AttachPod).
	XDP Hook = iota
	// TC is warp_tc_host on the tcx ingress hook (AttachTC).
	TC
)

func (h Hook) String() string {
	switch h {
	case XDP:
		return "xdp"
	case TC:
		return "tc"
	}
	return fmt.Sprintf("Hook(%d)", uint8(h))
}

// Features switches the datapath's functions per pod.
type Features struct {
	// Hook is the program that serves the pod.
	Hook Hook
	// Redirect lets the pod's traffic bypass the node's forwarding path,
	// and with it netfilter (iptables/nftables FORWARD, conntrack): pods
	// subject to such policy must have it off.
	//
	// XDP: same-node pod-to-pod traffic is redirected through the devmap,
	// from this pod and to it: both ends need it. Enable it only once
	// AttachPod has succeeded for the pod: frames redirected to a pod end
	// without XDP are lost (see AttachPod).
	//
	// TC: the pod's packets go straight to a local destination pod that
	// has Redirect (of either hook) with bpf_redirect_peer, and to the
	// next hop of destinations in SetNeighDsts with bpf_redirect_neigh;
	// other tc pods deliver to it with bpf_redirect_peer.
	Redirect bool
	// AntiSpoof drops frames from the pod with a foreign source MAC or IP.
	AntiSpoof bool
}

// Endpoint is one pod as the datapath knows it.
type Endpoint struct {
	// Owner identifies the attachment (a hash of container ID + ifname);
	// lets DEL find the state when the link is gone. Must not be 0.
	Owner uint64
	// HostIfIndex is the host-side veth, in the node namespace.
	HostIfIndex int
	PodMAC      net.HardwareAddr
	HostMAC     net.HardwareAddr
	// IPs are the pod's addresses, IPv4 and/or IPv6 (1..MaxIPsPerEndpoint).
	IPs      []netip.Addr
	Features Features
}

// Counters are one pod's packet counters, summed over CPUs. Only frames the
// pod sends are counted (the programs run on the host end's receive path);
// redirected traffic is counted at the sender. Redirected counts what the
// pod's program forwarded itself, to a local pod or (TC) to a next hop;
// TC counts a GSO packet once, with all its bytes.
type Counters struct {
	PassPackets, PassBytes         uint64
	RedirectPackets, RedirectBytes uint64
	DropPackets, DropBytes         uint64
}

// Datapath is an open handle on the pinned maps (and, from Open, programs).
// Its methods are safe for concurrent use (but not concurrently with
// Close); map updates of all processes are serialised with a flock on the
// pin directory.
type Datapath struct {
	obj      pinset.Object
	readOnly bool

	mu   sync.Mutex // guards objs' programs, which AttachHost and AttachTC may swap
	objs podObjects
}

// Open loads the programs and maps, pinning them under pinDir on first use
// and reusing the pins afterwards, so that every plugin process shares one
// set (the protocol is pinset's). When the pins come from another build it
// upgrades in place:
//   - the pinned maps are kept (their data is the pods' state) if their
//     specs and layoutVersion match this build, else Open fails with an
//     error wrapping pinset.ErrIncompatible that says what to do; maps this
//     build adds are created;
//   - the new XDP host program atomically replaces the old one (netlink,
//     XDP_FLAGS_REPLACE with the old program as expected) on every
//     interface of the calling thread's network namespace that runs it, and
//     every pinned tc link switches to the new tc program (BPF_LINK_UPDATE),
//     so traffic never sees a gap; call Open in the node namespace;
//   - only then are the new programs pinned and the build recorded.
//
// The pod end's no-op program is pinned anew but not replaced where it is
// attached (pod namespaces are out of reach, and it touches no maps).
//
// bpffs is mounted at /sys/fs/bpf if pinDir is below it and nothing is
// mounted there yet. A failed Open removes the directories it created.
func Open(pinDir string) (_ *Datapath, err error) {
	o, err := object(pinDir)
	if err != nil {
		return nil, err
	}
	if err := pinset.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("podpath: %w", err)
	}
	undo, err := o.Prepare(linksDir)
	if err != nil {
		return nil, fmt.Errorf("podpath: %w", err)
	}
	defer func() {
		if err != nil {
			err = rollback.With(err, undo())
		}
	}()
	d := &Datapath{obj: o}
	if err := o.OpenCurrent(&d.objs); err == nil {
		return d, nil
	}
	release, err := o.Lock(true)
	if err != nil {
		return nil, fmt.Errorf("podpath: %w", err)
	}
	defer release()
	// Another process may have finished while we waited for the lock.
	if err := o.OpenCurrent(&d.objs); err == nil {
		return d, nil
	}
	if err := d.loadAndPin(); err != nil {
		return nil, err
	}
	return d, nil
}

// OpenExisting opens the pinned maps without loading, pinning or attaching
// anything, whatever build pinned them: for removing state (CNI DEL) on a
// node that may never have run the pod datapath. Nothing pinned under
// pinDir is an error wrapping pinset.ErrNotPinned. Only the endpoint,
// counter and link-removal methods work on it, and the inspection ones
// (Attached, TCAttached, NeighDsts); a map an older build did not have is
// absent (nil) until the next Open.
func OpenExisting(pinDir string) (*Datapath, error) { return openMaps(pinDir, false) }

// OpenReadOnly is OpenExisting with read-only map descriptors, for
// inspection (warpctl): every write fails.
func OpenReadOnly(pinDir string) (*Datapath, error) { return openMaps(pinDir, true) }

func openMaps(pinDir string, readOnly bool) (*Datapath, error) {
	o, err := object(pinDir)
	if err != nil {
		return nil, err
	}
	d := &Datapath{obj: o, readOnly: readOnly}
	// warp_neigh_dsts came with the tc datapath, in layout 1.
	if err := o.OpenMaps(&d.objs.podMaps, readOnly, podMapWarpNeighDsts); err != nil {
		if errors.Is(err, pinset.ErrIncompatible) {
			return nil, incompatible(o.Dir, err)
		}
		return nil, fmt.Errorf("podpath: %w", err)
	}
	return d, nil
}

// loadAndPin does the first load or an upgrade; the caller holds the
// exclusive lock on the pin directory.
func (d *Datapath) loadAndPin() (err error) {
	defer func() {
		if err != nil {
			err = rollback.With(err, pinset.Close(&d.objs))
		}
	}()
	spec, err := loadPod()
	if err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	if err := d.obj.Load(spec, &d.objs); err != nil {
		if errors.Is(err, pinset.ErrIncompatible) {
			return incompatible(d.obj.Dir, err)
		}
		return fmt.Errorf("podpath: %w", err)
	}
	old, err := ebpf.LoadPinnedProgram(d.obj.ProgPin(hostProgName), nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("podpath: open pinned %s: %w", hostProgName, err)
	}
	defer old.Close()
	if err := replaceHostProgram(old, d.objs.WarpXdpHost, pinset.MapID(d.objs.WarpIfaces)); err != nil {
		return err
	}
	if err := d.updateTCLinks(d.objs.WarpTcHost); err != nil {
		return err
	}
	if err := d.obj.Commit(&d.objs, false); err != nil {
		return fmt.Errorf("podpath: %w", err)
	}
	return nil
}

// incompatible explains what to do about pinned maps this build cannot use.
// Their entries are the registered pods; converting them is not attempted.
func incompatible(pinDir string, cause error) error {
	return fmt.Errorf("podpath: %w. The pinned maps hold the state of the pods on this node and "+
		"cannot be converted. Drain the node, detach warpnet's XDP programs from the host-side veths "+
		"(ip link set dev warpXXX xdp off), remove %s (rm -r %s: this also detaches its tc programs) "+
		"and retry; the pods must be re-created so that they are registered again", cause, pinDir, pinDir)
}

// writable fails on a read-only Datapath.
func (d *Datapath) writable() error {
	if d.readOnly {
		return errors.New("podpath: datapath opened read-only")
	}
	return nil
}

// current returns the program called name (hostProgName, tcProgName) to
// attach: the pinned one, which differs from the one Open returned if
// another process upgraded since. The caller holds at least a shared lock
// on the pin directory, so no upgrade is half-way.
func (d *Datapath) current(name string) (*ebpf.Program, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := &d.objs.WarpXdpHost
	if name == tcProgName {
		own = &d.objs.WarpTcHost
	}
	if *own == nil {
		return nil, errNoPrograms
	}
	pinned, err := ebpf.LoadPinnedProgram(d.obj.ProgPin(name), nil)
	if err != nil {
		return nil, fmt.Errorf("podpath: open pinned %s: %w", name, err)
	}
	if pinset.SameProgram(pinned, *own) {
		pinned.Close()
		return *own, nil
	}
	(*own).Close()
	*own = pinned
	return pinned, nil
}

// Close closes the Datapath's file descriptors. Pins and attachments stay.
func (d *Datapath) Close() error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return pinset.Close(&d.objs)
}
