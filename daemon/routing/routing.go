// Package routing makes every other node's pod CIDRs reachable from this
// node, so that pods on all nodes reach each other with nothing wired by
// hand. warpd feeds it the cluster's Node objects (name, InternalIPs,
// spec.podCIDRs) and it programs, in the network namespace of the calling
// thread (the node's):
//
//   - native routing, for a peer whose address is on a directly connected
//     subnet: `podCIDR via <peer IP>` (host-gw style, no encapsulation: the
//     fastest path);
//   - a VXLAN tunnel otherwise (or always, in vxlan mode): one device,
//     warp-vxlan, with per-peer state and no multicast or learning:
//     `podCIDR via <gw> dev warp-vxlan onlink`, a permanent neighbour
//     <gw> → the peer's VTEP MAC, and an FDB entry VTEP MAC → peer IP.
//     <gw> is the first address of the peer's pod CIDR (it only keys the
//     neighbour entry) and VTEP MACs are derived from node names, so no node
//     needs to publish anything but its Node object.
//
// Everything it creates is marked: routes carry RouteProtocol, and the
// tunnel device is its own. A sync lists what exists, keeps what is right,
// and removes only what is stale, so a restarted warpd adopts its earlier
// state without a gap; routes of other software (other protocol numbers,
// other tables) are never touched.
package routing

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Mode is how peers are reached.
type Mode string

// The routing modes (warpd's --routing).
const (
	// Native routes every peer directly; peers must share an L2 subnet.
	Native Mode = "native"
	// VXLAN encapsulates to every peer.
	VXLAN Mode = "vxlan"
	// Auto routes natively where the peer shares a subnet, and
	// encapsulates otherwise: mixed clusters work.
	Auto Mode = "auto"
)

// ParseMode accepts native, vxlan and auto.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Native, VXLAN, Auto:
		return m, nil
	}
	return "", fmt.Errorf("routing mode %q: want native, vxlan or auto", s)
}

// RouteProtocol marks warpnet's routes (rtm_protocol; `ip route show proto
// 119`), so that warpd finds and removes only its own.
const RouteProtocol netlink.RouteProtocol = 119

// DefaultDevice, DefaultVNI and DefaultPort describe the tunnel device. 8472
// is Linux's default VXLAN port (as flannel and Cilium use); the VNI only
// has to be the same on every node.
const (
	DefaultDevice = "warp-vxlan"
	DefaultVNI    = 1
	DefaultPort   = 8472
)

// Overhead of VXLAN over an IPv4 (IPv6) underlay: outer IP, UDP, VXLAN and
// the inner Ethernet header.
const (
	overheadV4 = 20 + 8 + 8 + 14
	overheadV6 = 40 + 8 + 8 + 14
)

// Node is what routing needs of a Node object.
type Node struct {
	Name string
	// Addrs are the node's InternalIPs (ExternalIPs if it has none), in the
	// order the Node lists them.
	Addrs    []netip.Addr
	PodCIDRs []netip.Prefix
}

// Config says how this node reaches the others.
type Config struct {
	Mode   Mode
	Self   string // this node's name
	Device string // tunnel device (DefaultDevice)
	VNI    int    // (DefaultVNI)
	Port   int    // UDP port (DefaultPort)
}

// Peer is how one other node is reached, for logs and warpctl.
type Peer struct {
	Name     string
	Via      netip.Addr // the peer address used
	Tunnel   bool       // encapsulated (else native)
	PodCIDRs []netip.Prefix
	Problem  string // why (part of) the peer is unreachable, "" if none
}

// Status is the outcome of a sync.
type Status struct {
	Peers []Peer
	// MTU is the largest pod MTU every peer can carry: the uplink's MTU,
	// less the tunnel overhead unless the mode is native. 0 if this node
	// has no usable uplink yet.
	MTU int
	// Self is this node as the sync saw it (pod CIDRs for the plugins).
	Self Node
	// Added, Removed count route, neighbour and FDB changes.
	Added, Removed int
}

// Manager programs the routes. Not safe for concurrent Syncs.
type Manager struct {
	cfg Config
}

// New checks cfg and fills defaults.
func New(cfg Config) (*Manager, error) {
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	if cfg.Self == "" {
		return nil, errors.New("routing: this node's name is not set")
	}
	if cfg.Device == "" {
		cfg.Device = DefaultDevice
	}
	if cfg.VNI == 0 {
		cfg.VNI = DefaultVNI
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.VNI < 1 || cfg.VNI > 1<<24-1 {
		return nil, fmt.Errorf("routing: VNI %d: want 1 to %d", cfg.VNI, 1<<24-1)
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("routing: port %d: want 1 to 65535", cfg.Port)
	}
	return &Manager{cfg: cfg}, nil
}

// VTEPMAC is the tunnel MAC of a node: derived from its name, locally
// administered, so every node computes every other's without asking.
func VTEPMAC(node string) net.HardwareAddr {
	h := sha256.Sum256([]byte("warpnet-vtep/" + node))
	return net.HardwareAddr{0x0a, h[0], h[1], h[2], h[3], h[4]}
}

// uplink is a local address with the link it sits on.
type uplink struct {
	addr   netip.Addr
	prefix netip.Prefix
	link   netlink.Link
}

// wantRoute is one route of the desired state, keyed by destination.
type wantRoute struct {
	dst    netip.Prefix
	gw     netip.Addr
	tunnel bool
}

// plan is the desired state of one sync.
type plan struct {
	routes map[netip.Prefix]wantRoute
	neighs map[netip.Addr]net.HardwareAddr // on the tunnel device
	fdb    map[string]netip.Addr           // VTEP MAC → peer underlay address
}

// Sync brings the node's routes, tunnel device, neighbour and FDB entries
// to what nodes require. A peer that cannot be reached (no address, native
// mode across subnets) is reported in its Peer.Problem and skipped; the
// others are programmed regardless. The error joins what could not be done.
func (m *Manager) Sync(nodes []Node) (Status, error) {
	var st Status
	ups, err := uplinks(m.cfg.Device)
	if err != nil {
		return st, err
	}
	var self *Node
	for i := range nodes {
		if nodes[i].Name == m.cfg.Self {
			self = &nodes[i]
		}
	}
	if self != nil {
		st.Self = *self
	}
	// The tunnel's local end: this node's first InternalIP that is
	// configured here (else any global address), IPv4 preferred.
	local := pickLocal(self, ups)

	p := plan{routes: map[netip.Prefix]wantRoute{}, neighs: map[netip.Addr]net.HardwareAddr{}, fdb: map[string]netip.Addr{}}
	sorted := slices.Clone(nodes)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, n := range sorted {
		if n.Name == m.cfg.Self || len(n.PodCIDRs) == 0 {
			continue
		}
		st.Peers = append(st.Peers, m.planPeer(&p, n, ups, local))
	}

	// The tunnel device exists while some peer needs it.
	needTunnel := false
	for _, r := range p.routes {
		needTunnel = needTunnel || r.tunnel
	}
	var errs []error
	var dev netlink.Link
	if needTunnel {
		if dev, err = m.ensureDevice(local); err != nil {
			errs = append(errs, err)
		}
	} else if err := m.removeDevice(); err != nil {
		errs = append(errs, err)
	}
	if local.link != nil {
		st.MTU = local.link.Attrs().MTU
		if m.cfg.Mode != Native {
			st.MTU -= overhead(local.addr)
		}
	}
	if dev == nil {
		// Without the device no tunnel route can exist.
		for dst, r := range p.routes {
			if r.tunnel {
				delete(p.routes, dst)
			}
		}
		p.neighs, p.fdb = nil, nil
	} else {
		a, r, err := m.syncTunnelEntries(dev, p)
		st.Added, st.Removed = st.Added+a, st.Removed+r
		errs = append(errs, err)
	}
	a, r, err := syncRoutes(dev, p.routes)
	st.Added, st.Removed = st.Added+a, st.Removed+r
	errs = append(errs, err)
	return st, errors.Join(errs...)
}

func overhead(underlay netip.Addr) int {
	if underlay.Is4() {
		return overheadV4
	}
	return overheadV6
}

// planPeer adds what reaching n takes to p.
func (m *Manager) planPeer(p *plan, n Node, ups []uplink, local uplink) Peer {
	peer := Peer{Name: n.Name, PodCIDRs: n.PodCIDRs}
	var problems []string
	for _, cidr := range n.PodCIDRs {
		cidr = cidr.Masked()
		// Native: a peer address of the pod CIDR's family on a directly
		// connected subnet.
		if m.cfg.Mode != VXLAN {
			if via, ok := directPeer(n.Addrs, cidr.Addr().Is4(), ups); ok {
				p.routes[cidr] = wantRoute{dst: cidr, gw: via}
				if !peer.Via.IsValid() {
					peer.Via = via
				}
				continue
			}
			if m.cfg.Mode == Native {
				problems = append(problems, fmt.Sprintf("%s: no address of the peer is on a directly connected subnet (use --routing auto or vxlan)", cidr))
				continue
			}
		}
		// Tunnel: any peer address of the underlay's family.
		if local.link == nil {
			problems = append(problems, fmt.Sprintf("%s: this node has no address for the tunnel", cidr))
			continue
		}
		dst, ok := firstOfFamily(n.Addrs, local.addr.Is4())
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: the peer has no %s address for the tunnel", cidr, familyName(local.addr)))
			continue
		}
		mac := VTEPMAC(n.Name)
		gw := cidr.Addr()
		p.routes[cidr] = wantRoute{dst: cidr, gw: gw, tunnel: true}
		p.neighs[gw] = mac
		p.fdb[mac.String()] = dst
		peer.Tunnel = true
		if !peer.Via.IsValid() || !peer.Via.Is4() == dst.Is4() {
			peer.Via = dst
		}
	}
	peer.Problem = strings.Join(problems, "; ")
	return peer
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func firstOfFamily(addrs []netip.Addr, v4 bool) (netip.Addr, bool) {
	for _, a := range addrs {
		if a.Unmap().Is4() == v4 {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// directPeer returns the first of addrs (of the family) inside a subnet of
// a local address: the peer is one hop away on that link.
func directPeer(addrs []netip.Addr, v4 bool, ups []uplink) (netip.Addr, bool) {
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() != v4 {
			continue
		}
		for _, u := range ups {
			if u.prefix.Bits() < u.addr.BitLen() && u.prefix.Contains(a) && u.addr != a {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// uplinks lists the global unicast addresses of the namespace with their
// links, except those on the tunnel device.
func uplinks(device string) ([]uplink, error) {
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("routing: list addresses: %w", err)
	}
	links := map[int]netlink.Link{}
	var out []uplink
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !ip.Unmap().IsGlobalUnicast() {
			continue
		}
		ip = ip.Unmap()
		l, ok := links[a.LinkIndex]
		if !ok {
			if l, err = netlink.LinkByIndex(a.LinkIndex); err != nil {
				continue // gone meanwhile
			}
			links[a.LinkIndex] = l
		}
		if l.Attrs().Name == device {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, uplink{addr: ip, prefix: netip.PrefixFrom(ip, ones).Masked(), link: l})
	}
	return out, nil
}

// pickLocal chooses the tunnel's local address: the first of self's
// addresses that is configured here, IPv4 first; else the first local
// global address, IPv4 first.
func pickLocal(self *Node, ups []uplink) uplink {
	for _, v4 := range []bool{true, false} {
		if self != nil {
			for _, a := range self.Addrs {
				for _, u := range ups {
					if u.addr == a.Unmap() && a.Unmap().Is4() == v4 {
						return u
					}
				}
			}
		}
	}
	for _, v4 := range []bool{true, false} {
		for _, u := range ups {
			if u.addr.Is4() == v4 {
				return u
			}
		}
	}
	return uplink{}
}

// ensureDevice creates the tunnel device, or re-creates it if its settings
// differ from what the config and local end want, and brings it up.
func (m *Manager) ensureDevice(local uplink) (netlink.Link, error) {
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: m.cfg.Device, HardwareAddr: VTEPMAC(m.cfg.Self),
			MTU: local.link.Attrs().MTU - overhead(local.addr)},
		VxlanId:      m.cfg.VNI,
		VtepDevIndex: local.link.Attrs().Index,
		SrcAddr:      net.IP(local.addr.AsSlice()),
		Port:         m.cfg.Port,
		Learning:     false,
	}
	cur, err := netlinksafe.LinkByName(m.cfg.Device)
	if err == nil {
		vx, ok := cur.(*netlink.Vxlan)
		if ok && vx.VxlanId == want.VxlanId && vx.Port == want.Port && vx.VtepDevIndex == want.VtepDevIndex &&
			vx.SrcAddr.Equal(want.SrcAddr) && !vx.Learning {
			if vx.Attrs().MTU != want.MTU {
				if err := netlink.LinkSetMTU(cur, want.MTU); err != nil {
					return nil, fmt.Errorf("routing: set MTU of %s: %w", m.cfg.Device, err)
				}
			}
			if vx.Attrs().HardwareAddr.String() != want.HardwareAddr.String() {
				if err := netlink.LinkSetHardwareAddr(cur, want.HardwareAddr); err != nil {
					return nil, fmt.Errorf("routing: set MAC of %s: %w", m.cfg.Device, err)
				}
			}
			if cur.Attrs().Flags&net.FlagUp == 0 {
				if err := netlink.LinkSetUp(cur); err != nil {
					return nil, fmt.Errorf("routing: bring %s up: %w", m.cfg.Device, err)
				}
			}
			return cur, nil
		}
		if err := netlink.LinkDel(cur); err != nil {
			return nil, fmt.Errorf("routing: replace %s: %w", m.cfg.Device, err)
		}
	} else if _, ok := err.(netlink.LinkNotFoundError); !ok {
		return nil, fmt.Errorf("routing: %s: %w", m.cfg.Device, err)
	}
	if err := netlink.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("routing: create %s (VNI %d, port %d, local %s): %w", m.cfg.Device, m.cfg.VNI, m.cfg.Port, local.addr, err)
	}
	dev, err := netlinksafe.LinkByName(m.cfg.Device)
	if err == nil {
		err = netlink.LinkSetUp(dev)
	}
	if err != nil {
		return nil, fmt.Errorf("routing: bring %s up: %w", m.cfg.Device, err)
	}
	return dev, nil
}

// removeDevice deletes the tunnel device (native mode); its routes,
// neighbours and FDB entries go with it.
func (m *Manager) removeDevice() error {
	dev, err := netlinksafe.LinkByName(m.cfg.Device)
	if err != nil {
		return nil
	}
	if dev.Type() != "vxlan" {
		return fmt.Errorf("routing: %s exists but is a %s, not warpnet's tunnel; rename it or pick another --vxlan-device", m.cfg.Device, dev.Type())
	}
	if err := netlink.LinkDel(dev); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("routing: delete %s: %w", m.cfg.Device, err)
	}
	return nil
}

// syncTunnelEntries makes the device's neighbours and FDB entries exactly
// p's.
func (m *Manager) syncTunnelEntries(dev netlink.Link, p plan) (added, removed int, err error) {
	idx := dev.Attrs().Index
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		cur, err := neighList(idx, fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("routing: list neighbours of %s: %w", m.cfg.Device, err))
			continue
		}
		for _, n := range cur {
			ip, _ := netip.AddrFromSlice(n.IP)
			if want, ok := p.neighs[ip.Unmap()]; ok && n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == want.String() {
				delete(p.neighs, ip.Unmap()) // already right
				continue
			}
			if n.State&netlink.NUD_PERMANENT == 0 {
				continue // the kernel's own (there should be none: no ARP on the device)
			}
			if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("routing: delete neighbour %s: %w", n.IP, err))
			} else {
				removed++
			}
		}
	}
	for ip, mac := range p.neighs {
		n := &netlink.Neigh{LinkIndex: idx, Family: family(ip), State: netlink.NUD_PERMANENT, IP: net.IP(ip.AsSlice()), HardwareAddr: mac}
		if err := netlink.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("routing: neighbour %s → %s: %w", ip, mac, err))
		} else {
			added++
		}
	}
	fdb, err := neighList(idx, unix.AF_BRIDGE)
	if err != nil {
		errs = append(errs, fmt.Errorf("routing: list FDB of %s: %w", m.cfg.Device, err))
		return added, removed, errors.Join(errs...)
	}
	for _, e := range fdb {
		if e.IP == nil {
			continue // the device's own entries
		}
		dst, _ := netip.AddrFromSlice(e.IP)
		if want, ok := p.fdb[e.HardwareAddr.String()]; ok && want == dst.Unmap() {
			delete(p.fdb, e.HardwareAddr.String())
			continue
		}
		if err := netlink.NeighDel(&e); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("routing: delete FDB entry %s: %w", e.HardwareAddr, err))
		} else {
			removed++
		}
	}
	for mac, dst := range p.fdb {
		hw, _ := net.ParseMAC(mac)
		e := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: net.IP(dst.AsSlice()), HardwareAddr: hw}
		if err := netlink.NeighSet(e); err != nil {
			errs = append(errs, fmt.Errorf("routing: FDB %s → %s: %w", mac, dst, err))
		} else {
			added++
		}
	}
	return added, removed, errors.Join(errs...)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// syncRoutes makes the main table's RouteProtocol routes exactly want.
func syncRoutes(dev netlink.Link, want map[netip.Prefix]wantRoute) (added, removed int, err error) {
	var errs []error
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	var cur []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlinksafe.RouteListFiltered(fam, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return 0, 0, fmt.Errorf("routing: list routes: %w", err)
		}
		cur = append(cur, rs...)
	}
	have := map[netip.Prefix]bool{}
	for _, r := range cur {
		if r.Dst == nil {
			continue
		}
		dst, ok := prefixOf(r.Dst)
		w, wanted := want[dst]
		if ok && wanted && routeMatches(r, w, dev) {
			have[dst] = true
			continue
		}
		if ok && wanted {
			continue // replaced below
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("routing: delete route %s: %w", r.Dst, err))
		} else {
			removed++
		}
	}
	dsts := make([]netip.Prefix, 0, len(want))
	for dst := range want {
		dsts = append(dsts, dst)
	}
	slices.SortFunc(dsts, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, dst := range dsts {
		if have[dst] {
			continue
		}
		w := want[dst]
		r := &netlink.Route{Dst: ipNet(dst), Gw: net.IP(w.gw.AsSlice()), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if w.tunnel {
			r.LinkIndex = dev.Attrs().Index
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("routing: route %s via %s: %w", dst, w.gw, err))
		} else {
			added++
		}
	}
	return added, removed, errors.Join(errs...)
}

func routeMatches(r netlink.Route, w wantRoute, dev netlink.Link) bool {
	gw, _ := netip.AddrFromSlice(r.Gw)
	if gw.Unmap() != w.gw {
		return false
	}
	onTunnel := dev != nil && r.LinkIndex == dev.Attrs().Index
	return onTunnel == w.tunnel
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// neighList is netlink.NeighList retried while a concurrent change
// interrupts the dump (netlinksafe has no NeighList).
func neighList(linkIndex, family int) ([]netlink.Neigh, error) {
	for attempt := 0; ; attempt++ {
		ns, err := netlink.NeighList(linkIndex, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == 9 {
			return ns, err
		}
	}
}
