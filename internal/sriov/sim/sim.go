// Package sim simulates an SR-IOV NIC on a machine that has none: a PF with
// N VFs inside a simulated node (a network namespace), honest where it can
// be and recorded where it cannot.
//
// What is real:
//
//   - The PF netdev is one end of a veth pair in the node namespace; the other
//     end sits in an "underlay" namespace that Create makes, like the switch
//     port a real PF is cabled to.
//   - Every netdev-mode VF is a macvlan (mode bridge) on the PF netdev, named
//     "<pf>v<N>", with its own MAC. Moving a VF into a pod namespace, renaming
//     it, changing its MAC, addressing it and sending traffic are real kernel
//     operations, and two VFs in two pods reach each other through the PF
//     (macvlan bridge mode switches between siblings, as a NIC's embedded
//     switch does between VFs).
//
// What is faked:
//
//   - sysfs: a tree under <Dir>/sysfs with the PF and VF PCI functions,
//     physfn/virtfnN links, driver links and net/ entries (see buildTree).
//     Plugins read it through internal/sriov/sysfs with WARP_SYSFS_ROOT set
//     (Env). The tree is a snapshot of the host's view at creation: unlike the
//     real sysfs, a VF's net/<name> entry does not disappear while the VF
//     is in a pod namespace, nor follow a rename.
//   - PF-side VF settings (admin MAC, VLAN, spoofchk, trust, link state,
//     rates): no virtual device implements them, so they are recorded in the
//     state file <Dir>/pf-state.json through internal/sriov/pf.Recorder
//     (WARP_SIM_PF_STATE, see Env) and not enforced: a "disable" link state
//     does not take the macvlan's carrier down, an admin MAC does not change
//     the macvlan's MAC, a VLAN does not tag its frames.
//   - DPDK VFs (Spec.DPDKVFs) are bound to vfio-pci in the tree and have no
//     netdev at all; they exist only in sysfs and in the state file.
//
// How the macvlan VFs behave (checked on Linux 6.18): they move between
// namespaces freely while their lower device, the PF, stays in the node (in
// a pod, `ip link` shows "eth0@ifN" with N the PF's ifindex in the node);
// they can be renamed and re-MACed while up (renaming an up device needs
// Linux 6.2 or later, also for real VF drivers, so plugins should rename
// while down); their MTU cannot exceed the PF's (EINVAL), like a real VF's;
// setting the PF down takes their carrier down (LOWERLAYERDOWN), as
// link_state "auto" does (the underlay port going down does not); traffic
// between two VFs is switched inside the kernel without crossing the PF's
// veth, while traffic to anything else leaves through the PF into the
// underlay namespace.
//
// One difference matters for DEL and for cleanup: a virtual link dies with
// its namespace, whereas a real VF survives it. When a pod's namespace is
// deleted while a simulated VF is in it, the macvlan is destroyed and the VF
// has no netdev any more until the simulator is recreated; a real VF's
// netdev is moved back by the kernel, to the machine's initial namespace
// (not necessarily to the node namespace it came from), under its current
// name (e.g. eth0). A plugin should therefore move the VF back (and restore
// its name) on DEL, as the reference sriov-cni does, and must tolerate a VF
// that is simply gone. ReturnVFs, called before a pod namespace is deleted,
// models the kernel's return of real VFs (each VF macvlan carries an alias
// naming its simulator and index, so it is recognised in any namespace).
// Likewise, deleting the PF (Destroy, or deleting the
// node namespace) removes every VF macvlan, including those inside pod
// namespaces, as disabling SR-IOV does on a real NIC. The kernel tears a
// namespace down asynchronously after its last reference is gone, so these
// links disappear shortly after `ip netns del`, not at once.
package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
)

// Spec describes the PF to simulate.
type Spec struct {
	NodeNetns string `json:"nodeNetns"` // path of the node namespace (e.g. /run/netns/X); never the machine's own
	Dir       string `json:"-"`         // where the sysfs root, the state file and the description go
	PFName    string `json:"pfName"`    // default "sim0"
	// PCIBus is "domain:bus", default "0000:3b". The PF is <bus>:00.0 and VF i
	// is <bus>:<2+i/8>.<i%8> (8 functions per device number).
	PCIBus  string `json:"pciBus"`
	NumVFs  int    `json:"numVFs"`  // 1-MaxVFs
	DPDKVFs []int  `json:"dpdkVFs"` // VF indexes bound to vfio-pci, without a netdev
}

// Defaults and limits of Spec.
const (
	DefaultPFName = "sim0"
	DefaultPCIBus = "0000:3b"
	// MaxVFs keeps VF device numbers within 0x02-0x1f (5 bits).
	MaxVFs = 240
)

// VF is one simulated VF.
type VF struct {
	PCI    string `json:"pci"`    // "0000:3b:02.1"
	Index  int    `json:"index"`  // VF index on the PF (virtfnN)
	Netdev string `json:"netdev"` // "<pf>v<N>" as created in the node namespace; "" for DPDK VFs
	MAC    string `json:"mac"`    // the MAC the simulator gave the VF (netdev MAC and initial admin MAC)
	Driver string `json:"driver"` // "sim-vf" or "vfio-pci"
}

// DPDK reports whether the VF is bound to vfio-pci (no netdev).
func (v VF) DPDK() bool { return v.Driver == DriverVFIO }

// PF is a simulated PF and its VFs.
type PF struct {
	Spec
	SysfsRoot     string // <Dir>/sysfs: the root for WARP_SYSFS_ROOT
	StateFile     string // <Dir>/pf-state.json: the recorder's file for WARP_SIM_PF_STATE
	UnderlayNetns string // path of the underlay namespace holding the PF's peer
	UnderlayPort  string // name of the PF's veth peer in the underlay namespace
	VFs           []VF
}

// PFPCI returns the PF's PCI address, <bus>:00.0.
func (p *PF) PFPCI() string { return p.PCIBus + ":00.0" }

// File names inside Spec.Dir.
const (
	DescFile  = "sim.json"
	SysfsDir  = "sysfs"
	StateName = "pf-state.json"
)

// ErrExists is returned (wrapped) by Create when Dir already holds a
// simulator.
var ErrExists = errors.New("simulator already exists")

// ErrNoSim is returned (wrapped) by Load when Dir holds no simulator.
var ErrNoSim = errors.New("no simulator")

// description is what DescFile holds: enough to reopen the simulator.
// Paths inside Dir are not stored, so the directory can be moved.
type description struct {
	Version       int    `json:"version"`
	Spec          Spec   `json:"spec"`
	UnderlayNetns string `json:"underlayNetns"`
	UnderlayPort  string `json:"underlayPort"`
	VFs           []VF   `json:"vfs"`
}

const descVersion = 1

var (
	busRE    = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}$`)
	ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// normalize applies defaults and validates the spec.
func (s Spec) normalize() (Spec, error) {
	if s.NodeNetns == "" {
		return s, errors.New("sim: no node network namespace (Spec.NodeNetns, e.g. /run/netns/NODE)")
	}
	if s.Dir == "" {
		return s, errors.New("sim: no directory for the sysfs tree and state file (Spec.Dir)")
	}
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		return s, err
	}
	s.Dir = dir
	if s.PFName == "" {
		s.PFName = DefaultPFName
	}
	if s.PCIBus == "" {
		s.PCIBus = DefaultPCIBus
	}
	s.PCIBus = strings.ToLower(s.PCIBus)
	if !busRE.MatchString(s.PCIBus) {
		return s, fmt.Errorf("sim: PCI bus %q is not domain:bus (e.g. 0000:3b)", s.PCIBus)
	}
	if s.NumVFs < 1 || s.NumVFs > MaxVFs {
		return s, fmt.Errorf("sim: number of VFs %d out of range 1-%d", s.NumVFs, MaxVFs)
	}
	if !ifnameRE.MatchString(s.PFName) {
		return s, fmt.Errorf("sim: PF name %q is not a valid interface name", s.PFName)
	}
	if longest := vfName(s.PFName, s.NumVFs-1); len(longest) > unix.IFNAMSIZ-1 {
		return s, fmt.Errorf("sim: PF name %q too long: VF netdev %q would exceed %d characters", s.PFName, longest, unix.IFNAMSIZ-1)
	}
	seen := map[int]bool{}
	for _, i := range s.DPDKVFs {
		if i < 0 || i >= s.NumVFs {
			return s, fmt.Errorf("sim: DPDK VF index %d out of range 0-%d", i, s.NumVFs-1)
		}
		if seen[i] {
			return s, fmt.Errorf("sim: DPDK VF index %d given twice", i)
		}
		seen[i] = true
	}
	s.DPDKVFs = slices.Sorted(slices.Values(s.DPDKVFs))
	return s, nil
}

func vfName(pfName string, i int) string { return pfName + "v" + strconv.Itoa(i) }

// VFPCI returns the PCI address of VF i on bus ("0000:3b").
func VFPCI(bus string, i int) string { return fmt.Sprintf("%s:%02x.%d", bus, 2+i/8, i%8) }

// macBase derives 3 bytes that tell simulators apart, so that VFs of two
// simulators in one node (or on one underlay) never share a MAC.
func macBase(s Spec) [3]byte {
	h := fnv.New32a()
	h.Write([]byte(s.NodeNetns + "|" + s.PFName + "|" + s.PCIBus))
	sum := h.Sum32()
	return [3]byte{byte(sum >> 16), byte(sum >> 8), byte(sum)}
}

// mac returns a locally administered unicast MAC: 02:hh:hh:hh:<n>, where
// n is 0 for the PF and index+1 for a VF.
func mac(base [3]byte, n int) net.HardwareAddr {
	return net.HardwareAddr{0x02, base[0], base[1], base[2], byte(n >> 8), byte(n)}
}

// underlayName names the underlay namespace after the node's, so that it
// sorts next to it in `ip netns` (and, for the test harness's namespaces
// "<runID>-...", is swept with them when a test run dies).
func underlayName(s Spec) string {
	base := filepath.Base(s.NodeNetns)
	if base == "net" || !ifnameRE.MatchString(base) { // /proc/PID/ns/net or an odd name
		b := macBase(s)
		base = fmt.Sprintf("node-%02x%02x%02x", b[0], b[1], b[2])
	}
	return base + "-" + s.PFName + "-underlay"
}

// layout computes everything about the PF that follows from the spec.
func layout(s Spec) *PF {
	p := &PF{
		Spec:          s,
		UnderlayNetns: filepath.Join(netnsRunDir, underlayName(s)),
		UnderlayPort:  "sw-" + s.PFName,
	}
	p.setPaths()
	base := macBase(s)
	for i := 0; i < s.NumVFs; i++ {
		vf := VF{PCI: VFPCI(s.PCIBus, i), Index: i, MAC: mac(base, i+1).String(), Driver: DriverVF, Netdev: vfName(s.PFName, i)}
		if slices.Contains(s.DPDKVFs, i) {
			vf.Driver, vf.Netdev = DriverVFIO, ""
		}
		p.VFs = append(p.VFs, vf)
	}
	return p
}

func (p *PF) setPaths() {
	p.SysfsRoot = filepath.Join(p.Dir, SysfsDir)
	p.StateFile = filepath.Join(p.Dir, StateName)
}

// Create builds the PF described by spec in the node namespace spec.NodeNetns:
// the underlay namespace, the PF veth, one macvlan per netdev VF, the fake
// sysfs tree under <Dir>/sysfs and the state file <Dir>/pf-state.json with
// every VF at its defaults (pf.DefaultVFState, admin MAC = the VF's MAC).
//
// It refuses to build twice: if Dir already holds a simulator (DescFile) it
// fails with ErrExists, and it fails if the PF name or the underlay
// namespace is taken. On any failure it removes what it had built.
func Create(spec Spec) (*PF, error) {
	s, err := spec.normalize()
	if err != nil {
		return nil, err
	}
	p := layout(s)

	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	// Claim the directory first: a concurrent Create with the same Dir fails
	// here, before touching any link.
	descPath := filepath.Join(s.Dir, DescFile)
	f, err := os.OpenFile(descPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("sim: %w in %s (see %s); remove it first with `warpctl sim sriov destroy --dir %s`", ErrExists, s.Dir, descPath, s.Dir)
		}
		return nil, fmt.Errorf("sim: %w", err)
	}
	data, err := p.describe()
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(descPath)
		return nil, fmt.Errorf("sim: write %s: %w", descPath, err)
	}
	for _, leftover := range []string{p.SysfsRoot, p.StateFile} {
		if _, err := os.Lstat(leftover); err == nil {
			os.Remove(descPath)
			return nil, fmt.Errorf("sim: %s already exists without a simulator description (a leftover?); remove it or use another --dir", leftover)
		}
	}

	// Undo only what this call made: a link or namespace that was in the
	// way belongs to someone else.
	var undo rollback.Stack
	undo.Push("remove the simulator's files", p.removeFiles)
	if err := p.build(&undo); err != nil {
		return nil, rollback.With(err, undo.Run())
	}
	return p, nil
}

func (p *PF) describe() ([]byte, error) {
	d := description{
		Version:       descVersion,
		Spec:          p.Spec,
		UnderlayNetns: p.UnderlayNetns,
		UnderlayPort:  p.UnderlayPort,
		VFs:           p.VFs,
	}
	data, err := json.MarshalIndent(d, "", "  ")
	return append(data, '\n'), err
}

// build creates the links, the tree and the state file; Destroy undoes it.
// It pushes onto undo the removal of every object it created.
func (p *PF) build(undo *rollback.Stack) error {
	node, err := openNetNS(p.NodeNetns)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	defer node.Close()
	h, err := netlinksafe.NewHandleAt(node)
	if err != nil {
		return fmt.Errorf("sim: netlink in %s: %w", p.NodeNetns, err)
	}
	defer h.Close()
	for _, name := range append([]string{p.PFName}, p.netdevNames()...) {
		if _, err := h.LinkByName(name); err == nil {
			return fmt.Errorf("sim: a link named %s already exists in %s; choose another PF name (--pf)", name, p.NodeNetns)
		}
	}

	if _, err := createNamedNetNS(filepath.Base(p.UnderlayNetns)); err != nil {
		return fmt.Errorf("sim: underlay namespace: %w", err)
	}
	undo.Push("delete the underlay namespace", func() error { return deleteNamedNetNS(p.UnderlayNetns) })
	ul, err := netns.GetFromPath(p.UnderlayNetns)
	if err != nil {
		return fmt.Errorf("sim: open underlay namespace: %w", err)
	}
	defer ul.Close()
	uh, err := netlinksafe.NewHandleAt(ul)
	if err != nil {
		return fmt.Errorf("sim: netlink in underlay namespace: %w", err)
	}
	defer uh.Close()

	base := macBase(p.Spec)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.PFName, HardwareAddr: mac(base, 0)},
		PeerName:      p.UnderlayPort,
		PeerNamespace: netlink.NsFd(int(ul)),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("sim: create PF veth %s (peer %s in %s): %w", p.PFName, p.UnderlayPort, p.UnderlayNetns, err)
	}
	// Deleting the PF deletes its peer and every macvlan on it.
	undo.Push("delete the PF veth", p.deleteLinks)
	pfLink, err := h.LinkByName(p.PFName)
	if err != nil {
		return fmt.Errorf("sim: PF %s: %w", p.PFName, err)
	}
	for _, step := range []struct {
		what string
		fn   func() error
	}{
		{"set PF up", func() error { return h.LinkSetUp(pfLink) }},
		{"set underlay lo up", func() error { return linkUp(uh, "lo") }},
		{"set underlay port up", func() error { return linkUp(uh, p.UnderlayPort) }},
	} {
		if err := step.fn(); err != nil {
			return fmt.Errorf("sim: %s: %w", step.what, err)
		}
	}

	for _, vf := range p.VFs {
		if vf.Netdev == "" {
			continue
		}
		hw, _ := net.ParseMAC(vf.MAC)
		mv := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: vf.Netdev, ParentIndex: pfLink.Attrs().Index, HardwareAddr: hw},
			Mode:      netlink.MACVLAN_MODE_BRIDGE,
		}
		if err := h.LinkAdd(mv); err != nil {
			return fmt.Errorf("sim: create VF %d netdev %s (macvlan on %s): %w", vf.Index, vf.Netdev, p.PFName, err)
		}
		// The kernel ignores an alias given at creation.
		if err := h.LinkSetAlias(mv, p.vfAlias(vf.Index)); err != nil {
			return fmt.Errorf("sim: tag VF %d netdev %s: %w", vf.Index, vf.Netdev, err)
		}
	}

	if err := buildTree(p); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	states := make([]pf.VFState, len(p.VFs))
	for i, vf := range p.VFs {
		states[i] = pf.DefaultVFState()
		states[i].MAC = vf.MAC
	}
	if err := pf.InitPF(p.StateFile, p.PFName, states); err != nil {
		return fmt.Errorf("sim: state file: %w", err)
	}
	return nil
}

// vfAlias tags VF i's macvlan (IFLA_IFALIAS survives moves and renames), so
// that ReturnVFs recognises this simulator's VFs in any namespace.
func (p *PF) vfAlias(i int) string {
	return fmt.Sprintf("warpnet-sim %s vf %d", mac(macBase(p.Spec), 0), i)
}

// ReturnVFs does to the simulated VFs in the namespace at path what the
// kernel does to real VFs when the namespace they are in is destroyed: it
// moves each back to the node namespace (a real VF goes to the machine's
// initial namespace, which on a real node is the node's), down, without its
// addresses, keeping the MAC and MTU the pod gave it. Call it just before
// deleting a pod namespace to model a pod that vanished without a CNI DEL;
// without it a simulated VF dies with the namespace. One liberty: a real VF
// keeps its name from the pod (which the real sysfs then shows), a simulated
// one takes back its simulator name, because the fake sysfs tree cannot
// follow renames. It returns the indexes of the VFs it moved.
func (p *PF) ReturnVFs(path string) ([]int, error) {
	pod, err := openNetNS(path)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	defer pod.Close()
	node, err := openNetNS(p.NodeNetns)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	defer node.Close()
	h, err := netlinksafe.NewHandleAt(pod)
	if err != nil {
		return nil, fmt.Errorf("sim: netlink in %s: %w", path, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("sim: list links in %s: %w", path, err)
	}
	var moved []int
	for _, l := range links {
		i := slices.IndexFunc(p.VFs, func(vf VF) bool { return vf.Netdev != "" && l.Attrs().Alias == p.vfAlias(vf.Index) })
		if i < 0 {
			continue
		}
		name := p.VFs[i].Netdev
		if err := h.LinkSetDown(l); err != nil {
			return moved, fmt.Errorf("sim: set VF %d (%s) down: %w", i, l.Attrs().Name, err)
		}
		if l.Attrs().Name != name {
			if err := h.LinkSetName(l, name); err != nil {
				return moved, fmt.Errorf("sim: rename VF %d (%s) to %s: %w", i, l.Attrs().Name, name, err)
			}
		}
		if err := h.LinkSetNsFd(l, int(node)); err != nil {
			return moved, fmt.Errorf("sim: move VF %d (%s) back to %s: %w", i, name, p.NodeNetns, err)
		}
		moved = append(moved, i)
	}
	return moved, nil
}

func linkUp(h netlinksafe.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

func (p *PF) netdevNames() []string {
	var names []string
	for _, vf := range p.VFs {
		if vf.Netdev != "" {
			names = append(names, vf.Netdev)
		}
	}
	return names
}

// Env returns the environment entries that point a plugin (through
// sysfs.UseEnv and pf.FromEnv) at this simulator.
func (p *PF) Env() []string {
	return []string{
		sysfs.EnvSysfsRoot + "=" + p.SysfsRoot,
		pf.EnvStateFile + "=" + p.StateFile,
	}
}

// Load reopens a simulator created earlier in dir, from its DescFile.
func Load(dir string) (*PF, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(abs, DescFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sim: %w in %s (no %s); create one with `warpctl sim sriov create --netns /run/netns/NODE --dir %s --vfs N`", ErrNoSim, abs, DescFile, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	var d description
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("sim: %s: %w", filepath.Join(abs, DescFile), err)
	}
	if d.Version != descVersion {
		return nil, fmt.Errorf("sim: %s has version %d, this build understands %d", filepath.Join(abs, DescFile), d.Version, descVersion)
	}
	p := &PF{Spec: d.Spec, UnderlayNetns: d.UnderlayNetns, UnderlayPort: d.UnderlayPort, VFs: d.VFs}
	p.Dir = abs
	p.setPaths()
	return p, nil
}

// Destroy removes the PF veth (which takes every VF macvlan with it, also
// those that were moved into pod namespaces, and the underlay end), the
// underlay namespace, the sysfs tree, the state file and the description,
// and Dir itself if that leaves it empty. It is tolerant: links or
// namespaces that are already gone (deleted pods, a deleted node namespace)
// are not errors, and calling it twice is fine. It refuses to delete a link
// named like the PF that is not a veth.
func (p *PF) Destroy() error {
	errs := []error{p.deleteLinks()}
	if p.UnderlayNetns != "" {
		errs = append(errs, deleteNamedNetNS(p.UnderlayNetns))
	}
	errs = append(errs, p.removeFiles())
	return errors.Join(errs...)
}

// removeFiles removes the tree, the state file, its lock file and the
// description (last: while it exists, Load can still find the rest), then
// Dir if that leaves it empty.
func (p *PF) removeFiles() error {
	var errs []error
	for _, path := range []string{p.SysfsRoot, p.StateFile, p.StateFile + ".lock", filepath.Join(p.Dir, DescFile)} {
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, fmt.Errorf("sim: %w", err))
		}
	}
	if p.Dir != "" {
		_ = os.Remove(p.Dir) // only if empty: it may hold the caller's files
	}
	return errors.Join(errs...)
}

// deleteLinks deletes the PF veth in the node namespace; a node namespace
// that no longer exists took every link with it.
func (p *PF) deleteLinks() error {
	node, err := openNetNS(p.NodeNetns)
	if err != nil {
		if _, serr := os.Stat(p.NodeNetns); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("sim: destroy: %w", err)
	}
	defer node.Close()
	h, err := netlinksafe.NewHandleAt(node)
	if err != nil {
		return fmt.Errorf("sim: destroy: netlink in %s: %w", p.NodeNetns, err)
	}
	defer h.Close()
	l, err := h.LinkByName(p.PFName)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return nil // gone already, with its macvlans
		}
		return fmt.Errorf("sim: destroy: look up PF %s: %w", p.PFName, err)
	}
	if want := mac(macBase(p.Spec), 0); l.Type() != "veth" || l.Attrs().HardwareAddr.String() != want.String() {
		return fmt.Errorf("sim: destroy: %s in %s (%s, MAC %s) is not the simulator's PF (a veth with MAC %s); not deleting it",
			p.PFName, p.NodeNetns, l.Type(), l.Attrs().HardwareAddr, want)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("sim: destroy: delete PF %s: %w", p.PFName, err)
	}
	return nil
}
