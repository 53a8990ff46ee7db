// Package sysfs resolves an SR-IOV virtual function from its PCI address:
// its PF (PCI address and netdev name), its index on the PF, the driver it
// is bound to and its netdev, if it has one.
//
// A device plugin hands a CNI plugin nothing but the VF's PCI address
// ("0000:3b:02.1"); everything else comes from sysfs:
//
//	/sys/bus/pci/devices/<vf>/physfn        -> ../<pf>      (only VFs have it)
//	/sys/bus/pci/devices/<pf>/virtfnN       -> ../<vf>      (N is the VF index)
//	/sys/bus/pci/devices/<pci>/net/<name>/                  (netdevs of the function)
//	/sys/bus/pci/devices/<pci>/driver       -> .../drivers/<driver>
//
// All reads go through sriovnet's swappable filesystem
// (github.com/k8snetworkplumbingwg/sriovnet/pkg/utils/filesystem.Fs), so
// that UseEnv can point them at the simulator's fake tree
// (internal/sriov/sim). Only sriovnet functions that themselves read
// through that filesystem are used (GetPfPciFromVfPci,
// GetNetDevicesFromPci); several others bypass it with os.* or
// filepath.Glob (GetVfIndexByPciAddress, GetVfPciDevList, IsSriovSupported,
// IsSriovEnabled, EnableSriov, DisableSriov, GetPfNetdevHandle, BindVf,
// UnbindVf, and the unexported helpers behind them) and would silently read
// the machine's real /sys, so the VF index and the driver are read here
// through the filesystem directly. GetPciFromNetDevice does use the
// filesystem but never returns for a non-PCI netdev; see PCIFromNetdev.
package sysfs

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/k8snetworkplumbingwg/sriovnet"
	utilfs "github.com/k8snetworkplumbingwg/sriovnet/pkg/utils/filesystem"
)

// VF is a virtual function as sysfs describes it.
type VF struct {
	PCI    string // "0000:3b:02.1"
	PFPCI  string // the PF's PCI address
	PFName string // PF netdev name
	Index  int    // VF index on the PF (virtfnN)
	// Netdev is the VF's netdev name in the namespace whose view sysfs
	// shows (the host's); "" when it has none: bound to a userspace (DPDK)
	// driver, or already moved into another namespace.
	Netdev string
	Driver string // "vfio-pci", "uio_pci_generic", "igb_uio", "iavf", "mlx5_core", "sim-vf", ...; "" if unbound
}

// DPDK reports whether the VF is bound to a userspace I/O driver (vfio-pci,
// uio_pci_generic, igb_uio): then it has no netdev, and a CNI plugin only
// applies PF-side settings and leaves the device to the application.
func (v VF) DPDK() bool {
	switch v.Driver {
	case "vfio-pci", "uio_pci_generic", "igb_uio":
		return true
	}
	return false
}

var (
	// ErrMalformed: the string is not a PCI address "DDDD:BB:DD.F".
	ErrMalformed = errors.New("malformed PCI address")
	// ErrNotFound: no PCI device has this address.
	ErrNotFound = errors.New("PCI device not found")
	// ErrNotVF: the device exists but is not an SR-IOV VF (no physfn link):
	// a PF, or an ordinary device.
	ErrNotVF = errors.New("PCI device is not an SR-IOV VF")
)

// pciRE matches "domain:bus:device.function"; the device number has 5 bits
// (0x00-0x1f), the function 3.
var pciRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$`)

// ParsePCI checks that s is a PCI address "DDDD:BB:DD.F" (hex digits, either
// case) and returns it in the lower-case form sysfs uses.
func ParsePCI(s string) (string, error) {
	l := strings.ToLower(strings.TrimSpace(s))
	if !pciRE.MatchString(l) {
		return "", fmt.Errorf("%w: %q (want domain:bus:device.function, e.g. 0000:3b:02.1)", ErrMalformed, s)
	}
	return l, nil
}

func devDir(pci string) string { return filepath.Join(sriovnet.PciSysDir, pci) }

func exists(p string) (bool, error) {
	_, err := utilfs.Fs.Stat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Resolve describes the VF at PCI address pci. Errors: ErrMalformed,
// ErrNotFound, ErrNotVF (all errors.Is-able), or a wrapped sysfs error when
// the tree is inconsistent (a VF its PF does not list, a PF without netdev).
func Resolve(pci string) (VF, error) {
	addr, err := ParsePCI(pci)
	if err != nil {
		return VF{}, err
	}
	v := VF{PCI: addr, Index: -1}
	if ok, err := exists(devDir(addr)); err != nil {
		return VF{}, fmt.Errorf("VF %s: %w", addr, err)
	} else if !ok {
		return VF{}, fmt.Errorf("%w: %s (no %s)", ErrNotFound, addr, devDir(addr))
	}

	// The PF, through sriovnet (Fs.Readlink of physfn).
	pfPCI, err := sriovnet.GetPfPciFromVfPci(addr)
	if err != nil {
		if ok, serr := exists(filepath.Join(devDir(addr), "physfn")); serr == nil && !ok {
			return VF{}, fmt.Errorf("%w: %s has no physfn link (a PF or a device without SR-IOV)", ErrNotVF, addr)
		}
		return VF{}, fmt.Errorf("VF %s: %w", addr, err)
	}
	v.PFPCI = pfPCI

	// The index: which virtfnN of the PF points back at us.
	// (sriovnet.GetVfIndexByPciAddress would use filepath.Glob and
	// os.Readlink on the real /sys.)
	if v.Index, err = vfIndex(pfPCI, addr); err != nil {
		return VF{}, err
	}

	// The PF's netdev, through sriovnet (Fs.Stat + Fs.ReadDir of net/).
	pfNet, err := netdevs(pfPCI)
	if err != nil {
		return VF{}, fmt.Errorf("VF %s: PF %s: %w", addr, pfPCI, err)
	}
	if len(pfNet) == 0 {
		return VF{}, fmt.Errorf("VF %s: its PF %s has no netdev (bound to a userspace driver, or moved to another namespace): PF-side VF settings need the PF netdev", addr, pfPCI)
	}
	v.PFName = pfNet[0]

	// The VF's own netdev, if any.
	vfNet, err := netdevs(addr)
	if err != nil {
		return VF{}, fmt.Errorf("VF %s: %w", addr, err)
	}
	if len(vfNet) > 0 {
		v.Netdev = vfNet[0]
	}

	if v.Driver, err = Driver(addr); err != nil {
		return VF{}, err
	}
	return v, nil
}

// netdevs lists the netdev names under <pci>/net, sorted; none when the
// directory does not exist (a function without netdev).
func netdevs(pci string) ([]string, error) {
	if ok, err := exists(filepath.Join(devDir(pci), "net")); err != nil || !ok {
		return nil, err
	}
	names, err := sriovnet.GetNetDevicesFromPci(pci)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// vfIndex finds N such that <pf>/virtfnN points at vf.
func vfIndex(pfPCI, vf string) (int, error) {
	entries, err := utilfs.Fs.ReadDir(devDir(pfPCI))
	if err != nil {
		return -1, fmt.Errorf("VF %s: read its PF %s: %w", vf, pfPCI, err)
	}
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "virtfn")
		if !ok {
			continue
		}
		idx, err := strconv.Atoi(n)
		if err != nil || idx < 0 {
			continue
		}
		target, err := utilfs.Fs.Readlink(filepath.Join(devDir(pfPCI), e.Name()))
		if err != nil {
			continue
		}
		if path.Base(target) == vf {
			return idx, nil
		}
	}
	return -1, fmt.Errorf("VF %s: its PF %s has no virtfnN link pointing back at it (inconsistent sysfs)", vf, pfPCI)
}

// Driver returns the name of the driver the PCI device is bound to ("" if
// none), from the basename of its driver link.
func Driver(pci string) (string, error) {
	addr, err := ParsePCI(pci)
	if err != nil {
		return "", err
	}
	target, err := utilfs.Fs.Readlink(filepath.Join(devDir(addr), "driver"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("PCI device %s: driver: %w", addr, err)
	}
	return path.Base(target), nil
}

// PCIFromNetdev returns the PCI address of the function a netdev belongs to
// (the nearest PCI device above /sys/class/net/<name>), reading through the
// swappable filesystem. The error is ErrNotFound if sysfs has no such
// netdev, and a plain error if it is not a PCI device (veth, bridge, lo).
//
// Use it instead of sriovnet.GetPciFromNetDevice: that one walks up the
// link target with filepath.Dir until it reaches "/", but sysfs links are
// relative ("../../devices/virtual/net/lo"), so for any non-PCI netdev it
// never reaches "/" and loops forever (seen with sriovnet v1.2.0).
func PCIFromNetdev(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return "", fmt.Errorf("invalid netdev name %q", name)
	}
	target, err := utilfs.Fs.Readlink(filepath.Join(sriovnet.NetSysDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: no netdev %s in %s", ErrNotFound, name, sriovnet.NetSysDir)
	}
	if err != nil {
		return "", fmt.Errorf("netdev %s: %w", name, err)
	}
	parts := strings.Split(target, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if pciRE.MatchString(parts[i]) {
			return parts[i], nil
		}
	}
	return "", fmt.Errorf("netdev %s is not a PCI device (%s)", name, target)
}
