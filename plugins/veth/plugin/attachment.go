package plugin

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
)

// Gateways the pod routes through. They are link-local, so they never clash
// with pod or node addresses, and the pod resolves them through a permanent
// neighbour entry to the host end's MAC: the host end needs no address and
// there is no bridge.
var (
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
	GatewayV6 = netip.MustParseAddr("fe80::1")
)

// Attachment is everything derived from (container ID, ifname): the host
// end's name, both MACs and the owner ID of the BPF state. Deriving instead
// of storing lets DEL and CHECK find them with no cache, after restarts and
// when the pod namespace is gone.
type Attachment struct {
	HostIfName string
	HostMAC    net.HardwareAddr
	PodMAC     net.HardwareAddr
	Owner      uint64
}

// Derive computes the attachment of a container interface.
func Derive(containerID, ifName string) Attachment {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return Attachment{
		HostIfName: "warp" + hex.EncodeToString(h[:])[:11], // 15 chars, IFNAMSIZ-1
		HostMAC:    localMAC(h[8:13]),
		PodMAC:     localMAC(h[13:18]),
		Owner:      binary.BigEndian.Uint64(h[:8]),
	}
}

// localMAC makes a locally administered unicast MAC from 5 bytes; the
// leading 0x0a/0x0e-style byte keeps it away from vendor OUIs.
func localMAC(b []byte) net.HardwareAddr {
	return net.HardwareAddr{0x0a, b[0], b[1], b[2], b[3], b[4]}
}

func gatewayFor(ip netip.Addr) netip.Addr {
	if ip.Is4() {
		return GatewayV4
	}
	return GatewayV6
}
