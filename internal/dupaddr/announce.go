package dupaddr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

const ndFlagOverride = 0x20 // NA flags byte: the O bit

// buildARPAnnouncement returns an RFC 5227 ARP Announcement: a broadcast ARP
// request with sender and target IP both addr, so every host on the segment
// that has a stale binding for addr (the previous holder's MAC) updates it.
func buildARPAnnouncement(src net.HardwareAddr, addr netip.Addr) []byte {
	b := buildARPProbe(src, addr)
	a := addr.As4()
	copy(b[ethHeaderLen+14:ethHeaderLen+18], a[:])
	return b
}

// allNodes is ff02::1, where unsolicited Neighbor Advertisements go.
var allNodes = netip.MustParseAddr("ff02::1")

// buildUnsolicitedNA returns an RFC 4861 section 7.2.6 unsolicited Neighbor
// Advertisement for addr: to all nodes, Override set (so caches replace the
// old MAC), with a Target Link-Layer Address option carrying ours.
func buildUnsolicitedNA(src net.HardwareAddr, addr netip.Addr) []byte {
	const optLen = 8
	msgLen := ndMsgLen + optLen
	b := make([]byte, ethHeaderLen+ipv6HeaderLen+msgLen)
	putEthHeader(b, allNodesMAC, src, etherTypeIPv6)
	ip := b[ethHeaderLen:]
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:6], uint16(msgLen))
	ip[6] = protoICMPv6
	ip[7] = ndHopLimit
	s, d := addr.As16(), allNodes.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	msg := ip[ipv6HeaderLen:]
	msg[0] = icmpv6NA
	msg[4] = ndFlagOverride
	copy(msg[8:24], s[:])
	msg[24] = ndOptTargetLLAddr
	msg[25] = 1 // length in units of 8 bytes
	copy(msg[26:32], src)
	binary.BigEndian.PutUint16(msg[2:4], icmpv6Checksum(s, d, msg))
	return b
}

// Announce tells the segment that ifName (in the namespace at netnsPath)
// now holds addrs: an ARP Announcement per IPv4 address and an unsolicited
// Neighbor Advertisement per IPv6 address. A device that moved between
// hosts (an SR-IOV VF handed to a new pod) would otherwise stay unreachable
// until its peers' neighbour entries for the old MAC expire. The link must
// be up.
func Announce(netnsPath, ifName string, addrs []netip.Addr) error {
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("dupaddr: announce on %q in %s: %w", ifName, netnsPath, err)
		}
		mac := link.Attrs().HardwareAddr
		if len(mac) != 6 {
			return fmt.Errorf("dupaddr: %q has no Ethernet MAC to announce", ifName)
		}
		var errs []error
		for _, addr := range addrs {
			var proto uint16
			var frame []byte
			if addr.Is4() {
				proto, frame = etherTypeARP, buildARPAnnouncement(mac, addr)
			} else {
				proto, frame = etherTypeIPv6, buildUnsolicitedNA(mac, addr)
			}
			fd, err := openPacketSocket(link.Attrs().Index, proto, nil)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			dst := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: link.Attrs().Index, Halen: 6}
			copy(dst.Addr[:], frame[0:6])
			if err := sendFrame(fd, frame, dst); err != nil {
				errs = append(errs, fmt.Errorf("announce %s: %w", addr, err))
			}
			unix.Close(fd)
		}
		return errors.Join(errs...)
	})
}
