package bench

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	bpfnodeport "github.com/warpnet/warpnet/bpf/nodeport"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/loadgen/report"
)

// BenchmarkNorthSouth measures warpd's north-south load balancer (issue
// 14) side by side with the real kube-proxy (v1.34.3, iptables and
// nftables modes), in one run. Each proxy gets an identical cluster of
// its own (its own API server, so that no node sees another cluster's
// Nodes): an external client namespace and two nodes on one simulated L2
// segment; the client sends to node A's NodePort, the backends are pods
// on node B. Every node runs warpd for the node routing (--routing
// native: node A routes node B's pod CIDR via node B); in the warpd
// cluster warpd also runs the north-south LB (--lb-attach tc), in the
// others kube-proxy runs beside warpd, which then only routes; a fourth
// cluster has no service proxy at all: its client sends to the backends'
// pod IPs, routed through node A, the floor of the path. The rows:
// short TCP connections, 64-byte UDP packets forwarded (one way, counted
// at the backend), bulk TCP (iperf3), and the softirq CPU time per
// connection and per packet. See docs/benchmarks.md, section North-south.
// Run with -benchtime 1x; -short takes fewer samples, and
// WARP_BENCH_NS_ONLY=warpd (a comma-separated subset of warpd, iptables,
// nftables, none) runs only those, for development.
func BenchmarkNorthSouth(b *testing.B) {
	harness.RequireTools(b, filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"),
		filepath.Join(harness.BinDir(), "warp-ipam"), "iperf3", "nft", "iptables-legacy-restore", "socat")
	rounds, perRound, many := nsRounds, nsCRRPerRound, nsManyServices
	if testing.Short() {
		rounds, perRound, many = 2, 500, 100
	}
	proxies := nsProxies
	if only := os.Getenv("WARP_BENCH_NS_ONLY"); only != "" {
		proxies = slices.DeleteFunc(slices.Clone(proxies), func(p nsProxy) bool { return !slices.Contains(strings.Split(only, ","), p.kind) })
		if len(proxies) == 0 || os.Getenv(docEnv) == "1" {
			b.Fatalf("WARP_BENCH_NS_ONLY=%s: a comma-separated subset of warpd,iptables,nftables,none, for development (never with %s=1)", only, docEnv)
		}
	}
	kubeProxy := ""
	if slices.ContainsFunc(proxies, func(p nsProxy) bool { return p.kind == "iptables" || p.kind == "nftables" }) {
		kubeProxy = kubeProxyBinary(b)
	}
	env := harness.New(b)
	start := time.Now()
	var clusters []*nsCluster
	for _, p := range proxies {
		clusters = append(clusters, newNSCluster(b, env, p, kubeProxy))
	}
	b.Logf("north-south: %d clusters up in %v", len(clusters), time.Since(start).Round(time.Second))
	_, stopStats := enableStats(b)
	defer stopStats()

	res := make([]nsResult, len(clusters))
	nsRotate(b, clusters, rounds, "", func(i int) { clusters[i].measure(b, &res[i], perRound) })
	// kube-proxy's rules grow with the cluster's Services; warpd's
	// lookups do not: the short connections again, with many more.
	for _, c := range clusters {
		createServices(b, fastClient(b, c.api), c.backendIPs, 0, many)
	}
	for _, c := range clusters {
		c.waitServices(b, many)
	}
	crr := make([]nsResult, len(clusters))
	nsRotate(b, clusters, rounds, fmt.Sprintf(" with %d more Services", many), func(i int) { clusters[i].shortConns(b, &crr[i], perRound) })
	b.Logf("north-south: measured in %v", time.Since(start).Round(time.Second))
	publishNorthSouth(b, clusters, res, crr, rounds, perRound, many)
}

// nsRotate runs measure(i) for every cluster i in every round, the order
// rotating and reversing every other round.
func nsRotate(b *testing.B, clusters []*nsCluster, rounds int, what string, measure func(i int)) {
	for round := range rounds {
		for k := range clusters {
			i := (k + round) % len(clusters)
			if round%2 == 1 {
				i = len(clusters) - 1 - i
			}
			b.Logf("north-south%s, round %d/%d: %s", what, round+1, rounds, clusters[i].proxy.name)
			measure(i)
		}
	}
}

// nsProxy is one column of the comparison.
type nsProxy struct {
	name string // as the tables say it
	kind string // warpd, iptables, nftables, none
}

var nsProxies = []nsProxy{
	{"warpd --lb-attach tc", "warpd"},
	{"kube-proxy iptables", "iptables"},
	{"kube-proxy nftables", "nftables"},
	{"no proxy: pod IPs routed via node A", "none"},
}

const (
	nsRounds       = 5
	nsCRRPerRound  = 2000 // x rounds: 10,000 samples per proxy
	nsManyServices = 1000 // ClusterIP Services added for the second short-connection table
	nsBackends     = 4    // pods on node B behind the NodePort
	nsWebPort      = 30080
	nsEchoPort     = benchPort // loadgen's echo server in every backend (createServices' endpoints use it too)
)

// nsIperfNodePort is the NodePort of the iperf3 server's port (the
// service of the first backend only: iperf3's control connection and its
// data must reach the same server).
var nsIperfNodePort = map[int]int{iperfTCPPort: 30201, iperfUDPPort: 30202}

// nsCluster is one proxy's cluster.
type nsCluster struct {
	proxy      nsProxy
	api        *apiserver.Server
	ext        *harness.NetNS // the external client, on the underlay
	nodes      [2]*nsNode     // A receives the client's traffic, B has the backends
	backends   []*harness.NetNS
	backendIPs []string
}

type nsNode struct {
	name  string
	ns    *harness.NetNS
	ip    netip.Addr
	bpffs string
	facts string
	pods  *harness.Cgroup // warpd's --cgroup-root: its socket LB serves processes in it
}

// newNSCluster builds proxy's cluster: API server, underlay, client, the
// two nodes with their warpd (and kube-proxy), the backend pods and the
// Services, and waits until the NodePort answers.
func newNSCluster(b *testing.B, env *harness.Env, proxy nsProxy, kubeProxy string) *nsCluster {
	c := &nsCluster{proxy: proxy, api: apiserver.Start(b)}
	kube := c.api.Client(b)
	p := proxy.kind[:3] // namespace names stay short: ipt-a, war-ext, ...
	seg := env.Segment(p+"-ul", "10.200.0.0/24", "")
	c.ext = env.NetNS(p + "-ext")
	seg.Attach(c.ext, "eth0", 50, true)
	// Short connections from one client leave many sockets in TIME_WAIT.
	c.ext.Exec(b, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000")
	for i := range c.nodes {
		n := &nsNode{name: fmt.Sprintf("node-%c", 'a'+i), ns: env.NetNS(fmt.Sprintf("%s-%c", p, 'a'+i)), bpffs: env.BPFFS(),
			pods: env.Cgroup(fmt.Sprintf("%s-%c", p, 'a'+i))}
		n.ip, _ = seg.Attach(n.ns, "eth0", 11+i)
		n.ns.Exec(b, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		n.facts = filepath.Join(env.TempDir, p+"-"+n.name+".json")
		cidr := fmt.Sprintf("10.244.%d.0/24", i+1)
		obj, err := kube.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name},
			Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip.String()}}
		if _, err := kube.CoreV1().Nodes().UpdateStatus(context.Background(), obj, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		kc := c.api.BridgeInto(b, n.ns)
		warpd := []string{filepath.Join(harness.BinDir(), "warpd"), "--kubeconfig", kc, "--node-name", n.name, "--node-ip", n.ip.String(),
			"--cgroup-root", n.pods.Path, "--bpffs-root", n.bpffs, "--node-facts", n.facts, "--listen", "127.0.0.1:9090",
			"--routing", "native", "--cluster-cidr", "10.244.0.0/16", "--service-cidr", apiserver.ServiceCIDR}
		if proxy.kind == "warpd" {
			warpd = append(warpd, "--lb-attach", "tc")
		} else if proxy.kind != "none" {
			n.ns.Start(b, kubeProxyArgv(b, kubeProxy, env.TempDir, kc, proxy.kind, n.name)...)
		}
		n.ns.Start(b, warpd...)
		harness.WaitFor(b, "warpd on "+n.ns.Name+" to publish the node's facts", 60*time.Second, func() bool {
			_, err := os.Stat(n.facts)
			return err == nil
		})
		c.nodes[i] = n
	}
	nodeB := c.nodes[1]
	veth := env.Plugin(b, "warp-veth").In(nodeB.ns)
	conf := harness.ConfigJSON(b, harness.NetConf("bench", "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"nodeFacts": nodeB.facts, "bpffsRoot": nodeB.bpffs,
		"ipam": map[string]any{"type": "warp-ipam", "ranges": [][]map[string]any{{{"subnet": "podCIDR"}}},
			"nodeFacts": nodeB.facts, "dataDir": filepath.Join(env.TempDir, p+"-ipam"), "detectConflicts": false}}))
	var endpoints strings.Builder
	for i := range nsBackends {
		pod := env.NetNS(fmt.Sprintf("%s-s%d", p, i))
		res := harness.ParseResult(b, veth.MustSucceed(b, harness.Call{Command: "ADD", ContainerID: pod.Name, Netns: pod.Path, IfName: "eth0", Config: conf}))
		cmd := pod.Start(b, loadgen(b), "serve", "--tcp", fmt.Sprintf(":%d", nsEchoPort), "--cpu", strconv.Itoa(clientCPU))
		harness.WaitFor(b, "loadgen serve in "+pod.Name, 20*time.Second, func() bool { return strings.Contains(harness.Output(cmd), "ready") })
		c.backends, c.backendIPs = append(c.backends, pod), append(c.backendIPs, res.IPs[0].Address.IP.String())
		fmt.Fprintf(&endpoints, "\n- {addresses: [%q], nodeName: %s, conditions: {ready: true}}", res.IPs[0].Address.IP, nodeB.name)
	}
	eps := strings.Split(strings.TrimPrefix(endpoints.String(), "\n"), "\n")
	c.api.Apply(b, fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  ports: [{name: tcp, port: 80, protocol: TCP, targetPort: %[1]d, nodePort: %[2]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: tcp, port: %[1]d, protocol: TCP}]
endpoints:
%[3]s
---
apiVersion: v1
kind: Service
metadata: {name: iperf, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.81
  ports: [{name: tcp, port: %[4]d, protocol: TCP, nodePort: %[5]d}, {name: ctl, port: %[6]d, protocol: TCP, nodePort: %[7]d}, {name: udp, port: %[6]d, protocol: UDP, nodePort: %[7]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: iperf-1, namespace: default, labels: {kubernetes.io/service-name: iperf}}
addressType: IPv4
ports: [{name: tcp, port: %[4]d, protocol: TCP}, {name: ctl, port: %[6]d, protocol: TCP}, {name: udp, port: %[6]d, protocol: UDP}]
endpoints:
%[8]s
`, nsEchoPort, nsWebPort, strings.Join(eps, "\n"), iperfTCPPort, nsIperfNodePort[iperfTCPPort], iperfUDPPort, nsIperfNodePort[iperfUDPPort], eps[0]))
	if proxy.kind == "none" {
		c.ext.Exec(b, "ip", "route", "add", "10.244.0.0/16", "via", c.nodes[0].ip.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	addr := c.webAddr()
	out, err := c.ext.Run(ctx, loadgen(b), "probe", "--addr", addr, "--timeout", "2m")
	if _, err := parseProbe(out, strings.Split(addr, ","), err); err != nil {
		b.Fatalf("%s: %s does not answer: %v", proxy.name, addr, err)
	}
	return c
}

// webAddr is where the client's short connections go: node A's NodePort,
// or without a proxy every backend's pod address (loadgen picks one per
// connection, as the service spreads them).
func (c *nsCluster) webAddr() string {
	if c.proxy.kind != "none" {
		return fmt.Sprintf("%s:%d", c.nodes[0].ip, nsWebPort)
	}
	var addrs []string
	for _, ip := range c.backendIPs {
		addrs = append(addrs, fmt.Sprintf("%s:%d", ip, nsEchoPort))
	}
	return strings.Join(addrs, ",")
}

// iperfDial maps the iperf3 server's port to where the client sends.
func (c *nsCluster) iperfDial(port int) (string, int) {
	if c.proxy.kind == "none" {
		return c.backendIPs[0], port
	}
	return c.nodes[0].ip.String(), nsIperfNodePort[port]
}

// nsResult accumulates one proxy's measurements over the rounds.
type nsResult struct {
	lat             []float64 // µs, every short connection
	crrSecs         float64
	crrSoftirq      time.Duration
	udpPPS, tcpGbps []float64 // per round
	udpPkts         float64
	udpSoftirq      time.Duration
	tcpBytes        float64
	udpProgs        map[string]progCost // warpd's north-south programs on both nodes, during the UDP runs
	tcpProgs        map[string]progCost // and during the bulk TCP runs
}

// waitServices waits until node A's proxy serves the last of n Services
// createServices made (the ClusterIPs from svcIP(0) on, whose backends
// are this cluster's), dialled from node A itself: kube-proxy programs
// them all in one sync; warpd's socket LB serves node A's pods' cgroup.
func (c *nsCluster) waitServices(b *testing.B, n int) {
	if c.proxy.kind == "none" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	start, addr := time.Now(), svcIP(n-1)+":80"
	out, err := c.nodes[0].pods.Run(ctx, c.nodes[0].ns, "", loadgen(b), "probe", "--addr", addr, "--timeout", "5m")
	if _, err := parseProbe(out, []string{addr}, err); err != nil {
		b.Fatalf("%s with %d Services: %v", c.proxy.name, n, err)
	}
	b.Logf("%s: %d Services answer (%v)", c.proxy.name, n, time.Since(start).Round(time.Millisecond))
}

// shortConns runs one round of short connections against c.
func (c *nsCluster) shortConns(b *testing.B, r *nsResult, samples int) {
	soft0 := softirqTime(b)
	rep := c.client(b, "crr", c.webAddr(), samples)
	r.crrSoftirq += softirqTime(b) - soft0
	r.lat, r.crrSecs = append(r.lat, rep.Latencies...), r.crrSecs+rep.Elapsed
}

// measure runs one round of every measurement against c.
func (c *nsCluster) measure(b *testing.B, r *nsResult, crrSamples int) {
	c.shortConns(b, r, crrSamples)
	progs0 := c.progStats()
	soft0 := softirqTime(b)
	pps, _ := iperfTo(b, c.ext, c.backends[0], c.iperfDial, "udp", 1)
	r.udpSoftirq += softirqTime(b) - soft0
	r.udpPPS, r.udpPkts = append(r.udpPPS, pps), r.udpPkts+pps*iperfSeconds
	progs1 := c.progStats()
	r.udpProgs = addProgCosts(r.udpProgs, progs0, progs1)

	bps, _ := iperfTo(b, c.ext, c.backends[0], c.iperfDial, "", 1)
	r.tcpGbps, r.tcpBytes = append(r.tcpGbps, bps/1e9), r.tcpBytes+bps/8*iperfSeconds
	r.tcpProgs = addProgCosts(r.tcpProgs, progs1, c.progStats())
}

// addProgCosts adds what each program ran between two readings to sum.
func addProgCosts(sum, before, after map[string]progCost) map[string]progCost {
	if sum == nil {
		sum = map[string]progCost{}
	}
	for name, a := range after {
		d := sum[name]
		sum[name] = progCost{d.runs + a.runs - before[name].runs, d.time + a.time - before[name].time}
	}
	return sum
}

// progStats is the run-time statistics of warpd's north-south programs on
// both nodes, by "node/program" (none for kube-proxy's clusters).
func (c *nsCluster) progStats() map[string]progCost {
	out := map[string]progCost{}
	if c.proxy.kind != "warpd" {
		return out
	}
	for _, n := range c.nodes {
		for name, s := range progStats(filepath.Join(bpfnodeport.Dir(n.bpffs), "progs")) {
			out[n.name+"/"+name] = s
		}
	}
	return out
}

// client runs a loadgen client in the external client's namespace, pinned
// to the backends' CPU, and returns its report with every latency.
func (c *nsCluster) client(b *testing.B, mode, addr string, samples int) report.Report {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.ext.Run(ctx, loadgen(b), mode, "--addr", addr, "--n", strconv.Itoa(samples), "--timeout", "3m",
		"--cpu", strconv.Itoa(clientCPU), "--samples")
	return parseReport(b, mode+" "+addr+" from the external client", out, err)
}

// softirqTime is the time all CPUs have spent in softirq context so far
// (/proc/stat, sampled at every timer tick: the kernel has no precise
// IRQ time accounting here).
func softirqTime(b *testing.B) time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq ...
	if len(f) < 8 || f[0] != "cpu" {
		b.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	ticks, err := strconv.ParseInt(f[7], 10, 64)
	if err != nil {
		b.Fatalf("/proc/stat softirq %q: %v", f[7], err)
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// publishNorthSouth prints and publishes the northsouth block.
func publishNorthSouth(b *testing.B, clusters []*nsCluster, res, crr []nsResult, rounds, perRound, many int) {
	label, q := quantile(len(res[0].lat))
	rate := func(r nsResult) float64 { return float64(len(r.lat)) / r.crrSecs }
	softConn := func(r nsResult) float64 { return float64(r.crrSoftirq.Microseconds()) / float64(len(r.lat)) }
	softPkt := func(r nsResult) float64 { return float64(r.udpSoftirq.Nanoseconds()) / r.udpPkts }
	span := func(v []float64, format string) string {
		return fmt.Sprintf(format+" ("+format+"–"+format+")", median(v), slices.Min(v), slices.Max(v))
	}
	byKind := map[string]nsResult{}
	var md strings.Builder
	fmt.Fprintf(&md, "| proxy | conn/s | p50 | p90 | %s | softirq µs per conn | UDP64 kpps (min–max) | softirq ns per packet | bulk TCP Gbit/s (min–max) |\n"+
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", label)
	for i, c := range clusters {
		r := res[i]
		byKind[c.proxy.kind] = r
		kpps := make([]float64, len(r.udpPPS))
		for j, v := range r.udpPPS {
			kpps[j] = v / 1e3
		}
		fmt.Fprintf(&md, "| %s | %.0f | %s | %s | %s | %.0f | %s | %.0f | %s |\n", c.proxy.name, rate(r),
			us(percentile(r.lat, 0.5)), us(percentile(r.lat, 0.9)), us(percentile(r.lat, q)), softConn(r),
			span(kpps, "%.0f"), softPkt(r), span(r.tcpGbps, "%.2f"))
	}
	w, haveW := byKind["warpd"]
	if haveW {
		md.WriteString("\nwarpd against each kube-proxy (above 1: warpd is better):\n\n| against | conn/s | " + label +
			" | UDP64 packets/s | softirq per packet | softirq per conn | bulk TCP |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range clusters {
			r := byKind[c.proxy.kind]
			if c.proxy.kind != "iptables" && c.proxy.kind != "nftables" {
				continue
			}
			fmt.Fprintf(&md, "| %s | %.2fx | %.2fx | %.2fx | %.2fx | %.2fx | %.2fx |\n", c.proxy.name, rate(w)/rate(r),
				percentile(r.lat, q)/percentile(w.lat, q), median(w.udpPPS)/median(r.udpPPS), softPkt(r)/softPkt(w),
				softConn(r)/softConn(w), median(w.tcpGbps)/median(r.tcpGbps))
		}
	}
	if none, ok := byKind["none"]; ok {
		md.WriteString("\nWhat each proxy adds to the no-proxy floor (softirq time over the pod-IP row's; negative: less than plain forwarding):\n\n" +
			"| proxy | softirq µs per conn | softirq ns per packet |\n|---|---:|---:|\n")
		for _, c := range clusters {
			if c.proxy.kind == "none" {
				continue
			}
			r := byKind[c.proxy.kind]
			fmt.Fprintf(&md, "| %s | %+.0f | %+.0f |\n", c.proxy.name, softConn(r)-softConn(none), softPkt(r)-softPkt(none))
		}
	}
	fmt.Fprintf(&md, "\nShort connections again, with %d more ClusterIP Services (%d endpoints each) in every cluster:\n\n"+
		"| proxy | conn/s | p50 | p90 | %s | softirq µs per conn | conn/s: warpd / this |\n|---|---:|---:|---:|---:|---:|---:|\n", many, nsBackends, label)
	var wm nsResult
	for i, c := range clusters {
		if c.proxy.kind == "warpd" {
			wm = crr[i]
		}
	}
	for i, c := range clusters {
		r := crr[i]
		ratio := "—"
		if len(wm.lat) > 0 {
			ratio = fmt.Sprintf("%.2fx", rate(wm)/rate(r))
		}
		fmt.Fprintf(&md, "| %s | %.0f | %s | %s | %s | %.0f | %s |\n", c.proxy.name, rate(r),
			us(percentile(r.lat, 0.5)), us(percentile(r.lat, 0.9)), us(percentile(r.lat, q)), softConn(r), ratio)
	}
	if haveW && len(w.udpProgs) > 0 {
		md.WriteString("\nwarpd's north-south programs (BPF run-time statistics; the program's own time, not the redirect or the stack around it):\n\n" +
			"| program | UDP64: runs per delivered packet | ns per run | ns per packet | bulk TCP: runs per MB | ns per run | µs per MB |\n|---|---:|---:|---:|---:|---:|---:|\n")
		mb := w.tcpBytes / 1e6
		for _, name := range slices.Sorted(maps.Keys(w.udpProgs)) {
			u, t := w.udpProgs[name], w.tcpProgs[name]
			if u.runs == 0 && t.runs == 0 {
				continue // np_xdp: attached nowhere in tc mode
			}
			perRun := func(c progCost) float64 { return float64(c.time.Nanoseconds()) / max(float64(c.runs), 1) }
			fmt.Fprintf(&md, "| %s | %.2f | %.0f | %.0f | %.1f | %.0f | %.1f |\n", name, float64(u.runs)/w.udpPkts, perRun(u),
				float64(u.time.Nanoseconds())/w.udpPkts, float64(t.runs)/mb, perRun(t), float64(t.time.Nanoseconds())/1e3/mb)
		}
	}
	fmt.Fprintf(&md, "\n%d rounds, the order of the proxies rotating and reversing every round; per round and proxy: %d short connections "+
		"(connect, 1-byte echo, close; %d samples per row in all) from the external client to node A's NodePort (%d backends on node B; "+
		"without a proxy to a random backend's pod IP), iperf3 64-byte UDP to the first backend for %d s (packets delivered to its UDP stack per second; "+
		"median of the rounds), iperf3 bulk TCP, 1 stream, for %d s (median). "+
		"Softirq: CPU time all CPUs spent in softirq context during the runs (/proc/stat, tick-sampled) per connection or per delivered packet: "+
		"every hop after the client's send (switch, node A, node B, the pod's veth) runs there, so the proxy's per-packet work is in it, and so is "+
		"any other process's softirq on this machine.\n", rounds, perRound, len(res[0].lat), nsBackends, iperfSeconds, iperfSeconds)
	publish(b, "northsouth", md.String())
}
