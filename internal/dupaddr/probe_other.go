//go:build !linux

package dupaddr

import (
	"errors"
	"net/netip"
)

// Probe is only implemented on Linux: it needs network namespaces and
// AF_PACKET sockets. Elsewhere it fails so that callers notice rather than
// silently skipping the duplicate check.
func Probe(netnsPath, ifName string, addr netip.Addr, opts Options) (Result, error) {
	return Result{}, errors.New("dupaddr: duplicate address detection is only supported on Linux")
}
