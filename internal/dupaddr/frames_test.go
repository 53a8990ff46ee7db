package dupaddr

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// These tests cover the pure frame code and need no privileges.

var (
	ownMAC   = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	otherMAC = net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
)

func TestBuildARPProbeLayout(t *testing.T) {
	got := buildARPProbe(ownMAC, netip.MustParseAddr("10.1.2.3"))
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet dst: broadcast
		0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // Ethernet src: ours
		0x08, 0x06, // EtherType ARP
		0x00, 0x01, // htype Ethernet
		0x08, 0x00, // ptype IPv4
		0x06, 0x04, // hlen, plen
		0x00, 0x01, // op request
		0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // sender MAC: ours
		0x00, 0x00, 0x00, 0x00, // sender IP 0.0.0.0 (RFC 5227 probe)
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC: zero
		0x0a, 0x01, 0x02, 0x03, // target IP: candidate
	}
	want = append(want, make([]byte, 60-len(want))...) // padded to minimum frame size
	if !bytes.Equal(got, want) {
		t.Fatalf("ARP probe\n got %x\nwant %x", got, want)
	}
}

// arpFrame builds an ARP packet independently of buildARPProbe.
func arpFrame(ethSrc net.HardwareAddr, op uint16, sha net.HardwareAddr, spa, tpa string) []byte {
	b := append([]byte{}, broadcastMAC...)
	b = append(b, ethSrc...)
	b = append(b, 0x08, 0x06, 0, 1, 8, 0, 6, 4, byte(op>>8), byte(op))
	b = append(b, sha...)
	b = append(b, netip.MustParseAddr(spa).AsSlice()...)
	b = append(b, make([]byte, 6)...)
	b = append(b, netip.MustParseAddr(tpa).AsSlice()...)
	return b
}

func TestParseARPConflict(t *testing.T) {
	target := netip.MustParseAddr("10.1.2.3")
	tests := []struct {
		name   string
		frame  []byte
		want   bool
		holder net.HardwareAddr
	}{
		{"reply from owner", arpFrame(otherMAC, arpOpReply, otherMAC, "10.1.2.3", "0.0.0.0"), true, otherMAC},
		{"request from owner", arpFrame(otherMAC, arpOpRequest, otherMAC, "10.1.2.3", "10.1.2.9"), true, otherMAC},
		{"simultaneous probe", arpFrame(otherMAC, arpOpRequest, otherMAC, "0.0.0.0", "10.1.2.3"), true, otherMAC},
		{"our own probe looped back", buildARPProbe(ownMAC, target), false, nil},
		{"sender MAC ours, Ethernet src not", arpFrame(otherMAC, arpOpReply, ownMAC, "10.1.2.3", "0.0.0.0"), false, nil},
		{"reply for another address", arpFrame(otherMAC, arpOpReply, otherMAC, "10.1.2.4", "0.0.0.0"), false, nil},
		{"someone resolving the target", arpFrame(otherMAC, arpOpRequest, otherMAC, "10.1.2.9", "10.1.2.3"), false, nil},
		{"reply to a probe is not a probe", arpFrame(otherMAC, arpOpReply, otherMAC, "0.0.0.0", "10.1.2.3"), false, nil},
		{"unknown opcode", arpFrame(otherMAC, 3, otherMAC, "10.1.2.3", "0.0.0.0"), false, nil},
		{"truncated", arpFrame(otherMAC, arpOpReply, otherMAC, "10.1.2.3", "0.0.0.0")[:40], false, nil},
		{"not ARP", func() []byte {
			f := arpFrame(otherMAC, arpOpReply, otherMAC, "10.1.2.3", "0.0.0.0")
			f[13] = 0x00
			return f
		}(), false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			holder, ok := parseARPConflict(tc.frame, ownMAC, target)
			if ok != tc.want || !bytes.Equal(holder, tc.holder) {
				t.Fatalf("parseARPConflict = %v, %v; want %v, %v", holder, ok, tc.holder, tc.want)
			}
		})
	}
}

// onesSum is a deliberately different formulation of the Internet checksum
// sum from the one in frames.go: 64-bit accumulation with a single final
// fold. A correctly checksummed packet sums to 0xffff.
func onesSum(chunks ...[]byte) uint16 {
	var all []byte
	for _, c := range chunks {
		all = append(all, c...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var s uint64
	for i := 0; i < len(all); i += 2 {
		s += uint64(binary.BigEndian.Uint16(all[i:]))
	}
	for s > 0xffff {
		s = (s >> 16) + (s & 0xffff)
	}
	return uint16(s)
}

func TestBuildDADProbe(t *testing.T) {
	tests := []struct {
		target, group string
		dstMAC        net.HardwareAddr
		checksum      uint16 // computed independently (Python, RFC 1071 algorithm)
	}{
		{"fd00::5", "ff02::1:ff00:5", net.HardwareAddr{0x33, 0x33, 0xff, 0x00, 0x00, 0x05}, 0x7d9d},
		{"2001:db8:abcd:12::1234:5678", "ff02::1:ff34:5678", net.HardwareAddr{0x33, 0x33, 0xff, 0x34, 0x56, 0x78}, 0xe1b6},
		{"fe80::1", "ff02::1:ff00:1", net.HardwareAddr{0x33, 0x33, 0xff, 0x00, 0x00, 0x01}, 0x7c25},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			target := netip.MustParseAddr(tc.target)
			f := buildDADProbe(ownMAC, target)
			if len(f) != 14+40+24 {
				t.Fatalf("frame length %d, want 78 (no options)", len(f))
			}
			if !bytes.Equal(f[0:6], tc.dstMAC) || !bytes.Equal(f[6:12], ownMAC) || binary.BigEndian.Uint16(f[12:14]) != 0x86dd {
				t.Fatalf("Ethernet header %x", f[:14])
			}
			ip := f[14:54]
			if ip[0] != 0x60 || ip[1] != 0 || ip[2] != 0 || ip[3] != 0 {
				t.Errorf("version/class/flow %x", ip[0:4])
			}
			if plen := binary.BigEndian.Uint16(ip[4:6]); plen != 24 {
				t.Errorf("payload length %d", plen)
			}
			if ip[6] != 58 || ip[7] != 255 {
				t.Errorf("next header %d hop limit %d, want 58/255", ip[6], ip[7])
			}
			if src := netip.AddrFrom16([16]byte(ip[8:24])); src != netip.IPv6Unspecified() {
				t.Errorf("source %s, want ::", src)
			}
			if dst := netip.AddrFrom16([16]byte(ip[24:40])); dst != netip.MustParseAddr(tc.group) {
				t.Errorf("destination %s, want %s", dst, tc.group)
			}
			msg := f[54:]
			if msg[0] != 135 || msg[1] != 0 || !bytes.Equal(msg[4:8], []byte{0, 0, 0, 0}) {
				t.Errorf("ICMPv6 header %x", msg[:8])
			}
			if tgt := netip.AddrFrom16([16]byte(msg[8:24])); tgt != target {
				t.Errorf("target %s", tgt)
			}
			if got := binary.BigEndian.Uint16(msg[2:4]); got != tc.checksum {
				t.Errorf("checksum %#04x, want %#04x", got, tc.checksum)
			}
			pseudo := make([]byte, 40)
			copy(pseudo[0:16], ip[8:24])
			copy(pseudo[16:32], ip[24:40])
			binary.BigEndian.PutUint32(pseudo[32:36], uint32(len(msg)))
			pseudo[39] = 58
			if s := onesSum(pseudo, msg); s != 0xffff {
				t.Errorf("pseudo-header + message sums to %#04x, want 0xffff", s)
			}
		})
	}
}

func TestICMPv6ChecksumOddLength(t *testing.T) {
	var src, dst [16]byte
	src[15], dst[0] = 1, 0xff
	msg := []byte{1, 2, 0, 0, 5, 6, 7} // checksum field msg[2:4] zero while summing
	c := icmpv6Checksum(src, dst, msg)
	binary.BigEndian.PutUint16(msg[2:4], c)
	pseudo := make([]byte, 40)
	copy(pseudo[0:16], src[:])
	copy(pseudo[16:32], dst[:])
	binary.BigEndian.PutUint32(pseudo[32:36], uint32(len(msg)))
	pseudo[39] = 58
	if s := onesSum(pseudo, msg); s != 0xffff {
		t.Fatalf("odd-length message sums to %#04x, want 0xffff", s)
	}
}

// ndFrame builds an NS/NA independently of buildDADProbe. opts is appended
// verbatim after the 24-byte message; the checksum is left zero because the
// parser deliberately does not verify it.
func ndFrame(ethSrc net.HardwareAddr, typ byte, src, dst, target string, hop byte, opts []byte) []byte {
	b := append([]byte{}, allNodesMAC...)
	b = append(b, ethSrc...)
	b = append(b, 0x86, 0xdd)
	plen := 24 + len(opts)
	b = append(b, 0x60, 0, 0, 0, byte(plen>>8), byte(plen), 58, hop)
	b = append(b, netip.MustParseAddr(src).AsSlice()...)
	b = append(b, netip.MustParseAddr(dst).AsSlice()...)
	flags := byte(0)
	if typ == icmpv6NA {
		flags = 0x20 // override
	}
	b = append(b, typ, 0, 0, 0, flags, 0, 0, 0)
	b = append(b, netip.MustParseAddr(target).AsSlice()...)
	return append(b, opts...)
}

func llOpt(typ byte, mac net.HardwareAddr) []byte {
	return append([]byte{typ, 1}, mac...)
}

func TestParseNDConflict(t *testing.T) {
	const cand = "fd00::5"
	target := netip.MustParseAddr(cand)
	proxyMAC := net.HardwareAddr{0x02, 0x11, 0x11, 0x11, 0x11, 0x11}
	tests := []struct {
		name   string
		frame  []byte
		want   bool
		holder net.HardwareAddr
	}{
		{"NA with TLLA", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255, llOpt(2, otherMAC)), true, otherMAC},
		{"NA without options", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255, nil), true, otherMAC},
		{"NA relayed: TLLA names holder", ndFrame(proxyMAC, icmpv6NA, cand, "ff02::1", cand, 255, llOpt(2, otherMAC)), true, otherMAC},
		{"NA with other options first", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255,
			append([]byte{99, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, llOpt(2, otherMAC)...)), true, otherMAC},
		{"simultaneous DAD NS", ndFrame(otherMAC, icmpv6NS, "::", "ff02::1:ff00:5", cand, 255, nil), true, otherMAC},
		{"our own NS looped back", buildDADProbe(ownMAC, target), false, nil},
		{"NA from our MAC", ndFrame(ownMAC, icmpv6NA, cand, "ff02::1", cand, 255, llOpt(2, ownMAC)), false, nil},
		{"NA whose TLLA is ours", ndFrame(proxyMAC, icmpv6NA, cand, "ff02::1", cand, 255, llOpt(2, ownMAC)), false, nil},
		{"NA for another target", ndFrame(otherMAC, icmpv6NA, "fd00::6", "ff02::1", "fd00::6", 255, nil), false, nil},
		{"NA with hop limit 254", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 254, nil), false, nil},
		{"NA with zero-length option", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255, []byte{2, 0, 0, 0, 0, 0, 0, 0}), false, nil},
		{"NA with overlong option", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255, []byte{2, 2, 0, 0, 0, 0, 0, 0}), false, nil},
		{"address resolution NS", ndFrame(otherMAC, icmpv6NS, "fd00::9", "ff02::1:ff00:5", cand, 255, llOpt(1, otherMAC)), false, nil},
		{"router advertisement", ndFrame(otherMAC, 134, "fe80::1", "ff02::1", cand, 255, nil), false, nil},
		{"truncated", ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255, nil)[:70], false, nil},
		{"payload length beyond frame", func() []byte {
			f := ndFrame(otherMAC, icmpv6NA, cand, "ff02::1", cand, 255, nil)
			f[18], f[19] = 0, 200
			return f
		}(), false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			holder, ok := parseNDConflict(tc.frame, ownMAC, target)
			if ok != tc.want || !bytes.Equal(holder, tc.holder) {
				t.Fatalf("parseNDConflict = %v, %v; want %v, %v", holder, ok, tc.holder, tc.want)
			}
		})
	}
}

func TestCheckAddr(t *testing.T) {
	for _, s := range []string{"10.0.0.1", "fd00::5", "fe80::1", "2001:db8::1"} {
		if err := checkAddr(netip.MustParseAddr(s)); err != nil {
			t.Errorf("checkAddr(%s) = %v, want nil", s, err)
		}
	}
	bad := []netip.Addr{
		{},
		netip.MustParseAddr("::ffff:10.0.0.1"),
		netip.MustParseAddr("0.0.0.0"),
		netip.MustParseAddr("::"),
		netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("::1"),
		netip.MustParseAddr("224.0.0.1"),
		netip.MustParseAddr("ff02::1"),
		netip.MustParseAddr("255.255.255.255"),
	}
	for _, a := range bad {
		if err := checkAddr(a); err == nil {
			t.Errorf("checkAddr(%v) = nil, want error", a)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil || o.Timeout != 200*time.Millisecond || o.Attempts != 2 {
		t.Fatalf("defaults = %+v, %v", o, err)
	}
	o, err = Options{Timeout: time.Second, Attempts: 5}.withDefaults()
	if err != nil || o.Timeout != time.Second || o.Attempts != 5 {
		t.Fatalf("explicit = %+v, %v", o, err)
	}
	for _, bad := range []Options{{Timeout: -1}, {Attempts: -1}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// Invalid arguments are rejected before any namespace is touched, so this
// runs without privileges.
func TestProbeRejectsBadAddress(t *testing.T) {
	for _, a := range []netip.Addr{{}, netip.MustParseAddr("::ffff:10.0.0.1")} {
		if _, err := Probe("/nonexistent", "eth0", a, Options{}); err == nil {
			t.Errorf("Probe(%v) = nil error", a)
		}
	}
}

// The parsers see whatever arrives on the segment, so they must never panic.
func FuzzParsers(f *testing.F) {
	f.Add(buildARPProbe(otherMAC, netip.MustParseAddr("10.1.2.3")))
	f.Add(arpFrame(otherMAC, arpOpReply, otherMAC, "10.1.2.3", "0.0.0.0"))
	f.Add(buildDADProbe(otherMAC, netip.MustParseAddr("fd00::5")))
	f.Add(ndFrame(otherMAC, icmpv6NA, "fd00::5", "ff02::1", "fd00::5", 255, llOpt(2, otherMAC)))
	f.Fuzz(func(t *testing.T, frame []byte) {
		parseARPConflict(frame, ownMAC, netip.MustParseAddr("10.1.2.3"))
		parseNDConflict(frame, ownMAC, netip.MustParseAddr("fd00::5"))
	})
}

func TestSchedule(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		opts      Options
		freshlyUp bool
		want      []time.Duration
	}{
		{Options{Timeout: 200 * ms, Attempts: 2}, false, []time.Duration{0, 100 * ms}},
		{Options{Timeout: 200 * ms, Attempts: 2}, true, []time.Duration{0, linkSettle, 100 * ms}},
		{Options{Timeout: 300 * ms, Attempts: 3}, false, []time.Duration{0, 100 * ms, 200 * ms}},
		{Options{Timeout: 100 * ms, Attempts: 1}, true, []time.Duration{0, linkSettle}},
		{Options{Timeout: 6 * ms, Attempts: 1}, true, []time.Duration{0, 3 * ms}}, // settle capped at half the spacing
	}
	for _, tc := range tests {
		got := schedule(tc.opts, tc.freshlyUp)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("schedule(%+v, %v) = %v, want %v", tc.opts, tc.freshlyUp, got, tc.want)
		}
	}
}

func TestAnnouncementFrames(t *testing.T) {
	mac := net.HardwareAddr{0x0a, 1, 2, 3, 4, 5}
	v4 := netip.MustParseAddr("10.1.2.3")
	arp := buildARPAnnouncement(mac, v4)
	// Sender IP and target IP are both the announced address.
	if !bytes.Equal(arp[ethHeaderLen+14:ethHeaderLen+18], v4.AsSlice()) || !bytes.Equal(arp[ethHeaderLen+24:ethHeaderLen+28], v4.AsSlice()) {
		t.Fatalf("ARP announcement % x", arp)
	}
	v6 := netip.MustParseAddr("fd00::7")
	na := buildUnsolicitedNA(mac, v6)
	ip := na[ethHeaderLen:]
	msg := ip[ipv6HeaderLen:]
	if msg[0] != icmpv6NA || msg[4]&ndFlagOverride == 0 || !bytes.Equal(msg[8:24], v6.AsSlice()) || !bytes.Equal(msg[26:32], mac) {
		t.Fatalf("NA % x", msg)
	}
	// The checksum over pseudo-header + message verifies to zero.
	if c := icmpv6Checksum([16]byte(ip[8:24]), [16]byte(ip[24:40]), msg); c != 0 {
		t.Fatalf("NA checksum does not verify: %#x", c)
	}
}
