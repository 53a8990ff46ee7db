package dupaddr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Probe enters the network namespace at netnsPath, finds ifName, and probes
// addr (IPv4 or IPv6, not IPv4-mapped): an RFC 5227 ARP Probe for IPv4, an
// RFC 4862 DAD Neighbor Solicitation for IPv6. Options.Attempts probes are
// sent, evenly spread over Options.Timeout, and the first answer from a MAC
// other than the interface's own ends the probe early with InUse set.
//
// The namespace is entered with ns.GetNS/NetNS.Do, which runs the work on a
// locked OS thread and restores (or retires) the thread afterwards, so the
// calling goroutine's namespace is never disturbed.
//
// If the link is administratively down it is brought up for the probe and
// put back down afterwards: macvlan/bridge-style plugins call IPAM before
// they bring the link up, and a down link neither sends nor receives. After
// bringing it up (or if it is up without carrier) Probe waits, for at most
// Timeout, until the kernel reports the link operationally up, because until
// then transmitted frames are silently dropped (the kernel only attaches a
// working qdisc once it has seen the carrier). A link that does not get there
// in time is an error, since a probe over it would prove nothing. Worst case
// Probe therefore takes about twice Timeout.
//
// A link that just came up also has a far end that just came up. For a veth
// Probe also waits for the peer (read-only, via its netnsid; see waitReady),
// because until the kernel activates the peer's queue it drops the owner's
// answer. Other far ends (the switch behind a macvlan's master) cannot be
// observed, so on a freshly raised link one extra probe goes out shortly
// after the first as well (see schedule).
//
// Probe returns an error wrapping ErrNoInterface when ifName is absent, and
// errors naming the namespace and interface otherwise, including for links
// without an Ethernet MAC (loopback, tun, ipip, ...), which cannot carry ARP
// or NDP probes. If restoring the link to down fails, the probe's Result is
// still returned together with the error.
func Probe(netnsPath, ifName string, addr netip.Addr, opts Options) (Result, error) {
	res, err := ProbeAll(netnsPath, ifName, []netip.Addr{addr}, opts)
	if len(res) == 0 {
		return Result{}, err
	}
	return res[0], err
}

// ProbeAll is Probe for several addresses (a dual-stack pod's IPv4 and IPv6
// candidates) at once: the link is prepared once and the probes run
// concurrently, so the whole call takes one Timeout, not one per address.
// Results are in the order of addrs.
func ProbeAll(netnsPath, ifName string, addrs []netip.Addr, opts Options) ([]Result, error) {
	for i, addr := range addrs {
		addrs[i] = addr.WithZone("") // the zone is implied by ifName
		if err := checkAddr(addrs[i]); err != nil {
			return nil, err
		}
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if ifName == "" {
		return nil, errors.New("dupaddr: empty interface name")
	}
	netns, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("dupaddr: open netns %q: %w", netnsPath, err)
	}
	defer netns.Close()

	var res []Result
	err = netns.Do(func(ns.NetNS) error {
		var err error
		res, err = probeCurrentNS(ifName, addrs, opts)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("dupaddr: probe %v on %q in netns %q: %w", addrs, ifName, netnsPath, err)
	}
	return res, nil
}

// probeCurrentNS does the work of ProbeAll inside the target namespace.
// Every netlink request and packet socket is created here, so they belong to
// that namespace; the exchanges then run on goroutines, which is fine
// because a socket stays in the namespace it was created in whatever thread
// uses it.
func probeCurrentNS(ifName string, addrs []netip.Addr, opts Options) (res []Result, err error) {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, ErrNoInterface
		}
		return nil, fmt.Errorf("look up link: %w", err)
	}
	attrs := link.Attrs()
	mac := attrs.HardwareAddr
	if attrs.EncapType != "ether" || len(mac) != 6 || isZeroMAC(mac) {
		return nil, fmt.Errorf("link type %s (encap %q) has no Ethernet MAC address, so ARP/NDP probes cannot be sent on it",
			link.Type(), attrs.EncapType)
	}

	freshlyUp := attrs.Flags&net.FlagUp == 0
	if freshlyUp {
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("bring link up for the probe: %w", err)
		}
		defer func() {
			if derr := netlink.LinkSetDown(link); derr != nil {
				err = errors.Join(err, fmt.Errorf("put link back down after the probe: %w", derr))
			}
		}()
	}
	waited, err := waitReady(link, opts.Timeout)
	if err != nil {
		return nil, err
	}
	sendAt := schedule(opts, freshlyUp || waited)

	exchanges := make([]func() (Result, error), len(addrs))
	for i, addr := range addrs {
		x, err := newExchange(attrs.Index, mac, addr)
		if err != nil {
			return nil, err // the sockets opened so far are closed by their defers
		}
		defer unix.Close(x.fd)
		exchanges[i] = func() (Result, error) { return x.run(sendAt, opts.Timeout) }
	}
	res = make([]Result, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, run := range exchanges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = run()
		}()
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

// exchange is one address's probe: its socket, frame and reply matcher.
type exchange struct {
	fd      int
	ifindex int
	proto   uint16
	frame   []byte
	match   func([]byte) (net.HardwareAddr, bool)
}

func newExchange(ifindex int, mac net.HardwareAddr, addr netip.Addr) (*exchange, error) {
	x := &exchange{ifindex: ifindex}
	var groups []net.HardwareAddr
	if addr.Is4() {
		x.proto, x.frame = etherTypeARP, buildARPProbe(mac, addr)
		x.match = func(f []byte) (net.HardwareAddr, bool) { return parseARPConflict(f, mac, addr) }
	} else {
		// Defenders answer a DAD probe at ff02::1, and a concurrent prober
		// sends to the candidate's solicited-node group. Subscribe to both
		// so NICs with multicast filters pass them even when IPv6 is
		// disabled on the link.
		groups = []net.HardwareAddr{allNodesMAC, ipv6MulticastMAC(solicitedNode(addr))}
		x.proto, x.frame = etherTypeIPv6, buildDADProbe(mac, addr)
		x.match = func(f []byte) (net.HardwareAddr, bool) { return parseNDConflict(f, mac, addr) }
	}
	fd, err := openPacketSocket(ifindex, x.proto, groups)
	if err != nil {
		return nil, err
	}
	x.fd = fd
	return x, nil
}

func isZeroMAC(mac net.HardwareAddr) bool {
	for _, b := range mac {
		if b != 0 {
			return false
		}
	}
	return true
}

// waitReady waits, for at most budget, until the link and, for a veth, the
// peer at its far end can carry traffic, and reports whether it had to wait
// (something was not ready on entry).
//
// Both halves matter. Until the kernel has seen a link's carrier its qdisc
// is a no-op that silently drops every frame (QDISC_DROP, no error on send).
// Our own end is activated synchronously when it is opened, but bringing a
// veth up also raises the carrier of its peer, and the peer's qdisc is only
// activated when the link watcher gets to it: normally tens of microseconds
// later, but tens of milliseconds when rtnl is contended (namespace churn on
// a busy node). An owner sitting behind the peer (bridge CNI) answers
// immediately, and that answer is dropped at the peer, so without this wait
// a freshly raised veth reports a taken address as free.
func waitReady(link netlink.Link, budget time.Duration) (waited bool, err error) {
	deadline := time.Now().Add(budget)
	a := link.Attrs()
	waited, err = pollUntilUp(deadline, budget, func() (netlink.Link, error) {
		return netlink.LinkByIndex(a.Index)
	})
	if err != nil {
		return waited, fmt.Errorf("link: %w", err)
	}
	if link.Type() != "veth" || a.ParentIndex == 0 {
		return waited, nil
	}
	// Reading the peer is also what makes it ready fast: on recent kernels
	// (observed on 6.18) RTM_GETLINK synchronises the queried device's
	// pending link-watch event, which activates its qdisc on the spot; on
	// older ones we simply poll until the link watcher has run.
	if _, err := vethPeer(a); err != nil {
		// Cannot see the peer (kernel without IFLA_TARGET_NETNSID, peer
		// namespace gone, ...): this wait only makes a conflict show up
		// sooner than the probe schedule would, so carry on without it.
		return waited, nil
	}
	peerWaited, err := pollUntilUp(deadline, budget, func() (netlink.Link, error) { return vethPeer(a) })
	if err != nil {
		return true, fmt.Errorf("veth peer (ifindex %d, netnsid %d): %w", a.ParentIndex, a.NetNsID, err)
	}
	return waited || peerWaited, nil
}

// pollUntilUp polls get until the link it returns is operationally up or the
// deadline passes. Polling (rather than a netlink subscription) keeps this
// free of goroutines that would have to be tied to the namespace-locked
// thread, and the link never takes long when it is going to come up at all.
func pollUntilUp(deadline time.Time, budget time.Duration, get func() (netlink.Link, error)) (waited bool, err error) {
	backoff := 100 * time.Microsecond
	for first := true; ; first = false {
		link, err := get()
		if err != nil {
			return !first, fmt.Errorf("read link state: %w", err)
		}
		a := link.Attrs()
		// UNKNOWN is what drivers without operstate support report; they keep
		// the carrier flag set, so also require LOWER_UP there.
		if a.OperState == netlink.OperUp ||
			(a.OperState == netlink.OperUnknown && a.RawFlags&unix.IFF_LOWER_UP != 0) {
			return !first, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return true, fmt.Errorf("not ready for traffic within %v (operstate %s)", budget, a.OperState)
		}
		time.Sleep(min(backoff, left))
		backoff = min(2*backoff, 10*time.Millisecond)
	}
}

// vethPeer reads the other end of the veth described by a, which usually
// lives in another namespace (the host's), using IFLA_TARGET_NETNSID so that
// we need not enter that namespace. It only reads link state.
func vethPeer(a *netlink.LinkAttrs) (netlink.Link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(a.ParentIndex)
	req.AddData(msg)
	if a.NetNsID >= 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(a.NetNsID))))
	}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("RTM_GETLINK returned %d messages", len(msgs))
	}
	peer, err := netlink.LinkDeserialize(nil, msgs[0])
	if err != nil {
		return nil, err
	}
	// A kernel that ignores IFLA_TARGET_NETNSID answers with whatever has
	// that index in our own namespace; only a device that points back at
	// us is really our peer.
	if peer.Attrs().ParentIndex != a.Index {
		return nil, errors.New("device at the peer index is not our veth peer")
	}
	return peer, nil
}

// htons converts to network byte order, as AF_PACKET expects protocol numbers.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openPacketSocket returns a non-blocking AF_PACKET raw socket that receives
// only etherType frames on ifindex. It is created with protocol 0 and only
// then bound, because a socket created with a protocol starts queueing
// frames from every interface of the namespace before bind narrows it.
func openPacketSocket(ifindex int, etherType uint16, groups []net.HardwareAddr) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("open AF_PACKET socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind AF_PACKET socket: %w", err)
	}
	for _, g := range groups {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_MULTICAST, Alen: uint16(len(g))}
		copy(mreq.Address[:], g)
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("join Ethernet group %s: %w", g, err)
		}
	}
	return fd, nil
}

// run sends the probe frame at the offsets in sendAt and, until timeout has
// elapsed, feeds every received frame to the matcher. The socket is non-blocking and every
// wait goes through poll(2) with the time left, so nothing here can block
// past the deadline.
func (x *exchange) run(sendAt []time.Duration, timeout time.Duration) (Result, error) {
	fd, frame, match := x.fd, x.frame, x.match
	dst := &unix.SockaddrLinklayer{
		Protocol: htons(x.proto),
		Ifindex:  x.ifindex,
		Halen:    6,
	}
	copy(dst.Addr[:], frame[0:6])

	start := time.Now()
	deadline := start.Add(timeout)
	buf := make([]byte, 2048) // ARP/ND frames are small; longer frames are truncated harmlessly
	sent := 0
	for {
		now := time.Now()
		if sent < len(sendAt) && !now.Before(start.Add(sendAt[sent])) {
			if err := sendFrame(fd, frame, dst); err != nil {
				return Result{}, fmt.Errorf("send probe %d/%d: %w", sent+1, len(sendAt), err)
			}
			sent++
			continue
		}
		wake := deadline
		if sent < len(sendAt) {
			wake = start.Add(sendAt[sent])
		}
		expired := !now.Before(deadline)
		wait := wake.Sub(now)
		if expired {
			wait = 0 // one last non-blocking look at what already arrived
		}
		readable, err := pollReadable(fd, wait)
		if err != nil {
			return Result{}, err
		}
		if readable {
			if holder, found, err := drain(fd, buf, match); err != nil || found {
				return Result{InUse: found, Holder: holder}, err
			}
		}
		if expired {
			return Result{}, nil
		}
	}
}

func sendFrame(fd int, frame []byte, dst *unix.SockaddrLinklayer) error {
	for {
		err := unix.Sendto(fd, frame, 0, dst)
		if err != unix.EINTR {
			return err
		}
	}
}

// pollReadable waits up to d for fd to become readable. The timeout is
// rounded up to whole milliseconds so a sub-millisecond remainder does not
// turn into a busy loop of zero-timeout polls.
func pollReadable(fd int, d time.Duration) (bool, error) {
	ms := int((d + time.Millisecond - 1) / time.Millisecond)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			// The Go runtime preempts with signals; just retry. The caller
			// re-checks the clock, so at worst we wait one extra slice.
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll AF_PACKET socket: %w", err)
		}
		if n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return false, fmt.Errorf("AF_PACKET socket error (revents %#x)", fds[0].Revents)
		}
		return n > 0, nil
	}
}

// drain reads every queued frame without blocking and returns the first
// conflict. Frames the kernel marks as outgoing are our own transmissions
// looped back to the tap (including the kernel's own RS/MLD/DAD traffic when
// the link was just brought up) and are skipped before parsing.
func drain(fd int, buf []byte, match func([]byte) (net.HardwareAddr, bool)) (net.HardwareAddr, bool, error) {
	for {
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return nil, false, nil
		case err != nil:
			return nil, false, fmt.Errorf("read AF_PACKET socket: %w", err)
		}
		if sll, ok := from.(*unix.SockaddrLinklayer); ok && sll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if holder, ok := match(buf[:min(n, len(buf))]); ok {
			return holder, true, nil
		}
	}
}
