// Package pf reads and changes the PF-side settings of SR-IOV virtual
// functions: the settings an operator makes with `ip link set <pf> vf N ...`
// (administrative MAC, VLAN/QoS/protocol, spoof checking, trust, link state,
// minimum and maximum transmit rate).
//
// These settings are enforced by the PF's driver and the NIC's embedded
// switch, not by the VF netdev: no virtual device (veth, macvlan, dummy)
// implements them, and this machine has no SR-IOV NIC. So they live behind
// the small PF interface, with two implementations:
//
//   - Netlink applies them with rtnetlink on the PF netdev (IFLA_VFINFO_LIST,
//     the same messages `ip link set <pf> vf N` sends) and reads them back from
//     the PF's link attributes. It is what runs on a real node.
//   - Recorder writes them into a JSON state file instead. The SR-IOV
//     simulator (internal/sriov/sim) initialises that file for the VFs it
//     creates, and tests and the demo read it to verify what a plugin did.
//
// FromEnv picks the recorder when WARP_SIM_PF_STATE names a state file, so a
// plugin binary runs unchanged against real hardware and against the
// simulator.
//
// Both implementations validate their arguments the same way (VLAN 0-4095,
// QoS 0-7, a unicast MAC, known protocol and link-state names, min rate not
// above max rate) so that a plugin bug shows up in the simulator with the
// same error it would cause on a real PF.
package pf

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// VFState is the PF-side configuration of one VF.
type VFState struct {
	MAC       string `json:"mac"`       // admin MAC, "" = none/zero
	VLAN      int    `json:"vlan"`      // 0 = untagged
	QoS       int    `json:"qos"`       // 802.1p priority of the VLAN tag
	Proto     string `json:"proto"`     // "802.1q" or "802.1ad"
	SpoofChk  bool   `json:"spoofchk"`  // drop frames whose source MAC is not the VF's
	Trust     bool   `json:"trust"`     // allow promiscuous mode, MAC changes from the VF, ...
	LinkState string `json:"linkState"` // "auto", "enable", "disable"
	MinTxRate int    `json:"minTxRate"` // Mbps, 0 = no minimum
	MaxTxRate int    `json:"maxTxRate"` // Mbps, 0 = unlimited
}

// Protocol and link-state names used in VFState.
const (
	ProtoDot1Q  = "802.1q"
	ProtoDot1AD = "802.1ad"

	LinkStateAuto    = "auto"
	LinkStateEnable  = "enable"
	LinkStateDisable = "disable"
)

// Ethertypes of the VLAN protocols (what IFLA_VF_VLAN_LIST carries).
const (
	ethPDot1Q  = 0x8100
	ethPDot1AD = 0x88a8
)

// DefaultVFState returns the settings of a freshly created VF: spoof
// checking on, not trusted, link state following the PF, no VLAN, no rate
// limits, no admin MAC.
func DefaultVFState() VFState {
	return VFState{Proto: ProtoDot1Q, SpoofChk: true, LinkState: LinkStateAuto}
}

// PF reads and changes the PF-side settings of the VFs of a PF netdev.
// pfName is the PF's netdev name (in the current network namespace for
// Netlink), vf the VF index on that PF (the N of virtfnN).
type PF interface {
	VF(pfName string, vf int) (VFState, error)
	SetMAC(pfName string, vf int, mac net.HardwareAddr) error
	SetVLAN(pfName string, vf, vlan, qos int, proto string) error
	SetSpoofChk(pfName string, vf int, on bool) error
	SetTrust(pfName string, vf int, on bool) error
	SetLinkState(pfName string, vf int, state string) error
	SetRate(pfName string, vf, minMbps, maxMbps int) error
}

// EnvStateFile names the environment variable that switches FromEnv to the
// recorder: the simulator hands it to plugins (sim.PF.Env).
const EnvStateFile = "WARP_SIM_PF_STATE"

// FromEnv returns Recorder($WARP_SIM_PF_STATE) when that variable is set and
// not empty, else Netlink().
func FromEnv() PF {
	if f := os.Getenv(EnvStateFile); f != "" {
		return Recorder(f)
	}
	return Netlink()
}

var (
	// ErrNoVF is returned (wrapped) when the PF has no VF with the given
	// index, including when the link is not an SR-IOV PF at all or has SR-IOV
	// disabled.
	ErrNoVF = errors.New("no such VF")
	// ErrNoPF is returned (wrapped) when the PF netdev does not exist (Netlink),
	// or the state file does not describe it (Recorder).
	ErrNoPF = errors.New("no such PF")
	// ErrInvalid is returned (wrapped) for an argument no PF driver would
	// accept (VLAN out of range, multicast MAC, unknown protocol, ...).
	ErrInvalid = errors.New("invalid VF setting")
)

func checkVF(pfName string, vf int) error {
	if pfName == "" {
		return fmt.Errorf("%w: empty PF name", ErrInvalid)
	}
	if vf < 0 {
		return fmt.Errorf("%w: VF index %d is negative", ErrInvalid, vf)
	}
	return nil
}

// checkMAC accepts a 6-byte unicast MAC; all zeroes clears the admin MAC.
func checkMAC(mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("%w: MAC %q is not a 6-byte Ethernet address", ErrInvalid, mac.String())
	}
	if mac[0]&1 != 0 {
		return fmt.Errorf("%w: MAC %s is a multicast address; a VF needs a unicast one", ErrInvalid, mac)
	}
	return nil
}

func isZeroMAC(mac net.HardwareAddr) bool {
	for _, b := range mac {
		if b != 0 {
			return false
		}
	}
	return true
}

// normProto checks a protocol name; "" means 802.1q. Returns the name and
// its ethertype.
func normProto(proto string) (string, int, error) {
	switch proto {
	case "", ProtoDot1Q:
		return ProtoDot1Q, ethPDot1Q, nil
	case ProtoDot1AD:
		return ProtoDot1AD, ethPDot1AD, nil
	}
	return "", 0, fmt.Errorf("%w: VLAN protocol %q (want %q or %q)", ErrInvalid, proto, ProtoDot1Q, ProtoDot1AD)
}

func checkVLAN(vlan, qos int, proto string) (string, int, error) {
	if vlan < 0 || vlan > 4095 {
		return "", 0, fmt.Errorf("%w: VLAN %d out of range 0-4095", ErrInvalid, vlan)
	}
	if qos < 0 || qos > 7 {
		return "", 0, fmt.Errorf("%w: QoS %d out of range 0-7", ErrInvalid, qos)
	}
	return normProto(proto)
}

func checkLinkState(state string) (uint32, error) {
	switch state {
	case LinkStateAuto:
		return 0, nil
	case LinkStateEnable:
		return 1, nil
	case LinkStateDisable:
		return 2, nil
	}
	return 0, fmt.Errorf("%w: link state %q (want %q, %q or %q)", ErrInvalid, state, LinkStateAuto, LinkStateEnable, LinkStateDisable)
}

func checkRate(minMbps, maxMbps int) error {
	if minMbps < 0 || maxMbps < 0 {
		return fmt.Errorf("%w: negative rate (min %d, max %d Mbps)", ErrInvalid, minMbps, maxMbps)
	}
	if maxMbps != 0 && minMbps > maxMbps {
		return fmt.Errorf("%w: min rate %d Mbps above max rate %d Mbps", ErrInvalid, minMbps, maxMbps)
	}
	return nil
}
