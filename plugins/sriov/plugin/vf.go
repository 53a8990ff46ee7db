package plugin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
	"github.com/warpnet/warpnet/plugins/sriov/config"
)

// desiredPF is the PF-side state the configuration asks for: a key that is
// not set keeps the VF's pristine setting (never a previous holder's).
func desiredPF(pristine pf.VFState, conf *config.NetConf) pf.VFState {
	want := pristine
	if conf.MAC != "" {
		want.MAC = conf.MAC
	}
	if conf.VLAN != nil {
		want.VLAN, want.QoS, want.Proto = *conf.VLAN, 0, "802.1q"
		if conf.VLANQoS != nil {
			want.QoS = *conf.VLANQoS
		}
		if conf.VLANProto != nil {
			want.Proto = *conf.VLANProto
		}
	}
	if conf.SpoofChk != "" {
		want.SpoofChk = config.On(conf.SpoofChk)
	}
	if conf.Trust != "" {
		want.Trust = config.On(conf.Trust)
	}
	if conf.LinkState != "" {
		want.LinkState = conf.LinkState
	}
	if conf.MinTxRate != nil {
		want.MinTxRate = *conf.MinTxRate
	}
	if conf.MaxTxRate != nil {
		want.MaxTxRate = *conf.MaxTxRate
	}
	return want
}

// applyPF moves the VF's PF-side settings from cur to want, touching only
// what differs. It stops at the first error; the caller restores cur.
func applyPF(ops pf.PF, vf sysfs.VF, cur, want pf.VFState) error {
	name, i := vf.PFName, vf.Index
	steps := []struct {
		field string
		diff  bool
		do    func() error
	}{
		{"mac", want.MAC != cur.MAC, func() error {
			mac := make(net.HardwareAddr, 6) // all zeroes clears the admin MAC
			if want.MAC != "" {
				var err error
				if mac, err = net.ParseMAC(want.MAC); err != nil {
					return err
				}
			}
			return ops.SetMAC(name, i, mac)
		}},
		{"vlan", want.VLAN != cur.VLAN || want.QoS != cur.QoS || want.Proto != cur.Proto, func() error {
			return ops.SetVLAN(name, i, want.VLAN, want.QoS, want.Proto)
		}},
		{"spoofchk", want.SpoofChk != cur.SpoofChk, func() error { return ops.SetSpoofChk(name, i, want.SpoofChk) }},
		{"trust", want.Trust != cur.Trust, func() error { return ops.SetTrust(name, i, want.Trust) }},
		{"link_state", want.LinkState != cur.LinkState, func() error { return ops.SetLinkState(name, i, want.LinkState) }},
		{"min_tx_rate/max_tx_rate", want.MinTxRate != cur.MinTxRate || want.MaxTxRate != cur.MaxTxRate, func() error {
			return ops.SetRate(name, i, want.MinTxRate, want.MaxTxRate)
		}},
	}
	for _, s := range steps {
		if !s.diff {
			continue
		}
		if err := s.do(); err != nil {
			return fmt.Errorf("%s: set on VF %d of %s: %w", s.field, i, name, err)
		}
	}
	return nil
}

// restorePF puts the VF's PF-side settings back to orig, from whatever they
// are now (a failed ADD may have applied only some). A PF that is gone, or
// no longer has the VF (SR-IOV disabled), took the settings with it.
func restorePF(ops pf.PF, vf sysfs.VF, orig pf.VFState) error {
	cur, err := ops.VF(vf.PFName, vf.Index)
	if errors.Is(err, pf.ErrNoPF) || errors.Is(err, pf.ErrNoVF) {
		fmt.Fprintf(os.Stderr, "warp-sriov: VF %s: nothing to restore on the PF side: %v\n", vf.PCI, err)
		return nil
	}
	if err != nil {
		return err
	}
	return applyPF(ops, vf, cur, orig)
}

// hostAndTempNS returns the current (host) namespace and a fresh temporary
// one, the two ends of every VF move; done closes both.
func hostAndTempNS() (host, tmp ns.NetNS, done func(), err error) {
	host, err = ns.GetCurrentNS()
	if err != nil {
		return nil, nil, nil, err
	}
	tmp, err = ns.TempNetNS()
	if err != nil {
		host.Close()
		return nil, nil, nil, fmt.Errorf("temporary namespace: %w", err)
	}
	return host, tmp, func() { tmp.Close(); host.Close() }, nil
}

// moveIn moves the VF netdev from the host into the pod as ifName. It goes
// through a temporary namespace: renaming in the host could clash with a
// host interface (eth0), and moving first could clash with a pod interface
// that has the VF's host name. It then sets MAC and MTU and brings it up.
func moveIn(hostName string, podNS ns.NetNS, ifName string, mac net.HardwareAddr, mtu int) error {
	link, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("VF netdev %s is not in the host namespace: %w", hostName, err)
	}
	hostNS, tmp, done, err := hostAndTempNS()
	if err != nil {
		return err
	}
	defer done()
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("set %s down: %w", hostName, err)
	}
	if err := netlink.LinkSetNsFd(link, int(tmp.Fd())); err != nil {
		return fmt.Errorf("move %s out of the host: %w", hostName, err)
	}
	err = tmp.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(hostName)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(l, ifName); err != nil {
			return fmt.Errorf("rename %s to %s: %w", hostName, ifName, err)
		}
		// Host altnames (udev's predictable names, or the old name some
		// kernels keep on rename) are host naming: in the pod they could
		// clash with the pod's own names. resetLink puts them back.
		for _, alt := range l.Attrs().AltNames {
			if err := netlink.LinkDelAltName(l, alt); err != nil {
				return fmt.Errorf("drop altname %s: %w", alt, err)
			}
		}
		if err := netlink.LinkSetNsFd(l, int(podNS.Fd())); err != nil {
			return fmt.Errorf("move %s into the pod: %w", ifName, err)
		}
		return nil
	})
	if err != nil {
		// Back to the host under its host name, before the temporary
		// namespace dies with tmp (and a simulated VF with it).
		return rollback.With(err, tmp.Do(func(ns.NetNS) error {
			for _, n := range []string{ifName, hostName} {
				if _, lerr := netlinksafe.LinkByName(n); lerr == nil {
					return returnToHost(n, hostName, hostNS)
				}
			}
			return nil
		}))
	}
	return podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("mac: set %s on %s: %w", mac, ifName, err)
		}
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("mtu: set %d on %s: %w", mtu, ifName, err)
		}
		return netlink.LinkSetUp(l)
	})
}

// returnToHost renames the link called name (in the current namespace) to
// hostName and moves it to hostNS; a missing link is not an error.
func returnToHost(name, hostName string, hostNS ns.NetNS) error {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return fmt.Errorf("set %s down: %w", name, err)
	}
	if name != hostName {
		if err := netlink.LinkSetName(l, hostName); err != nil {
			return fmt.Errorf("rename %s to %s: %w", name, hostName, err)
		}
	}
	return netlink.LinkSetNsFd(l, int(hostNS.Fd()))
}

// restoreNetdev puts the VF's netdev back into the host as it was before
// its first attachment (name, altnames, MAC, MTU), wherever it is now: in
// the pod at podPath under ifName, or in the host already (a real VF whose
// pod namespace died comes back by itself, under its pod name; a failed ADD
// may not have moved it yet). A VF found nowhere is not an error: a
// simulated one dies with its namespace.
func restoreNetdev(vf sysfs.VF, orig Original, podPath, ifName string) error {
	if netnsExists(podPath) {
		podNS, err := ns.GetNS(podPath)
		if err != nil {
			return fmt.Errorf("open pod namespace %s: %w", podPath, err)
		}
		defer podNS.Close()
		if moved, err := moveOut(podNS, ifName, orig); err != nil || moved {
			return err
		}
	}
	names := []string{orig.Name}
	if cur, err := sysfs.Resolve(vf.PCI); err == nil && cur.Netdev != "" && cur.Netdev != orig.Name {
		names = append([]string{cur.Netdev}, names...)
	}
	for _, name := range names {
		// sysfs says which netdev is the VF's (a host link could have
		// taken the VF's old name).
		if pci, err := sysfs.PCIFromNetdev(name); err != nil || pci != vf.PCI {
			continue
		}
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			continue
		}
		if err := netlink.LinkSetDown(l); err != nil {
			return fmt.Errorf("set %s down: %w", name, err)
		}
		return resetLink(l, orig)
	}
	return nil
}

// moveOut is moveIn backwards: the VF leaves the pod through a temporary
// namespace, gets its host name, altnames, MAC and MTU back, and returns to
// the host. It reports whether the VF was in the pod.
func moveOut(podNS ns.NetNS, ifName string, orig Original) (moved bool, err error) {
	hostNS, tmp, done, err := hostAndTempNS()
	if err != nil {
		return false, err
	}
	defer done()
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return nil
		}
		if err := netlink.LinkSetDown(l); err != nil {
			return fmt.Errorf("set %s down: %w", ifName, err)
		}
		if err := netlink.LinkSetNsFd(l, int(tmp.Fd())); err != nil {
			return fmt.Errorf("move %s out of the pod: %w", ifName, err)
		}
		moved = true
		return nil
	})
	if err != nil || !moved {
		return moved, err
	}
	return true, tmp.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return err
		}
		if err := resetLink(l, orig); err != nil {
			// Still to the host: a VF left in the temporary namespace
			// would be lost with it.
			return rollback.With(err, netlink.LinkSetNsFd(l, int(hostNS.Fd())))
		}
		return netlink.LinkSetNsFd(l, int(hostNS.Fd()))
	})
}

// resetLink gives a VF netdev that is down its original name, altnames,
// MAC and MTU.
func resetLink(l netlink.Link, orig Original) error {
	a := l.Attrs()
	if a.Name != orig.Name {
		if err := netlink.LinkSetName(l, orig.Name); err != nil {
			return fmt.Errorf("restore name %s of %s: %w", orig.Name, a.Name, err)
		}
	}
	if hw, err := net.ParseMAC(orig.MAC); err == nil && a.HardwareAddr.String() != hw.String() {
		if err := netlink.LinkSetHardwareAddr(l, hw); err != nil {
			return fmt.Errorf("restore MAC %s of %s: %w", orig.MAC, orig.Name, err)
		}
	}
	if orig.MTU > 0 && a.MTU != orig.MTU {
		if err := netlink.LinkSetMTU(l, orig.MTU); err != nil {
			return fmt.Errorf("restore MTU %d of %s: %w", orig.MTU, orig.Name, err)
		}
	}
	for _, alt := range orig.AltNames {
		if !slices.Contains(a.AltNames, alt) {
			if err := netlink.LinkAddAltName(l, alt); err != nil {
				return fmt.Errorf("restore altname %s of %s: %w", alt, orig.Name, err)
			}
		}
	}
	return nil
}

// configureIPs gives the VF in the pod its IPAM addresses and routes. The
// VF sits on the underlay subnet, so addresses keep their prefix length.
// IPv6 addresses skip DAD: conflict detection is the IPAM's job (warp-ipam
// probes on this very interface before it answers).
func configureIPs(ifName string, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return err
	}
	for _, ipc := range res.IPs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}}
		if ipc.Address.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", ipc.Address.String(), ifName, err)
		}
	}
	for _, r := range res.Routes {
		gw := r.GW
		if gw == nil {
			gw = gatewayFor(res, r.Dst.IP.To4() != nil)
		}
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: r.Dst.IP, Mask: r.Dst.Mask}, Gw: gw}
		if err := netlink.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %v: %w", r.Dst.String(), gw, err)
		}
	}
	return nil
}

// gatewayFor is the IPAM gateway of the family, for routes that name none.
func gatewayFor(res *current.Result, v4 bool) net.IP {
	for _, ipc := range res.IPs {
		if (ipc.Address.IP.To4() != nil) == v4 && ipc.Gateway != nil {
			return ipc.Gateway
		}
	}
	return nil
}
