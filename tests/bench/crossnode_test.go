package bench

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/internal/nodefacts"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/loadgen/report"
)

// Pod to pod across two nodes on one L2 segment, side by side: routed
// natively (host-gw), natively with warp-veth's tc datapath (which hands a
// pod's packets to the next hop itself, bpf_redirect_neigh, on the sending
// node), through warpd's VXLAN tunnel, and the same traffic between the two
// node namespaces themselves (the physical limit of this simulated link).
// Pods are warp-veth pods with warp-ipam addresses; the routes are
// programmed by daemon/routing, the code warpd runs, and the node facts the
// tc pods read are what warpd publishes.

const (
	crossRounds  = 3     // rounds; each runs every case, in rotating order
	crossSamples = 10000 // request/response samples per case and round
)

type crossCase struct {
	name   string
	mode   routing.Mode // "" = node to node, no pods
	client *harness.NetNS
	server *harness.NetNS
	addr   string // server address
}

type crossResult struct {
	tcpGbps, udpKpps []float64
	rr               []report.Report
}

func BenchmarkCrossNode(b *testing.B) {
	harness.RequireTools(b, "iperf3", filepath.Join(harness.BinDir(), "warp-veth"), filepath.Join(harness.BinDir(), "warp-ipam"))
	env := harness.New(b)
	seg := env.Segment("ul", "10.200.0.0/24", "fd00:200::/64")
	type node struct {
		ns    *harness.NetNS
		name  string
		ip    netip.Addr
		cidr  netip.Prefix
		bpffs string
	}
	var nodes []node
	var rnodes []routing.Node
	for i := 1; i <= 2; i++ {
		n := node{ns: env.NetNS(fmt.Sprintf("n%d", i)), name: fmt.Sprintf("n%d", i), cidr: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
			bpffs: env.BPFFS()}
		n.ip, _ = seg.Attach(n.ns, "eth0", 10+i)
		n.ns.Exec(b, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		nodes = append(nodes, n)
		rnodes = append(rnodes, routing.Node{Name: n.name, Addrs: []netip.Addr{n.ip}, PodCIDRs: []netip.Prefix{n.cidr}})
	}
	// The facts warpd publishes on each node: the tc pods read the
	// cluster's pod CIDRs from them.
	for _, n := range nodes {
		f := nodefacts.Facts{Node: n.name, PodCIDRs: []netip.Prefix{n.cidr}, MTU: 1500, Routing: string(routing.Native),
			ClusterPodCIDRs: []netip.Prefix{nodes[0].cidr, nodes[1].cidr}}
		if err := nodefacts.Write(filepath.Join(env.TempDir, n.name+"-node.json"), f); err != nil {
			b.Fatal(err)
		}
	}
	// One pod pair per path: the tunnel's pods get the MTU warpd publishes
	// for it (the uplink's less the VXLAN overhead), as warp-veth would.
	const tcNative = "native-tc"
	pods := map[string][2]*harness.NetNS{}
	podIP := map[string]string{}
	for _, m := range []struct {
		path string
		mtu  int
		tc   bool
	}{{string(routing.Native), 1500, false}, {tcNative, 1500, true}, {string(routing.VXLAN), 1450, false}} {
		var pair [2]*harness.NetNS
		for i, n := range nodes {
			veth := env.Plugin(b, "warp-veth").In(n.ns)
			fields := map[string]any{"cniVersion": "1.1.0", "mtu": m.mtu, "nodeFacts": filepath.Join(env.TempDir, n.name+"-node.json"),
				"bpffsRoot": n.bpffs,
				"ipam": map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(env.TempDir, n.name+"-ipam"), "detectConflicts": false,
					"ranges": [][]map[string]any{{{"subnet": n.cidr.String()}}}}}
			if m.tc {
				fields["redirect"] = "tc"
			}
			conf := harness.ConfigJSON(b, harness.NetConf("bench", "warp-veth", fields))
			pod := env.NetNS(fmt.Sprintf("%s-%s", m.path, n.name))
			res := harness.ParseResult(b, veth.MustSucceed(b, harness.Call{Command: "ADD", ContainerID: pod.Name, Netns: pod.Path, IfName: "eth0", Config: conf}))
			pair[i] = pod
			if i == 1 {
				podIP[m.path] = res.IPs[0].Address.IP.String()
			}
		}
		pods[m.path] = pair
	}
	setMode := func(mode routing.Mode) {
		for _, n := range nodes {
			m, err := routing.New(routing.Config{Mode: mode, Self: n.name})
			if err != nil {
				b.Fatal(err)
			}
			if err := n.ns.Do(func() error { _, err := m.Sync(rnodes); return err }); err != nil {
				b.Fatalf("routes on %s: %v", n.name, err)
			}
		}
	}
	native, vxlan := string(routing.Native), string(routing.VXLAN)
	cases := []crossCase{
		{"node-to-node", "", nodes[0].ns, nodes[1].ns, nodes[1].ip.String()},
		{"pods, native", routing.Native, pods[native][0], pods[native][1], podIP[native]},
		{"pods, native + tc redirect", routing.Native, pods[tcNative][0], pods[tcNative][1], podIP[tcNative]},
		{"pods, VXLAN", routing.VXLAN, pods[vxlan][0], pods[vxlan][1], podIP[vxlan]},
	}
	for _, c := range cases {
		serveLoadgen(b, c.server, "7000")
	}
	results := make([]crossResult, len(cases))
	for round := 0; round < crossRounds; round++ {
		for k := range cases {
			i := (k + round) % len(cases)
			c := cases[i]
			if c.mode != "" {
				setMode(c.mode)
			}
			r := &results[i]
			bps, _ := iperf(b, c.client, c.server, c.addr, "", 1)
			pps, _ := iperf(b, c.client, c.server, c.addr, "udp", 1)
			r.tcpGbps, r.udpKpps = append(r.tcpGbps, bps/1e9), append(r.udpKpps, pps/1e3)
			r.rr = append(r.rr, runLoadgen(b, c.client, "rr", c.addr+":7000", crossSamples))
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "Pod to pod across two nodes on one L2 segment: TCP bulk (iperf3, 1 stream, %ds), 64-byte UDP (iperf3, %ds), "+
		"1-byte TCP request/response (%d round trips per run between two loadgen processes); median of %d rounds, order rotated.\n\n",
		iperfSeconds, iperfSeconds, crossSamples, crossRounds)
	fmt.Fprintf(&out, "| path | TCP Gbit/s | UDP64 kpps | RR p50 | RR p99 | vs node-to-node: TCP | UDP | RR p50 | RR p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	base := summarize(results[0])
	for i, c := range cases {
		s := summarize(results[i])
		fmt.Fprintf(&out, "| %s | %.2f | %.0f | %.0f µs | %.0f µs | %.2fx | %.2fx | %.2fx | %.2fx |\n", c.name, s.tcp, s.udp, s.p50, s.p99,
			s.tcp/base.tcp, s.udp/base.udp, base.p50/s.p50, base.p99/s.p99)
		b.ReportMetric(s.tcp, strings.ReplaceAll(c.name, " ", "")+"-tcp-Gbit/s")
	}
	out.WriteString("\nRatios above 1 are faster than the node-to-node link itself (latency ratios: node-to-node / path).\n")
	publish(b, "crossnode", out.String())
}

type crossSummary struct{ tcp, udp, p50, p99 float64 }

func summarize(r crossResult) crossSummary {
	var p50, p99 []float64
	for _, x := range r.rr {
		p50, p99 = append(p50, x.P50), append(p99, x.P99)
	}
	return crossSummary{median(r.tcpGbps), median(r.udpKpps), median(p50), median(p99)}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
