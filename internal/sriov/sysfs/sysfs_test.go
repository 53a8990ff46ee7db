package sysfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/sriovnet"
	utilfs "github.com/k8snetworkplumbingwg/sriovnet/pkg/utils/filesystem"

	"github.com/warpnet/warpnet/internal/sriov/sysfs"
)

// These tests need no root: they build small sysfs trees by hand. The
// simulator's tree is checked against Resolve in internal/sriov/sim.

type tree struct {
	t    *testing.T
	root string
}

func newTree(t *testing.T) *tree {
	tr := &tree{t: t, root: t.TempDir()}
	t.Cleanup(sysfs.UseRoot(tr.root))
	return tr
}

func (tr *tree) mkdir(rel string) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Join(tr.root, rel), 0o755); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) link(rel, target string) {
	tr.t.Helper()
	tr.mkdir(filepath.Dir(rel))
	if err := os.Symlink(target, filepath.Join(tr.root, rel)); err != nil {
		tr.t.Fatal(err)
	}
}

// device adds a PCI function the way the kernel lays it out (relative links).
func (tr *tree) device(pci, driver string) string {
	dir := "sys/devices/pci0000:00/" + pci
	tr.mkdir(dir)
	tr.link("sys/bus/pci/devices/"+pci, "../../../devices/pci0000:00/"+pci)
	if driver != "" {
		tr.mkdir("sys/bus/pci/drivers/" + driver)
		tr.link(dir+"/driver", "../../../bus/pci/drivers/"+driver)
	}
	return dir
}

func (tr *tree) netdev(dir, pci, name string) {
	tr.mkdir(dir + "/net/" + name)
	tr.link(dir+"/net/"+name+"/device", "../../../"+pci)
	tr.link("sys/class/net/"+name, "../../"+strings.TrimPrefix(dir, "sys/")+"/net/"+name)
}

// sample: PF 0000:5e:00.0 (ens1f0) with VF0 0000:5e:02.0 (iavf, ens1f0v0),
// VF1 0000:5e:02.1 (vfio-pci, no netdev), VF2 0000:5e:02.2 (unbound), plus
// a non-SR-IOV NIC 0000:01:00.0 (eno1).
func sample(t *testing.T) *tree {
	tr := newTree(t)
	pfDir := tr.device("0000:5e:00.0", "ice")
	tr.netdev(pfDir, "0000:5e:00.0", "ens1f0")
	for i, vf := range []struct{ pci, driver, netdev string }{
		{"0000:5e:02.0", "iavf", "ens1f0v0"},
		{"0000:5e:02.1", "vfio-pci", ""},
		{"0000:5e:02.2", "", ""},
	} {
		dir := tr.device(vf.pci, vf.driver)
		tr.link(dir+"/physfn", "../0000:5e:00.0")
		tr.link(pfDir+"/virtfn"+string(rune('0'+i)), "../"+vf.pci)
		if vf.netdev != "" {
			tr.netdev(dir, vf.pci, vf.netdev)
		}
	}
	nic := tr.device("0000:01:00.0", "igb")
	tr.netdev(nic, "0000:01:00.0", "eno1")
	return tr
}

func TestParsePCI(t *testing.T) {
	for in, want := range map[string]string{
		"0000:3b:02.1":   "0000:3b:02.1",
		"0000:3B:1F.7":   "0000:3b:1f.7",
		" 0001:ff:00.0 ": "0001:ff:00.0",
	} {
		if got, err := sysfs.ParsePCI(in); err != nil || got != want {
			t.Errorf("ParsePCI(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "3b:02.1", "0000:3b:02", "0000:3b:02.8", "0000:3b:20.0", "0000:3b:02.1.2", "zzzz:3b:02.1", "0000-3b-02.1", "../../etc"} {
		if _, err := sysfs.ParsePCI(in); !errors.Is(err, sysfs.ErrMalformed) {
			t.Errorf("ParsePCI(%q): err = %v, want ErrMalformed", in, err)
		}
	}
}

func TestResolve(t *testing.T) {
	sample(t)
	for _, want := range []sysfs.VF{
		{PCI: "0000:5e:02.0", PFPCI: "0000:5e:00.0", PFName: "ens1f0", Index: 0, Netdev: "ens1f0v0", Driver: "iavf"},
		{PCI: "0000:5e:02.1", PFPCI: "0000:5e:00.0", PFName: "ens1f0", Index: 1, Driver: "vfio-pci"},
		{PCI: "0000:5e:02.2", PFPCI: "0000:5e:00.0", PFName: "ens1f0", Index: 2},
	} {
		got, err := sysfs.Resolve(want.PCI)
		if err != nil || got != want {
			t.Errorf("Resolve(%s) = %+v, %v; want %+v", want.PCI, got, err, want)
		}
	}
	if v, _ := sysfs.Resolve("0000:5E:02.1"); v.PCI != "0000:5e:02.1" || !v.DPDK() {
		t.Errorf("upper-case address: %+v (want normalised, DPDK)", v)
	}
	if v, _ := sysfs.Resolve("0000:5e:02.0"); v.DPDK() {
		t.Error("iavf VF reported as DPDK")
	}
	for _, d := range []string{"vfio-pci", "uio_pci_generic", "igb_uio"} {
		if !(sysfs.VF{Driver: d}).DPDK() {
			t.Errorf("%s not DPDK", d)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	tr := sample(t)
	for _, c := range []struct {
		pci  string
		want error
	}{
		{"0000:5e:00.0", sysfs.ErrNotVF}, // the PF itself
		{"0000:01:00.0", sysfs.ErrNotVF}, // a NIC without SR-IOV
		{"0000:5e:03.0", sysfs.ErrNotFound},
		{"0000:99:00.0", sysfs.ErrNotFound},
		{"5e:02.0", sysfs.ErrMalformed},
		{"eth0", sysfs.ErrMalformed},
	} {
		v, err := sysfs.Resolve(c.pci)
		if !errors.Is(err, c.want) {
			t.Errorf("Resolve(%q) = %+v, %v; want %v", c.pci, v, err, c.want)
		}
	}

	// A VF its PF does not list, and a PF without netdev: inconsistent
	// trees get an error that says what is missing, not a zero VF.
	orphan := tr.device("0000:5e:02.5", "iavf")
	tr.link(orphan+"/physfn", "../0000:5e:00.0")
	if _, err := sysfs.Resolve("0000:5e:02.5"); err == nil || !strings.Contains(err.Error(), "no virtfnN link") {
		t.Errorf("orphan VF: %v", err)
	}
	pf2 := tr.device("0000:af:00.0", "vfio-pci")
	vf := tr.device("0000:af:02.0", "vfio-pci")
	tr.link(vf+"/physfn", "../0000:af:00.0")
	tr.link(pf2+"/virtfn0", "../0000:af:02.0")
	if _, err := sysfs.Resolve("0000:af:02.0"); err == nil || !strings.Contains(err.Error(), "has no netdev") {
		t.Errorf("PF without netdev: %v", err)
	}
}

func TestUseEnv(t *testing.T) {
	prev := utilfs.Fs
	t.Cleanup(func() { utilfs.Fs = prev })
	t.Setenv(sysfs.EnvSysfsRoot, "")
	if sysfs.UseEnv() {
		t.Fatal("UseEnv swapped with the variable empty")
	}
	if _, ok := utilfs.Fs.(utilfs.DefaultFs); !ok {
		t.Fatalf("Fs = %T after UseEnv with no root", utilfs.Fs)
	}
	root := t.TempDir()
	t.Setenv(sysfs.EnvSysfsRoot, root)
	if !sysfs.UseEnv() {
		t.Fatal("UseEnv did not swap")
	}
	os.MkdirAll(filepath.Join(root, "sys/bus/pci/devices/x"), 0o755)
	if _, err := utilfs.Fs.Stat("/sys/bus/pci/devices/x"); err != nil {
		t.Fatalf("rooted Stat: %v", err)
	}
}

// TestSriovnetThroughRootedFs: the sriovnet functions that read through
// utilfs.Fs work on a rooted tree (the ones Resolve relies on, and
// GetPciFromNetDevice for plugins that start from a netdev name).
func TestSriovnetThroughRootedFs(t *testing.T) {
	sample(t)
	if pf, err := sriovnet.GetPfPciFromVfPci("0000:5e:02.1"); err != nil || pf != "0000:5e:00.0" {
		t.Errorf("GetPfPciFromVfPci = %q, %v", pf, err)
	}
	if devs, err := sriovnet.GetNetDevicesFromPci("0000:5e:02.0"); err != nil || !slices.Equal(devs, []string{"ens1f0v0"}) {
		t.Errorf("GetNetDevicesFromPci = %v, %v", devs, err)
	}
	if pci, err := sriovnet.GetPciFromNetDevice("ens1f0v0"); err != nil || pci != "0000:5e:02.0" {
		t.Errorf("GetPciFromNetDevice = %q, %v", pci, err)
	}
	if !sriovnet.IsVfPciVfioBound("0000:5e:02.1") || sriovnet.IsVfPciVfioBound("0000:5e:02.0") {
		t.Error("IsVfPciVfioBound wrong")
	}
	// The rooted filesystem reports paths inside the root.
	var walked []string
	utilfs.Fs.Walk("/sys/bus/pci/drivers", func(p string, _ os.FileInfo, err error) error {
		walked = append(walked, p)
		return err
	})
	if !slices.Contains(walked, "/sys/bus/pci/drivers/iavf") {
		t.Errorf("Walk paths = %v", walked)
	}
	d, err := utilfs.Fs.TempDir("/sys", "tmp")
	if err != nil || !strings.HasPrefix(d, "/sys/tmp") {
		t.Errorf("TempDir = %q, %v", d, err)
	}
}

func TestPCIFromNetdev(t *testing.T) {
	tr := sample(t)
	tr.mkdir("sys/devices/virtual/net/lo")
	tr.link("sys/class/net/lo", "../../devices/virtual/net/lo")
	for name, want := range map[string]string{"ens1f0": "0000:5e:00.0", "ens1f0v0": "0000:5e:02.0", "eno1": "0000:01:00.0"} {
		if got, err := sysfs.PCIFromNetdev(name); err != nil || got != want {
			t.Errorf("PCIFromNetdev(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	// sriovnet.GetPciFromNetDevice never returns for this one.
	if _, err := sysfs.PCIFromNetdev("lo"); err == nil || !strings.Contains(err.Error(), "not a PCI device") {
		t.Errorf("PCIFromNetdev(lo): %v", err)
	}
	if _, err := sysfs.PCIFromNetdev("nosuch0"); !errors.Is(err, sysfs.ErrNotFound) {
		t.Errorf("PCIFromNetdev(nosuch0): %v", err)
	}
	if _, err := sysfs.PCIFromNetdev("../x"); err == nil {
		t.Error("PCIFromNetdev(../x): no error")
	}
}
