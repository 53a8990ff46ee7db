package pf

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkPF applies VF settings through the PF driver with rtnetlink, in the
// network namespace of the calling thread (a CNI plugin runs in the node's
// namespace, where the PF netdev lives).
type netlinkPF struct{}

// Netlink returns the PF implementation for real SR-IOV NICs. Every call
// looks the PF netdev up by name and first checks that it reports the VF
// (IFLA_VFINFO_LIST), so a link that is not an SR-IOV PF, or one with
// SR-IOV disabled, fails with ErrNoVF instead of an opaque errno.
func Netlink() PF { return netlinkPF{} }

// link returns the PF link and the VF's info after checking both exist.
func (netlinkPF) link(pfName string, vf int) (netlink.Link, netlink.VfInfo, error) {
	if err := checkVF(pfName, vf); err != nil {
		return nil, netlink.VfInfo{}, err
	}
	l, err := netlinksafe.LinkByName(pfName)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok || errors.Is(err, unix.ENODEV) {
			return nil, netlink.VfInfo{}, fmt.Errorf("%w: PF netdev %q not found in this network namespace", ErrNoPF, pfName)
		}
		return nil, netlink.VfInfo{}, fmt.Errorf("look up PF netdev %q: %w", pfName, err)
	}
	vfs := l.Attrs().Vfs
	if len(vfs) == 0 {
		return nil, netlink.VfInfo{}, fmt.Errorf("%w: %s (%s) reports no VFs: it is not an SR-IOV PF, or SR-IOV is disabled (sriov_numvfs is 0)",
			ErrNoVF, pfName, l.Type())
	}
	for _, info := range vfs {
		if info.ID == vf {
			return l, info, nil
		}
	}
	return nil, netlink.VfInfo{}, fmt.Errorf("%w: PF %s has %d VFs (0-%d), no VF %d", ErrNoVF, pfName, len(vfs), len(vfs)-1, vf)
}

// wrap turns the kernel's answer to a VF setting into an error that says
// which setting, which VF, and what EOPNOTSUPP means here.
func wrap(what, pfName string, vf int, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("set %s of VF %d on PF %s: the PF driver does not support it: %w", what, vf, pfName, err)
	}
	return fmt.Errorf("set %s of VF %d on PF %s: %w", what, vf, pfName, err)
}

func (n netlinkPF) VF(pfName string, vf int) (VFState, error) {
	_, info, err := n.link(pfName, vf)
	if err != nil {
		return VFState{}, err
	}
	s := VFState{
		VLAN:      info.Vlan,
		QoS:       info.Qos,
		Proto:     ProtoDot1Q,
		SpoofChk:  info.Spoofchk,
		Trust:     info.Trust == 1, // the kernel reports ^0 when the driver does not say
		MinTxRate: int(info.MinTxRate),
		MaxTxRate: int(info.MaxTxRate),
	}
	if len(info.Mac) == 6 && !isZeroMAC(info.Mac) {
		s.MAC = info.Mac.String()
	}
	if info.VlanProto == ethPDot1AD {
		s.Proto = ProtoDot1AD
	}
	if s.MaxTxRate == 0 && info.TxRate != 0 { // drivers that only report IFLA_VF_TX_RATE
		s.MaxTxRate = info.TxRate
	}
	switch info.LinkState {
	case netlink.VF_LINK_STATE_ENABLE:
		s.LinkState = LinkStateEnable
	case netlink.VF_LINK_STATE_DISABLE:
		s.LinkState = LinkStateDisable
	default:
		s.LinkState = LinkStateAuto
	}
	return s, nil
}

func (n netlinkPF) SetMAC(pfName string, vf int, mac net.HardwareAddr) error {
	if err := checkMAC(mac); err != nil {
		return err
	}
	l, _, err := n.link(pfName, vf)
	if err != nil {
		return err
	}
	return wrap("MAC", pfName, vf, netlink.LinkSetVfHardwareAddr(l, vf, mac))
}

func (n netlinkPF) SetVLAN(pfName string, vf, vlan, qos int, proto string) error {
	_, ethertype, err := checkVLAN(vlan, qos, proto)
	if err != nil {
		return err
	}
	l, _, err := n.link(pfName, vf)
	if err != nil {
		return err
	}
	return wrap("VLAN", pfName, vf, netlink.LinkSetVfVlanQosProto(l, vf, vlan, qos, ethertype))
}

func (n netlinkPF) SetSpoofChk(pfName string, vf int, on bool) error {
	l, _, err := n.link(pfName, vf)
	if err != nil {
		return err
	}
	return wrap("spoofchk", pfName, vf, netlink.LinkSetVfSpoofchk(l, vf, on))
}

func (n netlinkPF) SetTrust(pfName string, vf int, on bool) error {
	l, _, err := n.link(pfName, vf)
	if err != nil {
		return err
	}
	return wrap("trust", pfName, vf, netlink.LinkSetVfTrust(l, vf, on))
}

func (n netlinkPF) SetLinkState(pfName string, vf int, state string) error {
	v, err := checkLinkState(state)
	if err != nil {
		return err
	}
	l, _, err := n.link(pfName, vf)
	if err != nil {
		return err
	}
	return wrap("link state", pfName, vf, netlink.LinkSetVfState(l, vf, v))
}

func (n netlinkPF) SetRate(pfName string, vf, minMbps, maxMbps int) error {
	if err := checkRate(minMbps, maxMbps); err != nil {
		return err
	}
	l, _, err := n.link(pfName, vf)
	if err != nil {
		return err
	}
	return wrap("rate", pfName, vf, netlink.LinkSetVfRate(l, vf, minMbps, maxMbps))
}
