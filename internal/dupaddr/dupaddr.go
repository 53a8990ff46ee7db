// Package dupaddr detects duplicate addresses on a link before they are used
// (RFC 5227 ARP probes, RFC 4862 DAD).
//
// An IPAM plugin hands out addresses from its own bookkeeping, but that
// bookkeeping cannot see hosts it does not manage (a statically configured
// server, a stale lease held by a node that was reinstalled, another IPAM
// instance with an overlapping range). Handing such an address to a pod
// silently breaks both parties, so before committing to a candidate we ask
// the L2 segment itself, from inside the pod's network namespace and on the
// pod's interface, whether somebody already answers for it.
//
// The frames are built by hand and sent over an AF_PACKET socket rather than
// asking the kernel (arping, ndisc) because the pod interface normally has no
// address configured yet, and because configuring the candidate just to let
// the kernel run DAD would already announce it on the segment.
package dupaddr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Defaults applied when the corresponding Options field is zero. They are
// deliberately far shorter than the RFC 5227 timings (1-2 s of random delay
// plus 3 probes): the probe runs synchronously inside a CNI ADD, which the
// runtime times out, and on a LAN any live host answers within milliseconds.
const (
	DefaultTimeout  = 200 * time.Millisecond
	DefaultAttempts = 2
)

// Options tunes a probe. The zero value is ready to use.
type Options struct {
	Timeout  time.Duration // total time to wait for an answer; default 200ms when zero
	Attempts int           // probes sent, spread evenly over Timeout; default 2 when zero
}

// Result reports what the segment said about the probed address.
type Result struct {
	// InUse is true when another host claimed the address (it answered the
	// probe, or it was probing for the same address at the same time, which
	// both RFCs also treat as a conflict).
	InUse bool
	// Holder is the MAC of the host that answered, when InUse; it is what an
	// operator needs to track the other host down.
	Holder net.HardwareAddr
}

// ErrNoInterface is returned (wrapped) by Probe when the interface does not
// exist in the given namespace. It is a distinct error because some callers
// invoke IPAM before the main plugin creates the interface; they skip the
// probe rather than failing the whole ADD.
var ErrNoInterface = errors.New("interface not found in network namespace")

// withDefaults fills in zero fields and rejects nonsense values, so the probe
// loop never divides by zero or waits a negative time.
func (o Options) withDefaults() (Options, error) {
	if o.Timeout < 0 {
		return o, fmt.Errorf("dupaddr: negative timeout %v", o.Timeout)
	}
	if o.Attempts < 0 {
		return o, fmt.Errorf("dupaddr: negative attempts %d", o.Attempts)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Attempts == 0 {
		o.Attempts = DefaultAttempts
	}
	return o, nil
}

// checkAddr rejects addresses that can never be assigned to a pod interface,
// so that we do not put pointless (or misleading) probes on the wire.
func checkAddr(addr netip.Addr) error {
	switch {
	case !addr.IsValid():
		return errors.New("dupaddr: invalid address")
	case addr.Is4In6():
		// The frame type (ARP vs NDP) follows the address family; a mapped
		// address is ambiguous, so make the caller say what it means.
		return fmt.Errorf("dupaddr: %s is an IPv4-mapped IPv6 address; pass the IPv4 form", addr)
	case addr.IsUnspecified(), addr.IsMulticast(), addr.IsLoopback():
		return fmt.Errorf("dupaddr: %s is not a unicast address that can be probed", addr)
	case addr.Is4() && addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("dupaddr: %s is the broadcast address", addr)
	}
	return nil
}

// linkSettle is when the extra probe goes out on a freshly raised link. It
// is a cheap second chance for far ends Probe cannot observe (for a veth it
// waits for the peer instead). For scale: an unobserved veth peer lagged by
// under 200µs normally, but by up to ~45ms while rtnl was busy with other
// namespaces, which the regular Attempts spacing then has to cover.
const linkSettle = 5 * time.Millisecond

// schedule returns when each probe is sent, as offsets from the start of the
// listening window: opts.Attempts probes spread evenly over opts.Timeout and,
// if the link has just come up, one more at linkSettle (or half the spacing
// if that is sooner) so that a first probe whose answer died at a not yet
// activated far end does not turn into a false "free".
func schedule(opts Options, freshlyUp bool) []time.Duration {
	interval := opts.Timeout / time.Duration(opts.Attempts)
	at := make([]time.Duration, 0, opts.Attempts+1)
	for i := range opts.Attempts {
		at = append(at, time.Duration(i)*interval)
	}
	if freshlyUp {
		// settle <= interval/2 < interval, so inserting after the first
		// probe keeps the offsets sorted and inside the window.
		at = append(at[:1], append([]time.Duration{min(linkSettle, interval/2)}, at[1:]...)...)
	}
	return at
}
