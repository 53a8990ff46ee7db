package masquerade_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/daemon/masquerade"
	"github.com/warpnet/warpnet/tests/harness"
)

// A node with two pods (one inside a never-masquerade CIDR) and an external
// host on the underlay that reports the source address it sees.
func TestEgress(t *testing.T) {
	harness.RequireTools(t, "socat", "nft")
	env := harness.New(t)
	seg := env.Segment("ul", "10.200.0.0/24", "fd00:200::/64")
	node, ext := env.NetNS("node"), env.NetNS("ext")
	seg.Attach(node, "eth0", 11)
	seg.Attach(ext, "eth0", 50)
	node.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// ext routes the never-masquerade pod network and one "cluster"
	// address back through the node, as an underlay router would.
	ext.Exec(t, "ip", "route", "add", "10.244.1.192/26", "via", "10.200.0.11")
	ext.Exec(t, "ip", "route", "add", "10.244.1.0/24", "via", "10.200.0.11")
	ext.Exec(t, "ip", "-6", "route", "add", "fd00:244:1::200/128", "via", "fd00:200::11")
	ext.Exec(t, "ip", "addr", "add", "10.244.9.50/32", "dev", "eth0")
	node.Exec(t, "ip", "route", "add", "10.244.9.50/32", "via", "10.200.0.50")
	pods := map[string]*harness.NetNS{}
	for i, ips := range [][2]string{{"10.244.1.10", "fd00:244:1::10"}, {"10.244.1.200", "fd00:244:1::200"}} {
		pod := env.NetNS([]string{"pod", "underlay-pod"}[i])
		host := []string{"p0", "p1"}[i]
		env.Veth(node, host, pod, "eth0")
		node.Exec(t, "ip", "route", "add", ips[0]+"/32", "dev", host)
		node.Exec(t, "ip", "-6", "route", "add", ips[1]+"/128", "dev", host)
		node.Exec(t, "ip", "addr", "add", "169.254.1.1/32", "dev", host)
		node.Exec(t, "ip", "-6", "addr", "add", "fe80::1/64", "dev", host, "nodad")
		pod.Exec(t, "ip", "addr", "add", ips[0]+"/32", "dev", "eth0")
		pod.Exec(t, "ip", "-6", "addr", "add", ips[1]+"/128", "dev", "eth0", "nodad")
		pod.Exec(t, "ip", "route", "add", "169.254.1.1", "dev", "eth0")
		pod.Exec(t, "ip", "route", "add", "default", "via", "169.254.1.1")
		pod.Exec(t, "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
		pods[[]string{"pod", "underlay"}[i]] = pod
	}
	ext.Start(t, "socat", "TCP-LISTEN:7000,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR")
	ext.Start(t, "socat", "TCP6-LISTEN:7001,fork,reuseaddr,ipv6only=1", "SYSTEM:echo $SOCAT_PEERADDR")
	seen := func(pod *harness.NetNS, dst string) string {
		t.Helper()
		var out string
		harness.WaitFor(t, "an answer from "+dst, 20e9, func() bool {
			o, err := pod.Run(t.Context(), "socat", "-T5", "-", "TCP:"+dst)
			out = strings.TrimSpace(o)
			return err == nil && out != ""
		})
		a, err := netip.ParseAddr(strings.Trim(out, "[]"))
		if err != nil {
			t.Fatalf("%s answered %q", dst, out)
		}
		return a.String()
	}

	node.Exec(t, "nft", "add", "table", "inet", "other")
	cfg := masquerade.Config{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		NoMasquerade: []netip.Prefix{netip.MustParsePrefix("10.244.1.192/26"), netip.MustParsePrefix("fd00:244:1::200/128")},
	}
	if err := node.Do(func() error { return masquerade.Sync(cfg) }); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ pod, dst, want string }{
		{"pod", "10.200.0.50:7000", "10.200.0.11"},             // outside the cluster: the node's address
		{"pod", "[fd00:200::50]:7001", "fd00:200::11"},         // the same over IPv6
		{"underlay", "10.200.0.50:7000", "10.244.1.200"},       // a never-masquerade pod keeps its own
		{"underlay", "[fd00:200::50]:7001", "fd00:244:1::200"}, // over IPv6 too
		{"pod", "10.244.9.50:7000", "10.244.1.10"},             // to a cluster address: unchanged
	} {
		if got := seen(pods[c.pod], c.dst); got != c.want {
			t.Errorf("%s -> %s: the external host saw %s, want %s", c.pod, c.dst, got, c.want)
		}
	}
	// A second Sync replaces the table, keeps other tables; Remove takes it.
	if err := node.Do(func() error { return masquerade.Sync(cfg) }); err != nil {
		t.Fatal(err)
	}
	if out := node.Exec(t, "nft", "list", "tables"); !strings.Contains(out, "table inet other") || !strings.Contains(out, "table inet warpnet") {
		t.Errorf("tables after Sync:\n%s", out)
	}
	if err := node.Do(masquerade.Remove); err != nil {
		t.Fatal(err)
	}
	if out := node.Exec(t, "nft", "list", "tables"); strings.Contains(out, "warpnet") || !strings.Contains(out, "table inet other") {
		t.Errorf("tables after Remove:\n%s", out)
	}
}
