package sim

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Driver names the fake tree binds devices to.
const (
	DriverPF   = "sim-pf"
	DriverVF   = "sim-vf"
	DriverVFIO = "vfio-pci"
)

// iommuGroupBase numbers the IOMMU groups of DPDK VFs (group = base + index);
// userspace drivers find /dev/vfio/<group> through the iommu_group link.
const iommuGroupBase = 100

// buildTree writes the fake sysfs tree of p under p.SysfsRoot, modelled on
// the real one:
//
//	sys/devices/pci<domain>:00/<pci>/               one directory per function
//	sys/bus/pci/devices/<pci>        -> ../../../devices/pci<domain>:00/<pci>
//	sys/bus/pci/drivers/<drv>/<pci>  -> ../../../../devices/pci<domain>:00/<pci>
//	sys/class/net/<name>             -> ../../devices/pci<domain>:00/<pci>/net/<name>
//	PF:  sriov_numvfs, sriov_totalvfs, virtfnN -> ../<vfpci>, driver, net/<pf>/device -> ../../../<pfpci>
//	VF:  physfn -> ../<pfpci>, driver, net/<vf>/device (netdev VFs), iommu_group (DPDK VFs)
//
// Every link is relative, so the tree can be moved and a filesystem rooted
// at SysfsRoot (internal/sriov/sysfs.Rooted) resolves it without ever
// leaving the root.
func buildTree(p *PF) error {
	root := p.SysfsRoot
	domain := p.PCIBus[:4]
	devices := filepath.Join("devices", "pci"+domain+":00") // relative to sys/
	w := &treeWriter{root: root}

	device := func(pci, driver string) string {
		dir := filepath.Join("sys", devices, pci)
		w.mkdir(dir)
		w.symlink(filepath.Join("sys/bus/pci/devices", pci), filepath.Join("../../..", devices, pci))
		w.mkdir(filepath.Join("sys/bus/pci/drivers", driver))
		w.symlink(filepath.Join("sys/bus/pci/drivers", driver, pci), filepath.Join("../../../..", devices, pci))
		w.symlink(filepath.Join(dir, "driver"), filepath.Join("../../../bus/pci/drivers", driver))
		w.file(filepath.Join(dir, "class"), "0x020000") // Ethernet controller
		return dir
	}
	netdev := func(dir, pci, name string) {
		nd := filepath.Join(dir, "net", name)
		w.mkdir(nd)
		w.symlink(filepath.Join(nd, "device"), filepath.Join("../../..", pci))
		w.symlink(filepath.Join("sys/class/net", name), filepath.Join("../..", nd[len("sys/"):]))
	}

	pfDir := device(p.PFPCI(), DriverPF)
	w.file(filepath.Join(pfDir, "sriov_numvfs"), strconv.Itoa(p.NumVFs))
	w.file(filepath.Join(pfDir, "sriov_totalvfs"), strconv.Itoa(p.NumVFs))
	netdev(pfDir, p.PFPCI(), p.PFName)
	for _, vf := range p.VFs {
		w.symlink(filepath.Join(pfDir, "virtfn"+strconv.Itoa(vf.Index)), filepath.Join("..", vf.PCI))
		dir := device(vf.PCI, vf.Driver)
		w.symlink(filepath.Join(dir, "physfn"), filepath.Join("..", p.PFPCI()))
		if vf.Netdev != "" {
			netdev(dir, vf.PCI, vf.Netdev)
		} else {
			group := strconv.Itoa(iommuGroupBase + vf.Index)
			gdir := filepath.Join("sys/kernel/iommu_groups", group, "devices")
			w.mkdir(gdir)
			w.symlink(filepath.Join(gdir, vf.PCI), filepath.Join("../../../..", devices, vf.PCI))
			w.symlink(filepath.Join(dir, "iommu_group"), filepath.Join("../../../kernel/iommu_groups", group))
		}
	}
	return w.err
}

// treeWriter creates files under root and remembers the first error.
type treeWriter struct {
	root string
	err  error
}

func (w *treeWriter) fail(err error) {
	if w.err == nil && err != nil {
		w.err = fmt.Errorf("fake sysfs: %w", err)
	}
}

func (w *treeWriter) mkdir(rel string) {
	if w.err == nil {
		w.fail(os.MkdirAll(filepath.Join(w.root, rel), 0o755))
	}
}

func (w *treeWriter) file(rel, content string) {
	if w.err == nil {
		w.fail(os.WriteFile(filepath.Join(w.root, rel), []byte(content+"\n"), 0o644))
	}
}

func (w *treeWriter) symlink(rel, target string) {
	if w.err != nil {
		return
	}
	path := filepath.Join(w.root, rel)
	w.mkdir(filepath.Dir(rel))
	if w.err == nil {
		w.fail(os.Symlink(target, path))
	}
}
