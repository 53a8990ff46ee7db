// Package bpf holds warpnet's BPF programs and the one typed Go API over
// their maps.
//
// The XDP datapath (xdp_pod.c) runs in native mode on the host end of every
// warp-veth pod veth. Per pod it drops spoofed frames, redirects pod-to-pod
// traffic on the same node straight to the destination veth, and counts what
// it passed, redirected and dropped. The pod end runs a no-op program, which
// is what makes a veth accept redirected frames at all (see xdp_pod.c).
//
// All state lives in maps pinned under a directory on bpffs (DefaultPinDir),
// shared by every plugin process and the node daemon: each CNI invocation is
// a short-lived process, so the pods' state must outlive it, and the
// programs stay attached through netlink after the process exits.
//
// Network namespaces: interface indexes are per namespace. Open (when it
// upgrades), AttachHost, AttachPod, Detach, Attached and AddEndpoint act in
// the network namespace of the calling OS thread, which must be the node's
// (where the host-side veths live) for all but AttachPod and the pod-end
// uses of Detach and Attached: the DEVMAP_HASH resolves an ifindex when an
// entry is written. Callers that switch namespaces must lock the goroutine
// to its thread (ns.Do does). Use one pin directory per node namespace.
package bpf

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where plugins and the node daemon share the pinned maps
// and programs.
const DefaultPinDir = "/sys/fs/bpf/warpnet"

// Capacity of the maps. They are part of the pinned maps' specs: changing
// them makes the pinned maps incompatible (see Open).
const (
	// MaxEndpoints bounds the pods (host-side veths) per node.
	MaxEndpoints = 65536
	// MaxIPsPerEndpoint bounds the addresses of one pod; dual-stack needs 2.
	MaxIPsPerEndpoint = 8
	// maxIPs is the capacity of the address map, MAX_IPS in xdp_pod.h.
	maxIPs = 4 * MaxEndpoints
)

// layoutVersion names the meaning of the pinned maps' contents. Map specs
// (type, key and value sizes, capacity, flags) are compared by the kernel's
// numbers, but a field could change meaning without changing a size: bump
// this whenever a struct in xdp_pod.h or the meaning of a field changes, so
// that Open refuses to reinterpret maps written by an older build.
const layoutVersion = 1

// metaMagic marks an initialised warp_meta value ("warp").
const metaMagic = 0x77617270

// Names of programs and maps (kernel object names, pin file names).
const (
	hostProgName = xdpProgWarpXdpHost
	podProgName  = xdpProgWarpXdpPod
)

// ErrIncompatible is wrapped by Open when the pinned maps cannot be used by
// this build; the error text says what to do.
var ErrIncompatible = errors.New("pinned warpnet maps are incompatible with this build")

// ErrNotRegistered is wrapped by Counters for an ifindex no endpoint uses.
var ErrNotRegistered = errors.New("not a registered endpoint")

// buildID identifies the embedded programs: the SHA-256 of the ELF object.
// It is recorded in warp_meta when the programs are pinned, so that Open can
// tell pins of another build from its own without loading anything.
var buildID = sync.OnceValue(func() [32]byte { return sha256.Sum256(_XdpBytes) })

// Features switches the datapath's functions per pod.
type Features struct {
	// Redirect lets same-node pod-to-pod traffic bypass the host stack,
	// from this pod and to it: both ends need it. It also bypasses
	// netfilter (iptables/nftables FORWARD, conntrack): pods subject to
	// such policy must have it off. Enable it only once AttachPod has
	// succeeded for the pod: frames redirected to a pod end without XDP
	// are lost (see AttachPod).
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
// pod sends are counted (the program runs on the host end's receive path);
// redirected traffic is counted at the sender.
type Counters struct {
	PassPackets, PassBytes         uint64
	RedirectPackets, RedirectBytes uint64
	DropPackets, DropBytes         uint64
}

// Datapath is an open handle on the pinned maps and programs. Its methods
// are safe for concurrent use (but not concurrently with Close); map updates
// of all processes are serialised with a flock on the pin directory.
type Datapath struct {
	pinDir string

	ifaces, ips, endpoints, devmap, counters, meta *ebpf.Map

	mu   sync.Mutex // guards host and pod, which AttachHost may swap
	host *ebpf.Program
	pod  *ebpf.Program
}

func mapsDir(pinDir string) string  { return filepath.Join(pinDir, "maps") }
func progsDir(pinDir string) string { return filepath.Join(pinDir, "progs") }
func progPin(pinDir, name string) string {
	return filepath.Join(progsDir(pinDir), name)
}

var removeMemlock = sync.OnceValue(rlimit.RemoveMemlock)

// Open loads the XDP programs and maps, pinning them under pinDir
// (maps/<map>, progs/<program>) on first use and reusing the pinned ones
// afterwards, so that every plugin process and the node daemon share one set.
//
// The common case takes no lock: if warp_meta says the pins come from this
// build, the pinned objects are opened and that is all. Otherwise Open takes
// an exclusive flock on pinDir (bpffs holds no regular files, but a
// directory can be flock'ed), checks again, and then loads and pins. When
// the pinned programs come from another build it upgrades in place:
//   - the pinned maps are kept (their data is the pods' state) if their
//     specs and layoutVersion match this build, else Open fails with an
//     error wrapping ErrIncompatible that says what to do;
//   - the new host program atomically replaces the old one (netlink,
//     XDP_FLAGS_REPLACE with the old program as expected) on every
//     interface of the calling thread's network namespace that runs it, so
//     traffic never sees a gap; call Open in the node namespace;
//   - only then are the new programs pinned (rename over the old pins) and
//     the build recorded, so that an upgrade cut short is redone next time.
//
// The pod end's no-op program is pinned anew but not replaced where it is
// attached (pod namespaces are out of reach, and it touches no maps).
//
// bpffs is mounted at /sys/fs/bpf if pinDir is below it and nothing is
// mounted there yet.
func Open(pinDir string) (*Datapath, error) {
	if !filepath.IsAbs(pinDir) {
		return nil, fmt.Errorf("bpf: pin directory %q is not absolute", pinDir)
	}
	pinDir = filepath.Clean(pinDir)
	if err := removeMemlock(); err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if err := ensurePinDir(pinDir); err != nil {
		return nil, err
	}
	if d, err := openPinned(pinDir); err == nil {
		return d, nil
	}
	unlock, err := lockDir(pinDir, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another process may have finished while we waited for the lock.
	if d, err := openPinned(pinDir); err == nil {
		return d, nil
	}
	return loadAndPin(pinDir)
}

// ensurePinDir makes sure pinDir exists on a bpffs, mounting bpffs at
// /sys/fs/bpf first if pinDir is below it and nothing is mounted there.
func ensurePinDir(pinDir string) error {
	const root = "/sys/fs/bpf"
	if pinDir == root || strings.HasPrefix(pinDir, root+"/") {
		if err := mountBPFFS(root); err != nil {
			return err
		}
	}
	for _, dir := range []string{mapsDir(pinDir), progsDir(pinDir)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("bpf: %w", err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(pinDir, &st); err != nil {
		return fmt.Errorf("bpf: statfs %s: %w", pinDir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("bpf: %s is not on a bpf filesystem (mount -t bpf bpf DIR)", pinDir)
	}
	return nil
}

// mountBPFFS mounts bpffs at root unless it is there already. Concurrent
// callers serialise on a flock of root itself, so bpffs is never mounted
// twice on top of itself.
func mountBPFFS(root string) error {
	isBPF := func() (bool, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil {
			return false, fmt.Errorf("bpf: statfs %s: %w", root, err)
		}
		switch st.Type {
		case unix.BPF_FS_MAGIC:
			return true, nil
		case unix.SYSFS_MAGIC: // the empty mount point in /sys
			return false, nil
		default:
			return false, fmt.Errorf("bpf: %s holds a filesystem of type %#x, not bpffs", root, st.Type)
		}
	}
	if ok, err := isBPF(); ok || err != nil {
		return err
	}
	unlock, err := lockDir(root, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	if ok, err := isBPF(); ok || err != nil {
		return err
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpf: mount bpffs at %s: %w", root, err)
	}
	return nil
}

// lockDir flocks dir with how (LOCK_EX or LOCK_SH) through a descriptor of
// its own, so that it also excludes other goroutines of this process.
func lockDir(dir string, how int) (unlock func(), err error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bpf: open %s for locking: %w", dir, err)
	}
	for {
		err = unix.Flock(fd, how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bpf: flock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil // closing releases the lock
}

// readMeta returns the value of warp_meta.
func readMeta(m *ebpf.Map) (xdpMeta, error) {
	var v xdpMeta
	if err := m.Lookup(uint32(0), &v); err != nil {
		return v, fmt.Errorf("bpf: read warp_meta: %w", err)
	}
	return v, nil
}

// openPinned opens the pinned set if it is complete and from this build.
func openPinned(pinDir string) (_ *Datapath, err error) {
	d := &Datapath{pinDir: pinDir}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.meta, err = ebpf.LoadPinnedMap(filepath.Join(mapsDir(pinDir), xdpMapWarpMeta), nil); err != nil {
		return nil, err
	}
	meta, err := readMeta(d.meta)
	if err != nil {
		return nil, err
	}
	if meta.Magic != metaMagic || meta.Layout != layoutVersion || meta.Build != buildID() {
		return nil, errors.New("bpf: pins are from another build")
	}
	for _, m := range d.mapSlots() {
		if m.name == xdpMapWarpMeta {
			continue // opened above, to check the build first
		}
		if *m.dst, err = ebpf.LoadPinnedMap(filepath.Join(mapsDir(pinDir), m.name), nil); err != nil {
			return nil, err
		}
	}
	if d.host, err = ebpf.LoadPinnedProgram(progPin(pinDir, hostProgName), nil); err != nil {
		return nil, err
	}
	if d.pod, err = ebpf.LoadPinnedProgram(progPin(pinDir, podProgName), nil); err != nil {
		return nil, err
	}
	return d, nil
}

// mapSlot names a map of a collection and the field that holds it.
type mapSlot struct {
	name string
	dst  **ebpf.Map
}

// mapSlots lists the datapath's maps, so opening pins and taking over a
// fresh load fill the same fields.
func (d *Datapath) mapSlots() []mapSlot {
	return []mapSlot{
		{xdpMapWarpIfaces, &d.ifaces},
		{xdpMapWarpIps, &d.ips},
		{xdpMapWarpEndpoints, &d.endpoints},
		{xdpMapWarpDevmap, &d.devmap},
		{xdpMapWarpCounters, &d.counters},
		{xdpMapWarpMeta, &d.meta},
	}
}

// loadAndPin does the first load or an upgrade; the caller holds the
// exclusive lock on pinDir.
func loadAndPin(pinDir string) (*Datapath, error) {
	spec, err := loadXdp()
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	opts := ebpf.MapOptions{PinPath: mapsDir(pinDir)}

	// warp_meta first: it says whether the other pinned maps (if any) have
	// the layout this build expects. A fresh one gets the layout before any
	// other map exists, so the layout never describes maps it did not see.
	meta, err := ebpf.NewMapWithOptions(spec.Maps[xdpMapWarpMeta], opts)
	if err != nil {
		return nil, incompatible(pinDir, fmt.Errorf("map %s: %w", xdpMapWarpMeta, err))
	}
	defer meta.Close()
	m, err := readMeta(meta)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Magic == 0:
		m = xdpMeta{Magic: metaMagic, Layout: layoutVersion}
		if err := meta.Put(uint32(0), &m); err != nil {
			return nil, fmt.Errorf("bpf: write warp_meta: %w", err)
		}
	case m.Magic != metaMagic:
		return nil, incompatible(pinDir, fmt.Errorf("map %s holds no warpnet metadata", xdpMapWarpMeta))
	case m.Layout != layoutVersion:
		return nil, incompatible(pinDir, fmt.Errorf("maps have layout version %d, this build uses %d", m.Layout, layoutVersion))
	}
	if err := checkPinnedMaps(spec, pinDir); err != nil {
		return nil, err
	}

	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: opts})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, incompatible(pinDir, err)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("bpf: load programs: %+v", verr)
		}
		return nil, fmt.Errorf("bpf: load programs: %w", err)
	}
	defer coll.Close()
	host, pod := coll.Programs[hostProgName], coll.Programs[podProgName]

	old, err := ebpf.LoadPinnedProgram(progPin(pinDir, hostProgName), nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bpf: open pinned %s: %w", hostProgName, err)
	}
	ifacesInfo, err := coll.Maps[xdpMapWarpIfaces].Info()
	if err != nil {
		old.Close()
		return nil, fmt.Errorf("bpf: map info: %w", err)
	}
	ifacesID, _ := ifacesInfo.ID()
	if err := replaceHostProgram(old, host, ifacesID); err != nil {
		old.Close()
		return nil, err
	}
	old.Close()

	for name, p := range map[string]*ebpf.Program{hostProgName: host, podProgName: pod} {
		if err := pinReplace(p, progPin(pinDir, name)); err != nil {
			return nil, err
		}
	}
	m.Build = buildID()
	if err := meta.Put(uint32(0), &m); err != nil {
		return nil, fmt.Errorf("bpf: write warp_meta: %w", err)
	}

	// Hand the pinned objects over; coll.Close closes what is left.
	d := &Datapath{pinDir: pinDir}
	for _, x := range d.mapSlots() {
		*x.dst = coll.DetachMap(x.name)
	}
	d.host = coll.DetachProgram(hostProgName)
	d.pod = coll.DetachProgram(podProgName)
	return d, nil
}

// checkPinnedMaps compares every pinned map with this build's spec and
// reports all differences at once.
func checkPinnedMaps(spec *ebpf.CollectionSpec, pinDir string) error {
	var diffs []string
	for name, ms := range spec.Maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir(pinDir), name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bpf: open pinned map %s: %w", name, err)
		}
		if err := ms.Compatible(m); err != nil {
			diffs = append(diffs, fmt.Sprintf("%s: %v", name, err))
		}
		m.Close()
	}
	if len(diffs) > 0 {
		return incompatible(pinDir, errors.New(strings.Join(diffs, "; ")))
	}
	return nil
}

// incompatible explains what to do about pinned maps this build cannot use.
// Their entries are the registered pods; converting them is not attempted.
func incompatible(pinDir string, cause error) error {
	return fmt.Errorf("bpf: %w: %v. The pinned maps hold the state of the pods on this node and "+
		"cannot be converted. Drain the node, detach warpnet's XDP programs from the host-side veths "+
		"(ip link set dev warpXXX xdp off), remove %s (rm -r %s) and retry; the pods must be "+
		"re-created so that they are registered again", ErrIncompatible, cause, pinDir, pinDir)
}

// pinReplace pins p at path, atomically replacing what is pinned there: it
// pins under a temporary name and renames over the old pin, so that readers
// always find one complete program.
func pinReplace(p *ebpf.Program, path string) error {
	tmp := path + "-new" // bpffs reserves names with a dot
	_ = os.Remove(tmp)   // left over from an interrupted run
	if err := p.Pin(tmp); err != nil {
		return fmt.Errorf("bpf: pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("bpf: pin %s: %w", path, err)
	}
	return nil
}

// currentHost returns the host program to attach: the pinned one, which
// differs from d.host if another process upgraded since Open. The caller
// holds at least a shared lock on the pin directory, so no upgrade is
// half-way.
func (d *Datapath) currentHost() (*ebpf.Program, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pinned, err := ebpf.LoadPinnedProgram(progPin(d.pinDir, hostProgName), nil)
	if err != nil {
		return nil, fmt.Errorf("bpf: open pinned %s: %w", hostProgName, err)
	}
	if sameProgram(pinned, d.host) {
		pinned.Close()
		return d.host, nil
	}
	d.host.Close()
	d.host = pinned
	return d.host, nil
}

// Close closes the Datapath's file descriptors. Pins and attachments stay.
func (d *Datapath) Close() error {
	if d == nil {
		return nil
	}
	var errs []error
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range []**ebpf.Map{&d.ifaces, &d.ips, &d.endpoints, &d.devmap, &d.counters, &d.meta} {
		if *m != nil {
			errs = append(errs, (*m).Close())
			*m = nil
		}
	}
	for _, p := range []**ebpf.Program{&d.host, &d.pod} {
		if *p != nil {
			errs = append(errs, (*p).Close())
			*p = nil
		}
	}
	return errors.Join(errs...)
}
