package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/loadgen/report"
)

// Pod-to-pod and pod-to-node on one node, side by side: warp-veth with the
// tc datapath, plain and with XDP, the reference ptp and bridge plugins,
// and the same traffic between two processes in one namespace over
// loopback (what no pod network can beat on this machine). Each case is a
// fresh simulated node with a client and a server pod; every plugin uses
// the reference host-local as IPAM, so that ADD/DEL latency compares the
// interface plugins. Client and server are always separate processes
// (iperf3, tests/loadgen), and each measurement visits the cases in a
// rotated order every round, so that drift and warm-up hit all alike.

const (
	p2pRounds    = 3     // every case measured once per round
	p2pRRSamples = 10000 // request/response round trips per case and round
	cniPairs     = 200   // ADD+DEL pairs per plugin, interleaved across plugins
	p2pNodeIP    = "10.99.0.1"
	p2pPort      = "7000" // loadgen's echo server
)

type p2pCase struct {
	id     string // namespace names
	name   string // row label
	plugin string // "": loopback, no CNI
	fields func(dataDir, bpffs, facts string) map[string]any
}

func p2pCases() []p2pCase {
	hostLocal := func(dataDir string) map[string]any {
		return map[string]any{"type": "host-local", "dataDir": dataDir,
			"ranges": [][]map[string]any{{{"subnet": "10.70.0.0/16"}}}, "routes": []map[string]any{{"dst": "0.0.0.0/0"}}}
	}
	veth := func(extra map[string]any) func(string, string, string) map[string]any {
		return func(dataDir, bpffs, facts string) map[string]any {
			m := map[string]any{"bpffsRoot": bpffs, "nodeFacts": facts, "ipam": hostLocal(dataDir)}
			maps.Copy(m, extra)
			return m
		}
	}
	return []p2pCase{
		{"tc", "warp-veth, tc redirect", "warp-veth", veth(map[string]any{"redirect": "tc"})},
		{"plain", "warp-veth, plain", "warp-veth", veth(nil)},
		{"xdp", "warp-veth, XDP", "warp-veth", veth(map[string]any{"xdp": true})},
		{"ptp", "ptp", "ptp", func(dataDir, _, _ string) map[string]any { return map[string]any{"ipam": hostLocal(dataDir)} }},
		{"bridge", "bridge", "bridge", func(dataDir, _, _ string) map[string]any {
			return map[string]any{"bridge": "cni0", "isGateway": true, "ipam": hostLocal(dataDir)}
		}},
		{"lo", "loopback, one namespace", "", nil},
	}
}

// p2pNode is one case set up: its pods (or the loopback namespace) with
// loadgen's server running in the server pod, and for a plugin a pod for
// ADD/DEL timing.
type p2pNode struct {
	c                    p2pCase
	node, client, server *harness.NetNS // node is nil for loopback
	serverIP             string
	serverProc           *os.Process // loadgen serve
	plugin               *harness.Plugin
	conf                 []byte
	cniPod               *harness.NetNS
	tcp                  [4][]float64 // Gbit/s per round: pod→pod 1 and 4 streams, pod→node 1 and 4 streams
	udp                  []float64    // kpps per round
	rr                   []report.Report
	cniAdd, cniDel       []time.Duration
	bpffs                string
	// The profile (per round): the client's and server's CPU time per
	// unit of work, device transmits (backlog passes) per round trip; and
	// the BPF program's own time per run.
	cpuPerGB, cpuPerDgram, cpuPerRT, txPerRT []float64
	progNs                                   float64
}

func newP2PNode(b *testing.B, env *harness.Env, c p2pCase) *p2pNode {
	n := &p2pNode{c: c}
	if c.plugin == "" {
		ns := env.NetNS(c.id)
		n.client, n.server, n.serverIP = ns, ns, "127.0.0.1"
		n.serverProc = serveLoadgen(b, n.server, p2pPort)
		return n
	}
	n.node = env.NetNS(c.id + "-node")
	env.Addr(n.node, "lo", p2pNodeIP+"/32")
	n.plugin = env.Plugin(b, c.plugin).In(n.node)
	dir := filepath.Join(env.TempDir, c.id)
	n.bpffs = env.BPFFS()
	fields := c.fields(filepath.Join(dir, "ipam"), n.bpffs, filepath.Join(dir, "node.json"))
	fields["cniVersion"] = "1.0.0" // Debian's reference plugins predate 1.1.0
	n.conf = harness.ConfigJSON(b, harness.NetConf("bench-"+c.id, c.plugin, fields))
	n.client, n.server, n.cniPod = env.NetNS(c.id+"-client"), env.NetNS(c.id+"-server"), env.NetNS(c.id+"-cni")
	n.plugin.MustSucceed(b, n.call("ADD", "client", n.client))
	res := harness.ParseResult(b, n.plugin.MustSucceed(b, n.call("ADD", "server", n.server)))
	n.serverIP = res.IPs[0].Address.IP.String()
	n.serverProc = serveLoadgen(b, n.server, p2pPort)
	return n
}

func (n *p2pNode) call(cmd, id string, pod *harness.NetNS) harness.Call {
	return harness.Call{Command: cmd, ContainerID: id, Netns: pod.Path, IfName: "eth0", Config: n.conf}
}

// cni times one ADD and one DEL of a fresh container in the timing pod.
func (n *p2pNode) cni(b *testing.B, i int) {
	id := fmt.Sprintf("cni%d", i)
	for _, cmd := range []string{"ADD", "DEL"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		start := time.Now()
		o, err := n.plugin.Exec(ctx, n.call(cmd, id, n.cniPod))
		elapsed := time.Since(start)
		cancel()
		if err != nil || o.ExitCode != 0 {
			b.Fatalf("%s %s %s: %v %v", n.c.plugin, cmd, id, err, o)
		}
		if cmd == "ADD" {
			n.cniAdd = append(n.cniAdd, elapsed)
		} else {
			n.cniDel = append(n.cniDel, elapsed)
		}
	}
}

// transmits is how many packets the case's veth devices (or, for
// loopback, lo) have transmitted, over its namespaces: a veth transmit
// without NAPI queues the packet on a CPU's backlog for the peer to
// receive, so this counts the backlog passes of the case's own traffic.
func (n *p2pNode) transmits(b *testing.B) uint64 {
	nss, sel := []*harness.NetNS{n.node, n.client, n.server}, []string{"type", "veth"}
	if n.node == nil {
		nss, sel = []*harness.NetNS{n.client}, []string{"dev", "lo"}
	}
	var sum uint64
	for _, ns := range nss {
		var links []struct {
			Stats64 struct {
				TX struct {
					Packets uint64 `json:"packets"`
				} `json:"tx"`
			} `json:"stats64"`
		}
		out := ns.Exec(b, append([]string{"ip", "-j", "-s", "link", "show"}, sel...)...)
		if err := json.Unmarshal([]byte(out), &links); err != nil {
			b.Fatalf("ip -j -s link in %s: %v\n%s", ns.Name, err, out)
		}
		for _, l := range links {
			sum += l.Stats64.TX.Packets
		}
	}
	return sum
}

// progRun is the cumulative run time and count of the case's pinned host
// program (tc or XDP), zero without one; they grow only while BPF
// run-time stats are on.
func (n *p2pNode) progRun(b *testing.B) (time.Duration, uint64) {
	prog := map[string]string{"tc": "warp_tc_host", "xdp": "warp_xdp_host"}[n.c.id]
	if prog == "" {
		return 0, 0
	}
	p, err := ebpf.LoadPinnedProgram(filepath.Join(n.bpffs, "progs", prog), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	st, err := p.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return st.Runtime, st.RunCount
}

// loadAvg is the 1-minute load average, as /proc/loadavg says.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0]
}

// BenchmarkPodToPod compares pod networking datapaths on one node. Run
// with -benchtime 1x: it measures a fixed amount itself.
func BenchmarkPodToPod(b *testing.B) {
	harness.RequireTools(b, "iperf3", "/usr/lib/cni/bridge", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local")
	loadBefore := loadAvg()
	env := harness.New(b)
	cases := p2pCases()
	var nodes []*p2pNode
	for _, c := range cases {
		nodes = append(nodes, newP2PNode(b, env, c))
	}
	// Each measurement visits every case once per round, starting with
	// another case each round.
	rotate := func(round int, nodes []*p2pNode, measure func(*p2pNode)) {
		for k := range nodes {
			measure(nodes[(k+round)%len(nodes)])
		}
	}
	for round := range p2pRounds {
		for s, streams := range []int{1, 4} {
			rotate(round, nodes, func(n *p2pNode) {
				bps, cpu := iperf(b, n.client, n.server, n.serverIP, "", streams)
				n.tcp[s] = append(n.tcp[s], bps/1e9)
				if streams == 1 {
					n.cpuPerGB = append(n.cpuPerGB, cpu.Seconds()/(bps*iperfSeconds/8/1e9))
				}
			})
			rotate(round, nodes, func(n *p2pNode) {
				if n.node != nil {
					bps, _ := iperf(b, n.client, n.node, p2pNodeIP, "", streams)
					n.tcp[2+s] = append(n.tcp[2+s], bps/1e9)
				}
			})
		}
		rotate(round, nodes, func(n *p2pNode) {
			pps, cpu := iperf(b, n.client, n.server, n.serverIP, "udp", 1)
			n.udp = append(n.udp, pps/1e3)
			n.cpuPerDgram = append(n.cpuPerDgram, cpu.Seconds()/(pps*iperfSeconds)*1e6)
		})
		rotate(round, nodes, func(n *p2pNode) {
			srv, tx := processCPU(b, n.serverProc.Pid), n.transmits(b)
			r, cpu := runLoadgenCPU(b, n.client, "rr", n.serverIP+":"+p2pPort, p2pRRSamples)
			cpu += processCPU(b, n.serverProc.Pid) - srv
			n.rr = append(n.rr, r)
			n.cpuPerRT = append(n.cpuPerRT, cpu.Seconds()/float64(r.Samples)*1e6)
			n.txPerRT = append(n.txPerRT, float64(n.transmits(b)-tx)/float64(r.Samples))
		})
	}
	// The BPF programs' own cost, with run-time stats on (which costs a
	// little, so only now): one more RR run per case with a program.
	if stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		b.Logf("no BPF run-time stats: %v", err)
	} else {
		for _, n := range nodes {
			if n.c.id != "tc" && n.c.id != "xdp" {
				continue
			}
			t0, c0 := n.progRun(b)
			runLoadgen(b, n.client, "rr", n.serverIP+":"+p2pPort, p2pRRSamples)
			if t1, c1 := n.progRun(b); c1 > c0 {
				n.progNs = float64(t1-t0) / float64(c1-c0)
			}
		}
		stats.Close()
	}
	var plugins []*p2pNode
	for _, n := range nodes {
		if n.plugin != nil {
			plugins = append(plugins, n)
		}
	}
	for i := range cniPairs {
		rotate(i, plugins, func(n *p2pNode) { n.cni(b, i) })
	}
	loadAfter := loadAvg()
	for _, n := range nodes {
		b.ReportMetric(median(n.tcp[0]), n.c.id+"-tcp-Gbit/s")
		b.ReportMetric(median(n.udp), n.c.id+"-udp64-kpps")
	}
	publish(b, "podtopod", p2pTable(nodes, loadBefore, loadAfter))
}

// p2pTable is the markdown docs/benchmarks.md shows.
func p2pTable(nodes []*p2pNode, loadBefore, loadAfter string) string {
	var out strings.Builder
	fmt.Fprintf(&out, "Same-node traffic, median of %d rounds. TCP bulk: iperf3, %d s, 1 and 4 streams; UDP: 64-byte datagrams "+
		"as fast as one iperf3 client sends them, delivered to the server pod's UDP stack per second; RR: 1-byte request/response over one TCP connection "+
		"between two loadgen processes, %d round trips per round (p50 and p99 are each round's, then the median). "+
		"Load average (1 min) before / after the run: %s / %s.\n\n", p2pRounds, iperfSeconds, p2pRRSamples, loadBefore, loadAfter)
	out.WriteString("| datapath | pod→pod TCP, 1 stream | 4 streams | pod→node TCP, 1 stream | 4 streams | UDP 64 B | RR p50 | RR p99 |\n")
	out.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	s := map[string]p2pSummary{}
	for _, n := range nodes {
		x := summarizeP2P(n)
		s[n.c.id] = x
		gbps := func(v float64) string {
			if v == 0 {
				return "—"
			}
			return fmt.Sprintf("%.1f Gbit/s", v)
		}
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %s | %.0f kpps | %.0f µs | %.0f µs |\n", n.c.name,
			gbps(x.tcp[0]), gbps(x.tcp[1]), gbps(x.tcp[2]), gbps(x.tcp[3]), x.udp, x.p50, x.p99)
	}

	ptp := s["ptp"]
	fmt.Fprintf(&out, "\nAgainst ptp (throughput and rate: x / ptp, higher is better; latency: x / ptp, lower is better):\n\n")
	out.WriteString("| datapath | pod→pod TCP, 1 stream | 4 streams | pod→node TCP, 1 stream | 4 streams | UDP 64 B | RR p50 | RR p99 |\n")
	out.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range nodes {
		if n.c.id == "ptp" {
			continue
		}
		x := s[n.c.id]
		ratio := func(v, base float64) string {
			if v == 0 || base == 0 {
				return "—"
			}
			return fmt.Sprintf("%.2fx", v/base)
		}
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", n.c.name, ratio(x.tcp[0], ptp.tcp[0]), ratio(x.tcp[1], ptp.tcp[1]),
			ratio(x.tcp[2], ptp.tcp[2]), ratio(x.tcp[3], ptp.tcp[3]), ratio(x.udp, ptp.udp), ratio(x.p50, ptp.p50), ratio(x.p99, ptp.p99))
	}
	tc := s["tc"]
	goal := func(what string, r, limit float64, atLeast bool) string {
		met := r >= limit
		if !atLeast {
			met = r <= limit
		}
		verdict := "missed"
		if met {
			verdict = "met"
		}
		cmp := "≥"
		if !atLeast {
			cmp = "≤"
		}
		return fmt.Sprintf("%s %.2fx (goal %s %.2fx: %s)", what, r, cmp, limit, verdict)
	}
	fmt.Fprintf(&out, "\nGoals for the tc redirect against ptp: %s; %s; %s; %s.\n",
		goal("pod→pod TCP, 1 stream", tc.tcp[0]/ptp.tcp[0], 1.15, true),
		goal("4 streams", tc.tcp[1]/ptp.tcp[1], 1.15, true),
		goal("UDP 64 B", tc.udp/ptp.udp, 1.15, true),
		goal("RR p50", tc.p50/ptp.p50, 0.85, false))

	fmt.Fprintf(&out, "\nWhere the time goes: CPU time of the client and server processes per unit of work in the runs above "+
		"(user and system, with the kernel's network work done in their context: the veth, forwarding and receive path runs in "+
		"the sender's softirq), the packets the case's veth devices (loopback: lo) transmitted per round trip (each veth "+
		"transmit queues the packet on a CPU's backlog once), and the pod datapath program's own run time per packet (BPF "+
		"run-time stats, during one more RR run):\n\n")
	out.WriteString("| datapath | CPU per RR round trip | device transmits per round trip | CPU per 64 B datagram | CPU per GB, TCP 1 stream | BPF program per packet |\n")
	out.WriteString("|---|---:|---:|---:|---:|---:|\n")
	for _, n := range nodes {
		prog := "—"
		if n.progNs > 0 {
			prog = fmt.Sprintf("%.0f ns", n.progNs)
		}
		fmt.Fprintf(&out, "| %s | %.1f µs | %.1f | %.2f µs | %.2f s | %s |\n", n.c.name, median(n.cpuPerRT), median(n.txPerRT),
			median(n.cpuPerDgram), median(n.cpuPerGB), prog)
	}

	fmt.Fprintf(&out, "\nCNI ADD and DEL of one pod (the whole plugin process, as a runtime sees it), %d pairs per plugin, "+
		"interleaved across plugins; host-local IPAM for all:\n\n", cniPairs)
	label, q := quantile(cniPairs)
	fmt.Fprintf(&out, "| plugin | ADD p50 | ADD %s | DEL p50 | DEL %s |\n|---|---:|---:|---:|---:|\n", label, label)
	for _, n := range nodes {
		if n.plugin == nil {
			continue
		}
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %s |\n", n.c.name, ms(pct(n.cniAdd, 0.5)), ms(pct(n.cniAdd, q)), ms(pct(n.cniDel, 0.5)), ms(pct(n.cniDel, q)))
	}
	return out.String()
}

type p2pSummary struct {
	tcp      [4]float64
	udp      float64
	p50, p99 float64
}

func summarizeP2P(n *p2pNode) p2pSummary {
	var s p2pSummary
	for i, v := range n.tcp {
		if len(v) > 0 {
			s.tcp[i] = median(v)
		}
	}
	s.udp = median(n.udp)
	var p50, p99 []float64
	for _, r := range n.rr {
		p50, p99 = append(p50, r.P50), append(p99, r.P99)
	}
	s.p50, s.p99 = median(p50), median(p99)
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
