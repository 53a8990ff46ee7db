package northsouth_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/safchain/ethtool"

	"github.com/warpnet/warpnet/tests/harness"
)

// TestNorthSouthXDPAndTunnel runs the north-south cases through a node
// with --lb-attach xdp, on an underlay made NIC-like for XDP
// (harness.Segment.NICLike), and to backends reached natively and through
// the cluster network's VXLAN tunnel: n1 (xdp) and n2 (tc) share the
// client's segment, n3 (tc) is behind a router, so that warpd --routing
// auto routes between n1 and n2 natively and to n3 through the tunnel.
// The pods run warp-veth's tc program, as the shipped conflist has it.
func TestNorthSouthXDPAndTunnel(t *testing.T) {
	c := newCluster(t)
	c.routing = "auto"
	far := c.env.Segment("far", "10.201.0.0/24", "fd00:201::/64")
	c.l2.NICLike()
	far.NICLike()
	c.env.Router("router", c.l2, far)
	n1 := c.addNode(1, c.l2, "--lb-attach", "xdp")
	n2 := c.addNode(2, c.l2, "--lb-attach", "tc")
	n3 := c.addNode(3, far, "--lb-attach", "tc")
	tc := map[string]any{"redirect": "tc"}
	p1, p2, p3 := c.addPod(t, "p1", n1, tc), c.addPod(t, "p2", n2, tc), c.addPod(t, "p3", n3, tc)

	link := n1.ns.Exec(t, "ip", "link", "show", "dev", "eth0")
	if !strings.Contains(link, " xdp ") {
		t.Fatalf("n1's eth0 runs no native XDP program:\n%s", link)
	}
	xdpTX := func() uint64 { return xdpTXPackets(t, n1.ns, "eth0") }
	before := xdpTX()

	t.Run("NodePort SNAT: local, native and tunnel backends", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "web", typ: "NodePort", pods: []*pod{p1, p2, p3}})[0]
		for _, n := range []*node{n1, n2} {
			local, native := p1, p2
			if n == n2 {
				local, native = p2, p1
			}
			for _, v6 := range []bool{false, true} {
				for _, p := range protocols {
					c.waitAnswered(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.echo)), p1, p2, p3)
					c.waitSeen(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.peer)),
						map[string]string{local.name: c.clientAddr(v6), native.name: n.addr(v6).String(), p3.name: n.addr(v6).String()})
				}
			}
		}
		// XDP sent the translated packets (new flows to n2's and n3's
		// pods, replies to the client) back out of eth0 itself
		if after := xdpTX(); after <= before {
			t.Errorf("n1's eth0: XDP_TX packets %d before, %d after: XDP forwarded nothing", before, after)
		}
	})

	t.Run("DSR: natively and through the tunnel", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "dsr", typ: "NodePort", mode: "dsr", pods: []*pod{p2, p3}})[0]
		for _, v6 := range []bool{false, true} {
			for _, p := range protocols {
				// through n1 (XDP) both are remote; through n2 (tc) p3 is
				// remote, p2 local
				for _, n := range []*node{n1, n2} {
					c.waitSeen(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.peer)),
						map[string]string{p2.name: c.clientAddr(v6), p3.name: c.clientAddr(v6)})
				}
			}
		}
	})

	t.Run("externalTrafficPolicy Local through the XDP node", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "local", typ: "NodePort", local: true, pods: []*pod{p1, p3}})[0]
		for _, v6 := range []bool{false, true} {
			for _, p := range protocols {
				c.waitSeen(t, p.network, netip.AddrPortFrom(n1.addr(v6), nodePort(svc, p.peer)), map[string]string{p1.name: c.clientAddr(v6)})
			}
		}
	})
}

// xdpTXPackets sums the XDP_TX counters of the veth ifname in ns (ethtool
// -S: rx_queue_N_xdp_tx).
func xdpTXPackets(t *testing.T, ns *harness.NetNS, ifname string) uint64 {
	t.Helper()
	var sum uint64
	if err := ns.Do(func() error {
		e, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer e.Close()
		stats, err := e.Stats(ifname)
		if err != nil {
			return err
		}
		for name, v := range stats {
			if strings.HasSuffix(name, "_xdp_tx") {
				sum += v
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("ethtool -S %s in %s: %v", ifname, ns, err)
	}
	return sum
}
