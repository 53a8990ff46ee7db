package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hostPrefix is the route and address length of a pod address in routed
// mode: every pod address is a host route, never an on-link subnet.
func hostPrefix(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

func addrIP(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

// createPair creates the veth pair: the host end, in the current (node)
// namespace, and the pod end, created directly inside the pod namespace
// under its final name, so the name can never clash with a host interface
// and there is no window in which the pod end sits in the host.
func createPair(att Attachment, ifName string, mtu int, podNS ns.NetNS) error {
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: att.HostIfName, MTU: mtu, HardwareAddr: att.HostMAC},
		PeerName:         ifName,
		PeerHardwareAddr: att.PodMAC,
		PeerMTU:          uint32(mtu),
		PeerNamespace:    netlink.NsFd(int(podNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s <-> %s: %w", att.HostIfName, ifName, err)
	}
	return nil
}

// configurePod gives the pod end its addresses (as /32 and /128), brings it
// up, and routes everything via the link-local gateway, which a permanent
// neighbour entry resolves to the host end's MAC. extra are further
// destinations to route the same way (the IPAM result's routes).
func configurePod(ifName string, att Attachment, ips []netip.Addr, extra []*types.Route) (int, error) {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return 0, fmt.Errorf("find %s in the pod: %w", ifName, err)
	}
	for _, ip := range ips {
		addr := &netlink.Addr{IPNet: hostPrefix(ip)}
		if ip.Is6() {
			// The segment is a point-to-point veth to our own host end:
			// DAD cannot find anything and would hold the address back
			// for a second.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return 0, fmt.Errorf("add %s to %s in the pod: %w", ip, ifName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return 0, fmt.Errorf("bring %s up in the pod: %w", ifName, err)
	}
	idx := link.Attrs().Index
	for _, gw := range gateways(ips) {
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family(gw), State: netlink.NUD_PERMANENT,
			IP: addrIP(gw), HardwareAddr: att.HostMAC}); err != nil {
			return 0, fmt.Errorf("add neighbour %s in the pod: %w", gw, err)
		}
		for _, dst := range podRoutes(gw, extra) {
			r := &netlink.Route{LinkIndex: idx, Dst: dst, Gw: addrIP(gw), Flags: int(netlink.FLAG_ONLINK)}
			if err := netlink.RouteReplace(r); err != nil {
				return 0, fmt.Errorf("add route %s via %s in the pod: %w", dst, gw, err)
			}
		}
	}
	return idx, nil
}

// podRoutes is the default route of gw's family plus every extra route of
// that family, without duplicates.
func podRoutes(gw netip.Addr, extra []*types.Route) []*net.IPNet {
	bits := gw.BitLen()
	def := &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)}
	out := []*net.IPNet{def}
	seen := map[string]bool{def.String(): true}
	for _, r := range extra {
		d := r.Dst
		if d.IP == nil || (d.IP.To4() != nil) != gw.Is4() {
			continue
		}
		if !gw.Is4() {
			d.IP = d.IP.To16()
		} else {
			d.IP = d.IP.To4()
		}
		if !seen[d.String()] {
			seen[d.String()] = true
			out = append(out, &net.IPNet{IP: d.IP, Mask: d.Mask})
		}
	}
	return out
}

// gateways returns the gateway of each address family the pod has.
func gateways(ips []netip.Addr) []netip.Addr {
	var gws []netip.Addr
	for _, ip := range ips {
		if gw := gatewayFor(ip); !slices.Contains(gws, gw) {
			gws = append(gws, gw)
		}
	}
	return gws
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// configureHost brings the host end up and routes each pod address to it,
// with a permanent neighbour entry so the host never has to ARP or solicit
// for its own pod. It also enables forwarding in the node namespace, which
// routed pods need for everything but pod-to-node traffic.
func configureHost(att Attachment, ips []netip.Addr) (int, error) {
	link, err := netlinksafe.LinkByName(att.HostIfName)
	if err != nil {
		return 0, fmt.Errorf("find host end %s: %w", att.HostIfName, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return 0, fmt.Errorf("bring %s up: %w", att.HostIfName, err)
	}
	idx := link.Attrs().Index
	for _, ip := range ips {
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family(ip), State: netlink.NUD_PERMANENT,
			IP: addrIP(ip), HardwareAddr: att.PodMAC}); err != nil {
			return 0, fmt.Errorf("add neighbour %s on %s: %w", ip, att.HostIfName, err)
		}
		// RouteAdd, not Replace: an existing route to this address means
		// something else on the node already claims it.
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostPrefix(ip), Scope: netlink.SCOPE_LINK}); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return 0, fmt.Errorf("route to pod address %s: the node already has a route to it (another interface claims it)", ip)
			}
			return 0, fmt.Errorf("add route %s dev %s: %w", ip, att.HostIfName, err)
		}
	}
	return idx, enableForwarding(ips)
}

// enableForwarding turns on forwarding for the families the pod uses. Strict
// rp_filter is fine here: the pod's source address is routed back through
// the same host end.
func enableForwarding(ips []netip.Addr) error {
	for _, ip := range ips {
		key := "net.ipv4.ip_forward"
		if ip.Is6() {
			key = "net.ipv6.conf.all.forwarding"
		}
		if _, err := sysctl.Sysctl(key, "1"); err != nil {
			return fmt.Errorf("enable forwarding (%s): %w", key, err)
		}
	}
	return nil
}

// deleteLink removes a link by name; a missing link is not an error.
func deleteLink(name string) error {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func linkExists(name string) bool {
	_, err := netlinksafe.LinkByName(name)
	return err == nil
}
