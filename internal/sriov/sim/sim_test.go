package sim_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/k8snetworkplumbingwg/sriovnet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
	"github.com/warpnet/warpnet/tests/harness"
)

// create builds a simulator in node and destroys it at the Env's cleanup
// (before the node namespace goes).
func create(t *testing.T, e *harness.Env, spec sim.Spec) *sim.PF {
	t.Helper()
	p, err := sim.Create(spec)
	if err != nil {
		t.Fatal(err)
	}
	e.Defer("destroy simulator in "+spec.Dir, p.Destroy)
	return p
}

// handle returns a netlink handle in the namespace at path.
func handle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestCreateBuildsWhatResolveUnderstands(t *testing.T) {
	e := harness.New(t)
	node := e.NetNS("node")
	dir := filepath.Join(e.TempDir, "sim")
	p := create(t, e, sim.Spec{NodeNetns: node.Path, Dir: dir, NumVFs: 10, DPDKVFs: []int{9, 3}})

	if p.PFName != "sim0" || p.PCIBus != "0000:3b" || p.PFPCI() != "0000:3b:00.0" || len(p.VFs) != 10 {
		t.Fatalf("defaults not applied: %+v", p)
	}
	if want := []string{"WARP_SYSFS_ROOT=" + filepath.Join(dir, "sysfs"), "WARP_SIM_PF_STATE=" + filepath.Join(dir, "pf-state.json")}; !slices.Equal(p.Env(), want) {
		t.Fatalf("Env() = %v, want %v", p.Env(), want)
	}

	t.Cleanup(sysfs.UseRoot(p.SysfsRoot))
	wantPCI := []string{"0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2", "0000:3b:02.3", "0000:3b:02.4",
		"0000:3b:02.5", "0000:3b:02.6", "0000:3b:02.7", "0000:3b:03.0", "0000:3b:03.1"}
	for i, vf := range p.VFs {
		dpdk := i == 3 || i == 9
		want := sysfs.VF{PCI: wantPCI[i], PFPCI: "0000:3b:00.0", PFName: "sim0", Index: i, Netdev: fmt.Sprintf("sim0v%d", i), Driver: "sim-vf"}
		if dpdk {
			want.Netdev, want.Driver = "", "vfio-pci"
		}
		if vf.PCI != want.PCI || vf.Index != i || vf.Netdev != want.Netdev || vf.Driver != want.Driver || vf.DPDK() != dpdk {
			t.Errorf("p.VFs[%d] = %+v, want %+v", i, vf, want)
		}
		got, err := sysfs.Resolve(vf.PCI)
		if err != nil || got != want {
			t.Errorf("Resolve(%s) = %+v, %v; want %+v", vf.PCI, got, err, want)
		}
		if got.DPDK() != dpdk {
			t.Errorf("VF %d: DPDK() = %v", i, got.DPDK())
		}
		// sriovnet's own Fs-based helpers agree.
		if sriovnet.IsVfPciVfioBound(vf.PCI) != dpdk {
			t.Errorf("VF %d: sriovnet.IsVfPciVfioBound = %v", i, !dpdk)
		}
		if !dpdk {
			if pci, err := sriovnet.GetPciFromNetDevice(vf.Netdev); err != nil || pci != vf.PCI {
				t.Errorf("sriovnet.GetPciFromNetDevice(%s) = %q, %v", vf.Netdev, pci, err)
			}
			if pci, err := sysfs.PCIFromNetdev(vf.Netdev); err != nil || pci != vf.PCI {
				t.Errorf("sysfs.PCIFromNetdev(%s) = %q, %v", vf.Netdev, pci, err)
			}
		}
	}
	if pci, err := sriovnet.GetPciFromNetDevice("sim0"); err != nil || pci != "0000:3b:00.0" {
		t.Errorf("sriovnet.GetPciFromNetDevice(sim0) = %q, %v", pci, err)
	}

	for _, c := range []struct {
		pci  string
		want error
	}{
		{"0000:3b:00.0", sysfs.ErrNotVF}, // the PF's own address
		{"0000:3b:1f.7", sysfs.ErrNotFound},
		{"0000:3c:02.0", sysfs.ErrNotFound},
		{"0000:3b:02", sysfs.ErrMalformed},
		{"sim0v1", sysfs.ErrMalformed},
	} {
		if v, err := sysfs.Resolve(c.pci); !errors.Is(err, c.want) {
			t.Errorf("Resolve(%q) = %+v, %v; want %v", c.pci, v, err, c.want)
		}
	}

	// The links: the PF is an up veth whose peer is in the underlay
	// namespace, each netdev VF a bridge-mode macvlan on it with its own MAC.
	h := handle(t, node.Path)
	pfLink, err := h.LinkByName("sim0")
	if err != nil || pfLink.Type() != "veth" || pfLink.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("PF link: %v, %v", pfLink, err)
	}
	macs := map[string]bool{pfLink.Attrs().HardwareAddr.String(): true}
	for _, vf := range p.VFs {
		if vf.Netdev == "" {
			continue
		}
		l, err := h.LinkByName(vf.Netdev)
		if err != nil {
			t.Fatalf("VF %d netdev: %v", vf.Index, err)
		}
		mv, ok := l.(*netlink.Macvlan)
		if !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE || mv.ParentIndex != pfLink.Attrs().Index {
			t.Errorf("VF %d: %T %+v, want a bridge macvlan on sim0", vf.Index, l, l.Attrs())
		}
		if got := l.Attrs().HardwareAddr.String(); got != vf.MAC || macs[got] {
			t.Errorf("VF %d MAC %s (recorded %s) not distinct", vf.Index, got, vf.MAC)
		}
		macs[vf.MAC] = true
	}
	uh := handle(t, p.UnderlayNetns)
	if port, err := uh.LinkByName(p.UnderlayPort); err != nil || port.Type() != "veth" || port.Attrs().OperState != netlink.OperUp {
		t.Errorf("underlay port %s: %+v, %v", p.UnderlayPort, port, err)
	}

	// The state file holds every VF at a fresh VF's defaults.
	for _, vf := range p.VFs {
		want := pf.DefaultVFState()
		want.MAC = vf.MAC
		if got, err := pf.Recorder(p.StateFile).VF("sim0", vf.Index); err != nil || got != want {
			t.Errorf("state of VF %d = %+v, %v; want %+v", vf.Index, got, err, want)
		}
	}
	if _, err := pf.Recorder(p.StateFile).VF("sim0", 10); !errors.Is(err, pf.ErrNoVF) {
		t.Errorf("VF 10 of a 10-VF PF: %v", err)
	}

	// Load reopens it as it was.
	q, err := sim.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", q) != fmt.Sprintf("%+v", p) {
		t.Errorf("Load = %+v\nwant   %+v", q, p)
	}
}

// TestPluginView: a plugin given Env() finds the simulator through
// sysfs.UseEnv and pf.FromEnv.
func TestPluginView(t *testing.T) {
	e := harness.New(t)
	node := e.NetNS("node")
	p := create(t, e, sim.Spec{NodeNetns: node.Path, Dir: filepath.Join(e.TempDir, "sim"), NumVFs: 2, PFName: "ens9", PCIBus: "0000:AF"})
	for _, kv := range p.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	restore := sysfs.UseRoot("/") // remember the current Fs; UseEnv replaces it
	t.Cleanup(restore)
	if !sysfs.UseEnv() {
		t.Fatal("UseEnv did not swap")
	}
	vf, err := sysfs.Resolve("0000:af:02.1")
	if err != nil || vf.PFName != "ens9" || vf.Index != 1 || vf.Netdev != "ens9v1" {
		t.Fatalf("Resolve = %+v, %v", vf, err)
	}
	if err := pf.FromEnv().SetVLAN(vf.PFName, vf.Index, 42, 3, ""); err != nil {
		t.Fatal(err)
	}
	if s, _ := pf.Recorder(p.StateFile).VF("ens9", 1); s.VLAN != 42 || s.QoS != 3 {
		t.Fatalf("recorded state %+v", s)
	}
	if err := pf.FromEnv().SetTrust("ens8", 0, true); !errors.Is(err, pf.ErrNoPF) {
		t.Fatalf("unknown PF: %v", err)
	}
}

func TestCreateRefuses(t *testing.T) {
	e := harness.New(t)
	node := e.NetNS("node")
	dir := filepath.Join(e.TempDir, "sim")
	p := create(t, e, sim.Spec{NodeNetns: node.Path, Dir: dir, NumVFs: 2})
	h := handle(t, node.Path)

	// Twice in one directory.
	if _, err := sim.Create(sim.Spec{NodeNetns: node.Path, Dir: dir, NumVFs: 2, PFName: "other0"}); !errors.Is(err, sim.ErrExists) || !strings.Contains(err.Error(), "destroy") {
		t.Errorf("second Create in %s: %v", dir, err)
	}
	// The same PF name in the node: fails, and leaves the first one alone.
	dir2 := filepath.Join(e.TempDir, "sim2")
	if _, err := sim.Create(sim.Spec{NodeNetns: node.Path, Dir: dir2, NumVFs: 2}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Create with a taken PF name: %v", err)
	}
	if exists(dir2) {
		t.Errorf("failed Create left %s behind", dir2)
	}
	for _, name := range []string{"sim0", "sim0v0", "sim0v1"} {
		if _, err := h.LinkByName(name); err != nil {
			t.Errorf("failed second Create removed the first one's %s: %v", name, err)
		}
	}
	if !exists(p.UnderlayNetns) || !exists(filepath.Join(dir, sim.DescFile)) {
		t.Error("failed second Create removed the first one's underlay or files")
	}

	// The underlay namespace name taken (a leftover): nothing is built, the
	// leftover stays.
	taken := node.Path + "-sim1-underlay"
	if out, err := exec.Command("ip", "netns", "add", filepath.Base(taken)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	e.Defer("delete "+taken, func() error { return exec.Command("ip", "netns", "del", filepath.Base(taken)).Run() })
	if _, err := sim.Create(sim.Spec{NodeNetns: node.Path, Dir: dir2, NumVFs: 2, PFName: "sim1"}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Create with a taken underlay name: %v", err)
	}
	if !exists(taken) || exists(dir2) {
		t.Errorf("failed Create: underlay leftover exists=%v, dir left=%v", exists(taken), exists(dir2))
	}
	if _, err := h.LinkByName("sim1"); err == nil {
		t.Error("failed Create left PF sim1 behind")
	}

	// Never in the machine's (here: this process's) namespace.
	dir3 := filepath.Join(e.TempDir, "sim3")
	if _, err := sim.Create(sim.Spec{NodeNetns: "/proc/self/ns/net", Dir: dir3, NumVFs: 1, PFName: "warpsimx"}); err == nil || !strings.Contains(err.Error(), "separate node namespace") {
		t.Errorf("Create in own namespace: %v", err)
	}
	if _, err := netlink.LinkByName("warpsimx"); err == nil {
		t.Fatal("Create made a link in the test's own namespace")
	}
	if exists(dir3) {
		t.Errorf("refused Create left %s", dir3)
	}
	if _, err := sim.Create(sim.Spec{NodeNetns: e.TempDir, Dir: dir3, NumVFs: 1}); err == nil || !strings.Contains(err.Error(), "not a namespace") {
		t.Errorf("Create with a directory as namespace: %v", err)
	}

	// Bad specs.
	for _, s := range []sim.Spec{
		{Dir: dir3, NumVFs: 1},
		{NodeNetns: node.Path, NumVFs: 1},
		{NodeNetns: node.Path, Dir: dir3},
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 241},
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 2, DPDKVFs: []int{2}},
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 2, DPDKVFs: []int{1, 1}},
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 11, PFName: "abcdefghijklm"}, // "abcdefghijklmv10" > 15
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 1, PFName: "abcdefghijklmno"},
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 1, PFName: "a/b"},
		{NodeNetns: node.Path, Dir: dir3, NumVFs: 1, PCIBus: "3b"},
	} {
		if q, err := sim.Create(s); err == nil {
			t.Errorf("Create(%+v) succeeded", s)
			q.Destroy()
		}
	}
}

// TestVFTrafficBetweenPods moves two VFs into two pod namespaces, renames,
// re-MACs and addresses them there, and has them talk; then one pod dies,
// which takes its VF with it (unlike a real VF), and Destroy still cleans up.
func TestVFTrafficBetweenPods(t *testing.T) {
	e := harness.New(t)
	node, pod1, pod2 := e.NetNS("node"), e.NetNS("pod1"), e.NetNS("pod2")
	dir := filepath.Join(e.TempDir, "sim")
	p := create(t, e, sim.Spec{NodeNetns: node.Path, Dir: dir, NumVFs: 3})

	const newMAC = "02:aa:bb:cc:dd:01"
	node.Exec(t, "ip", "link", "set", "sim0v0", "netns", pod1.Name)
	node.Exec(t, "ip", "link", "set", "sim0v1", "netns", pod2.Name)
	pod1.Exec(t, "ip", "link", "set", "sim0v0", "name", "eth0") // while down, as kernels before 6.2 require
	pod1.Exec(t, "ip", "link", "set", "eth0", "address", newMAC)
	pod2.Exec(t, "ip", "link", "set", "sim0v1", "name", "net1")
	e.Addr(pod1, "eth0", "10.77.0.1/24")
	e.Addr(pod2, "net1", "10.77.0.2/24")
	pod1.Exec(t, "ip", "link", "set", "eth0", "up")
	pod2.Exec(t, "ip", "link", "set", "net1", "up")

	port := e.EchoServer(pod2, "pod2", 0)
	for _, proto := range []string{"tcp", "udp"} {
		if got := pod1.MustExchange(t, proto, fmt.Sprintf("10.77.0.2:%d", port), "hello-"+proto); got != "pod2" {
			t.Fatalf("%s answered by %q", proto, got)
		}
	}
	// pod2 learned pod1 under the MAC set inside the pod: re-MACing is real.
	if neigh := pod2.Exec(t, "ip", "neigh", "show", "10.77.0.1"); !strings.Contains(neigh, newMAC) {
		t.Errorf("pod2's neighbour entry for pod1: %q, want MAC %s", neigh, newMAC)
	}
	if _, err := exec.LookPath("ping"); err == nil {
		pod2.Exec(t, "ping", "-c", "1", "-W", "2", "10.77.0.1")
	}

	// The VFs left the node namespace; the fake sysfs still names them
	// (it is a snapshot, see the package doc).
	h := handle(t, node.Path)
	if _, err := h.LinkByName("sim0v0"); err == nil {
		t.Error("sim0v0 still in the node namespace after the move")
	}
	t.Cleanup(sysfs.UseRoot(p.SysfsRoot))
	if v, err := sysfs.Resolve(p.VFs[0].PCI); err != nil || v.Netdev != "sim0v0" {
		t.Errorf("Resolve after move: %+v, %v", v, err)
	}

	// A DEL that does its job: VF 2 goes into pod2 and comes back to the
	// node under its own name, as it would on real hardware.
	node.Exec(t, "ip", "link", "set", "sim0v2", "netns", pod2.Name)
	pod2.Exec(t, "ip", "link", "set", "sim0v2", "name", "net2")
	pod2.Exec(t, "ip", "link", "set", "net2", "up")
	pod2.Exec(t, "ip", "link", "set", "net2", "down")
	pod2.Exec(t, "ip", "link", "set", "net2", "name", "sim0v2")
	pod2.Exec(t, "ip", "link", "set", "sim0v2", "netns", node.Name)
	if l, err := h.LinkByName("sim0v2"); err != nil || l.Attrs().HardwareAddr.String() != p.VFs[2].MAC {
		t.Errorf("VF 2 back in the node: %v, %v", l, err)
	}

	// pod1 dies: its VF dies with it and does not come back to the node.
	// Namespaces are torn down asynchronously after the last reference goes;
	// a veth between pod1 and the node tells when pod1's teardown has run.
	pod1.Exec(t, "ip", "link", "add", "sentinel", "type", "veth", "peer", "name", "sentinel1", "netns", node.Name)
	if out, err := exec.Command("ip", "netns", "del", pod1.Name).CombinedOutput(); err != nil {
		t.Fatalf("delete pod1: %v %s", err, out)
	}
	harness.WaitFor(t, "pod1's namespace to be torn down", 10*time.Second, func() bool {
		_, err := h.LinkByName("sentinel1")
		return err != nil
	})
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if a := l.Attrs(); a.HardwareAddr.String() == newMAC || a.HardwareAddr.String() == p.VFs[0].MAC {
			t.Errorf("VF 0 reappeared in the node namespace as %s", a.Name)
		}
	}

	// Destroy: the PF goes and takes pod2's VF with it; then everything else.
	if err := p.Destroy(); err != nil {
		t.Fatal(err)
	}
	if out, _ := pod2.Run(t.Context(), "ip", "-br", "link"); strings.Contains(out, "net1") {
		t.Errorf("pod2 still has the VF after Destroy:\n%s", out)
	}
	if _, err := h.LinkByName("sim0"); err == nil {
		t.Error("PF still there after Destroy")
	}
	if _, err := h.LinkByName("sim0v2"); err == nil {
		t.Error("VF 2 still there after Destroy")
	}
	if exists(p.UnderlayNetns) || exists(dir) {
		t.Errorf("after Destroy: underlay exists=%v, dir exists=%v", exists(p.UnderlayNetns), exists(dir))
	}
	if err := p.Destroy(); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
}

// TestDestroyAfterNodeGone: everything in the node namespace died with it;
// Destroy removes the rest without complaint.
func TestDestroyAfterNodeGone(t *testing.T) {
	e := harness.New(t)
	node, pod := e.NetNS("node"), e.NetNS("pod")
	dir := filepath.Join(e.TempDir, "sim")
	p := create(t, e, sim.Spec{NodeNetns: node.Path, Dir: dir, NumVFs: 2, DPDKVFs: []int{1}})
	node.Exec(t, "ip", "link", "set", "sim0v0", "netns", pod.Name)
	if out, err := exec.Command("ip", "netns", "del", node.Name).CombinedOutput(); err != nil {
		t.Fatalf("delete node: %v %s", err, out)
	}
	// The node's teardown is asynchronous; when it runs, deleting the PF veth
	// takes the VF macvlan in the pod with it.
	ph := handle(t, pod.Path)
	harness.WaitFor(t, "the VF in the pod to die with the node", 10*time.Second, func() bool {
		_, err := ph.LinkByName("sim0v0")
		return err != nil
	})
	q, err := sim.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Destroy(); err != nil {
		t.Fatal(err)
	}
	if exists(p.UnderlayNetns) || exists(dir) {
		t.Errorf("after Destroy: underlay exists=%v, dir exists=%v", exists(p.UnderlayNetns), exists(dir))
	}
	if _, err := sim.Load(dir); !errors.Is(err, sim.ErrNoSim) {
		t.Errorf("Load after Destroy: %v", err)
	}
}

// TestTreeMoves: the tree has only relative links, so a moved directory
// still resolves, and Load + Destroy work from the new place.
func TestTreeMoves(t *testing.T) {
	e := harness.New(t)
	node := e.NetNS("node")
	dir := filepath.Join(e.TempDir, "sim")
	create(t, e, sim.Spec{NodeNetns: node.Path, Dir: dir, NumVFs: 2})
	moved := filepath.Join(e.TempDir, "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	p, err := sim.Load(moved)
	if err != nil {
		t.Fatal(err)
	}
	if p.SysfsRoot != filepath.Join(moved, "sysfs") || p.StateFile != filepath.Join(moved, "pf-state.json") {
		t.Fatalf("Load(moved) paths: %s %s", p.SysfsRoot, p.StateFile)
	}
	restore := sysfs.UseRoot(p.SysfsRoot)
	v, err := sysfs.Resolve("0000:3b:02.1")
	restore()
	if err != nil || v.Index != 1 || v.Netdev != "sim0v1" {
		t.Fatalf("Resolve in moved tree: %+v, %v", v, err)
	}
	if err := p.Destroy(); err != nil {
		t.Fatal(err)
	}
	if exists(moved) {
		t.Error("moved dir left after Destroy")
	}
}

// TestReturnVFs: the VFs of this simulator in a pod namespace come back to
// the node, down, under their simulator names, with the MAC and MTU the pod
// gave them; other links in the pod stay.
func TestReturnVFs(t *testing.T) {
	e := harness.New(t)
	node, pod := e.NetNS("node"), e.NetNS("pod")
	p := create(t, e, sim.Spec{NodeNetns: node.Path, Dir: filepath.Join(e.TempDir, "sim"), NumVFs: 3})
	node.Exec(t, "ip", "link", "set", "sim0v0", "netns", pod.Name)
	node.Exec(t, "ip", "link", "set", "sim0v2", "netns", pod.Name)
	pod.Exec(t, "ip", "link", "set", "sim0v0", "name", "net1", "address", "0a:00:00:00:00:01", "mtu", "1400", "up")
	pod.Exec(t, "ip", "link", "add", "other", "type", "veth", "peer", "name", "other1")
	moved, err := p.ReturnVFs(pod.Path)
	if err != nil || !slices.Equal(moved, []int{0, 2}) {
		t.Fatalf("ReturnVFs = %v, %v; want [0 2]", moved, err)
	}
	h, ph := handle(t, node.Path), handle(t, pod.Path)
	l, err := h.LinkByName("sim0v0")
	if err != nil {
		t.Fatal(err)
	}
	if a := l.Attrs(); a.HardwareAddr.String() != "0a:00:00:00:00:01" || a.MTU != 1400 || a.Flags&net.FlagUp != 0 {
		t.Errorf("returned VF 0: MAC %s MTU %d flags %v; want the pod's MAC and MTU, down", a.HardwareAddr, a.MTU, a.Flags)
	}
	if _, err := h.LinkByName("sim0v2"); err != nil {
		t.Errorf("VF 2 not returned: %v", err)
	}
	if _, err := ph.LinkByName("other"); err != nil {
		t.Errorf("a link that is no VF left the pod: %v", err)
	}
	if moved, err := p.ReturnVFs(pod.Path); err != nil || len(moved) != 0 {
		t.Errorf("second ReturnVFs = %v, %v; want nothing to move", moved, err)
	}
}
