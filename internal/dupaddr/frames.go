package dupaddr

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
)

// Frame building and parsing is pure (no sockets) so it can be unit-tested
// without privileges. Everything here works on complete Ethernet II frames,
// which is what an AF_PACKET SOCK_RAW socket sends and receives.

const (
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd

	ethHeaderLen = 14
	minFrameLen  = 60 // 802.3 minimum without FCS; short frames are padded

	arpHeaderLen  = 28 // Ethernet/IPv4 ARP payload
	arpOpRequest  = 1
	arpOpReply    = 2
	arpHTypeEther = 1

	ipv6HeaderLen     = 40
	protoICMPv6       = 58
	ndHopLimit        = 255 // RFC 4861: ND packets must carry 255 so off-link forgeries are detectable
	icmpv6NS          = 135
	icmpv6NA          = 136
	ndMsgLen          = 24 // type, code, checksum, 4 reserved/flag bytes, 16-byte target
	ndOptSourceLLAddr = 1
	ndOptTargetLLAddr = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// allNodesMAC is the Ethernet group for ff02::1, where DAD defenders send
// their Neighbor Advertisements (the prober has no address to unicast to).
var allNodesMAC = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}

func putEthHeader(b []byte, dst, src net.HardwareAddr, etherType uint16) {
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], etherType)
}

// buildARPProbe returns an RFC 5227 ARP Probe: a broadcast ARP request with
// sender IP 0.0.0.0 (so no host's ARP cache is polluted with a binding we do
// not own yet), sender MAC = ours, target MAC zero and target IP = candidate.
func buildARPProbe(src net.HardwareAddr, target netip.Addr) []byte {
	b := make([]byte, minFrameLen) // trailing bytes are the zero padding
	putEthHeader(b, broadcastMAC, src, etherTypeARP)
	a := b[ethHeaderLen:]
	binary.BigEndian.PutUint16(a[0:2], arpHTypeEther)
	binary.BigEndian.PutUint16(a[2:4], etherTypeIPv4)
	a[4] = 6 // hardware address length
	a[5] = 4 // protocol address length
	binary.BigEndian.PutUint16(a[6:8], arpOpRequest)
	copy(a[8:14], src)
	// a[14:18] sender IP 0.0.0.0, a[18:24] target MAC 00:00:00:00:00:00
	t := target.As4()
	copy(a[24:28], t[:])
	return b
}

// parseARPConflict reports whether frame is an ARP packet that shows another
// host using target, and that host's MAC. Per RFC 5227 section 2.1.1 that is
// any request or reply whose sender IP is target, or an ARP Probe from
// someone else for the same target (a simultaneous probe). Frames from own
// are our probes coming back (e.g. through a hairpinning bridge) and never
// count.
func parseARPConflict(frame []byte, own net.HardwareAddr, target netip.Addr) (net.HardwareAddr, bool) {
	if len(frame) < ethHeaderLen+arpHeaderLen ||
		binary.BigEndian.Uint16(frame[12:14]) != etherTypeARP {
		return nil, false
	}
	if bytes.Equal(frame[6:12], own) {
		return nil, false
	}
	a := frame[ethHeaderLen:]
	if binary.BigEndian.Uint16(a[0:2]) != arpHTypeEther ||
		binary.BigEndian.Uint16(a[2:4]) != etherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 {
		return nil, false
	}
	op := binary.BigEndian.Uint16(a[6:8])
	if op != arpOpRequest && op != arpOpReply {
		return nil, false
	}
	sha := net.HardwareAddr(bytes.Clone(a[8:14]))
	if bytes.Equal(sha, own) {
		return nil, false
	}
	spa := netip.AddrFrom4([4]byte(a[14:18]))
	tpa := netip.AddrFrom4([4]byte(a[24:28]))
	t4 := target.Unmap()
	if spa == t4 {
		return sha, true
	}
	if op == arpOpRequest && spa.IsUnspecified() && tpa == t4 {
		return sha, true
	}
	return nil, false
}

// solicitedNode returns the solicited-node multicast group ff02::1:ffXX:XXXX
// for addr. Every host joins the group for each of its addresses, so a DAD
// probe sent there reaches exactly the hosts that could own the address.
func solicitedNode(addr netip.Addr) netip.Addr {
	a := addr.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: a[13], 14: a[14], 15: a[15]})
}

// ipv6MulticastMAC maps an IPv6 multicast group to its Ethernet group
// 33:33:xx:xx:xx:xx (RFC 2464 section 7).
func ipv6MulticastMAC(group netip.Addr) net.HardwareAddr {
	g := group.As16()
	return net.HardwareAddr{0x33, 0x33, g[12], g[13], g[14], g[15]}
}

// buildDADProbe returns an RFC 4862 section 5.4.2 DAD Neighbor Solicitation
// for target: IPv6 source :: (we own no address yet), destination the
// solicited-node group of target, hop limit 255, and no Source Link-Layer
// Address option (RFC 4861 forbids it when the source is unspecified; the
// kernel drops such an NS as invalid).
func buildDADProbe(src net.HardwareAddr, target netip.Addr) []byte {
	group := solicitedNode(target)
	b := make([]byte, ethHeaderLen+ipv6HeaderLen+ndMsgLen)
	putEthHeader(b, ipv6MulticastMAC(group), src, etherTypeIPv6)

	ip := b[ethHeaderLen:]
	ip[0] = 6 << 4 // version 6, traffic class 0, flow label 0
	binary.BigEndian.PutUint16(ip[4:6], ndMsgLen)
	ip[6] = protoICMPv6
	ip[7] = ndHopLimit
	// ip[8:24] source :: is already zero
	dst := group.As16()
	copy(ip[24:40], dst[:])

	msg := ip[ipv6HeaderLen:]
	msg[0] = icmpv6NS
	// msg[1] code 0, msg[2:4] checksum (filled below), msg[4:8] reserved
	t := target.As16()
	copy(msg[8:24], t[:])
	binary.BigEndian.PutUint16(msg[2:4], icmpv6Checksum([16]byte{}, dst, msg))
	return b
}

// icmpv6Checksum computes the ICMPv6 checksum (RFC 4443 section 2.3) of msg,
// whose checksum field must be zero, over the RFC 8200 section 8.1
// pseudo-header. We compute it ourselves because on a raw AF_PACKET socket
// nothing in the kernel will.
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(b[0])<<8 | uint32(b[1])
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	var tail [8]byte // 32-bit upper-layer length, 3 zero bytes, next header
	binary.BigEndian.PutUint32(tail[0:4], uint32(len(msg)))
	tail[7] = protoICMPv6
	add(tail[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// parseNDConflict reports whether frame shows another host using target, and
// that host's MAC: a Neighbor Advertisement for target (the owner defending
// it), or a DAD Neighbor Solicitation for target from someone else (a
// simultaneous DAD, which RFC 4862 section 5.4.3 also treats as duplicate).
// Packets that fail the RFC 4861 section 7.1 validity checks we can make
// without a checksum are ignored, as is anything sent from own. The holder is
// the Target Link-Layer Address option when present (it names the owner even
// if a proxy relayed the frame), otherwise the Ethernet source.
func parseNDConflict(frame []byte, own net.HardwareAddr, target netip.Addr) (net.HardwareAddr, bool) {
	if len(frame) < ethHeaderLen+ipv6HeaderLen+ndMsgLen ||
		binary.BigEndian.Uint16(frame[12:14]) != etherTypeIPv6 {
		return nil, false
	}
	ethSrc := frame[6:12]
	if bytes.Equal(ethSrc, own) {
		return nil, false
	}
	ip := frame[ethHeaderLen:]
	if ip[0]>>4 != 6 || ip[6] != protoICMPv6 || ip[7] != ndHopLimit {
		return nil, false
	}
	plen := int(binary.BigEndian.Uint16(ip[4:6]))
	if plen < ndMsgLen || ipv6HeaderLen+plen > len(ip) {
		return nil, false
	}
	msg := ip[ipv6HeaderLen : ipv6HeaderLen+plen]
	if msg[1] != 0 || netip.AddrFrom16([16]byte(msg[8:24])) != target {
		return nil, false
	}
	opts, ok := ndOptions(msg[ndMsgLen:])
	if !ok {
		return nil, false
	}
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	switch msg[0] {
	case icmpv6NA:
		holder := net.HardwareAddr(bytes.Clone(ethSrc))
		if tlla, ok := opts[ndOptTargetLLAddr]; ok && len(tlla) == 6 {
			if bytes.Equal(tlla, own) {
				return nil, false
			}
			holder = net.HardwareAddr(bytes.Clone(tlla))
		}
		return holder, true
	case icmpv6NS:
		// Only a DAD probe (source ::) means "I want this address too"; an
		// NS from a real source is ordinary address resolution by a host
		// that believes someone else owns target, which tells us nothing.
		if src.IsUnspecified() {
			return net.HardwareAddr(bytes.Clone(ethSrc)), true
		}
	}
	return nil, false
}

// ndOptions splits ND options into type -> option body (after the 2-byte
// type/length header). It reports false for malformed options, including a
// zero length, for which RFC 4861 section 4.6 requires discarding the packet.
func ndOptions(b []byte) (map[byte][]byte, bool) {
	opts := map[byte][]byte{}
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, false
		}
		n := int(b[1]) * 8
		if n == 0 || n > len(b) {
			return nil, false
		}
		if _, dup := opts[b[0]]; !dup {
			opts[b[0]] = b[2:n]
		}
		b = b[n:]
	}
	return opts, true
}
