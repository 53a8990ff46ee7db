package pinset

import "net/netip"

// Address families of map keys and values (WARP_FAMILY_* in pinset.h).
const (
	FamilyV4 = 4
	FamilyV6 = 6
)

// EncodeAddr encodes a as the programs compare addresses (pinset.h): an
// IPv4 address (IPv4-mapped ones included) is its 4 bytes followed by 12
// zero bytes with family 4, an IPv6 address its 16 bytes with family 6.
func EncodeAddr(a netip.Addr) (addr [16]byte, family uint8) {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		copy(addr[:], b[:])
		return addr, FamilyV4
	}
	return a.As16(), FamilyV6
}

// DecodeAddr is the inverse of EncodeAddr.
func DecodeAddr(addr [16]byte, family uint8) netip.Addr {
	if family == FamilyV4 {
		return netip.AddrFrom4([4]byte(addr[:4]))
	}
	return netip.AddrFrom16(addr)
}
