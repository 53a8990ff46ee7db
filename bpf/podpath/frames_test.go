package podpath

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/internal/topo"
)

// Hand-built frames for what ping and TCP cannot send: ARP, DHCP, ND and
// packets with chosen source addresses. L4 checksums are left zero: the
// program does not look at them, and what happens after it does not matter
// here.

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ethFrame(dst, src net.HardwareAddr, etype uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], etype)
	return append(f, payload...)
}

// arpRequest is an Ethernet ARP request with sender sha/sip for tip.
func arpRequest(sha net.HardwareAddr, sip, tip netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // IPv4
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], 1) // request
	copy(b[8:14], sha)
	s, d := sip.As4(), tip.As4()
	copy(b[14:18], s[:])
	copy(b[24:28], d[:])
	return b
}

func csum16(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ipv4UDP is an IPv4 packet carrying an empty UDP datagram.
func ipv4UDP(src, dst netip.Addr, sport, dport uint16) []byte {
	b := make([]byte, 28)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 28)
	b[8] = 64
	b[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], csum16(b[:20]))
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	binary.BigEndian.PutUint16(b[24:], 8)
	return b
}

// ipv6ICMP is an IPv6 packet with an 8-byte ICMPv6 message of type typ
// (135 = neighbour solicitation) and hop limit 255, as ND sends it.
func ipv6ICMP(src, dst netip.Addr, typ byte) []byte {
	b := make([]byte, 40+24)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], 24)
	b[6] = unix.IPPROTO_ICMPV6
	b[7] = 255
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	b[40] = typ
	return b
}

// solicitedNode returns the solicited-node multicast group of a and its MAC.
func solicitedNode(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	b := a.As16()
	g := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	return g, net.HardwareAddr{0x33, 0x33, 0xff, b[13], b[14], b[15]}
}

// sendRaw sends frame out of the pod's eth0 through an AF_PACKET socket.
func sendRaw(t *testing.T, p *topo.Pod, frame []byte) {
	t.Helper()
	err := p.NS.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		etype := binary.BigEndian.Uint16(frame[12:14])
		sa := &unix.SockaddrLinklayer{Ifindex: p.PodIdx, Protocol: etype<<8 | etype>>8, Halen: 6}
		copy(sa.Addr[:], frame[0:6])
		return unix.Sendto(fd, frame, 0, sa)
	})
	if err != nil {
		t.Fatalf("send raw frame from %s: %v", p.NS, err)
	}
}
