package nodeport

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/internal/l4"
)

// A LoadBalancer ingress IP: an address no node holds, routed to node a
// by the client (as a router in front of the cluster would).
func TestLoadBalancerIP(t *testing.T) {
	c := newCluster(t, TC)
	c.debugOnFailure(t)
	lbIP := netip.MustParseAddrPort("10.200.0.200:90")
	svc := Service{ID: newID(), Proto: l4.TCP, Backends: backendsOf(false, c.a.pods[0]), Local: true}
	c.service(t, svc, c.a)
	// the address is added later, as a LoadBalancer's status is
	svc.Frontends = []netip.AddrPort{lbIP}
	c.service(t, svc, c.a)
	c.client.Exec(t, "ip", "route", "add", "10.200.0.200/32", "via", c.a.ip4.String())
	server, seen := c.mustWho(t, "tcp", lbIP)
	if server != "pa0" || !strings.Contains(seen, clientAddr(false)) {
		t.Errorf("answered by %s, which saw %s", server, seen)
	}
}
