package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/loadgen/report"
)

// --- BPF run-time statistics: the profile of warpd's datapath ---

// progCost is a program's accumulated run count and run time.
type progCost struct {
	runs uint64
	time time.Duration
}

// enableStats turns on the kernel's BPF run-time statistics for as long as
// the returned stop is not called (BPF_ENABLE_STATS: a file descriptor, so
// nothing global is left changed, whatever happens to this process) and
// returns a reader of warpd's pinned programs' statistics.
func enableStats(b *testing.B) (read func() map[string]progCost, stop func()) {
	closer, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Logf("no BPF run-time statistics: %v", err)
		return func() map[string]progCost { return nil }, func() {}
	}
	return func() map[string]progCost {
		if globalBPFFS == "" {
			return map[string]progCost{}
		}
		return progStats(filepath.Join(servicelb.Dir(globalBPFFS), "progs"))
	}, func() { closer.Close() }
}

// progStats reads the run-time statistics of the programs pinned in dir,
// by pin name.
func progStats(dir string) map[string]progCost {
	out := map[string]progCost{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue
		}
		if st, err := p.Stats(); err == nil {
			out[e.Name()] = progCost{st.RunCount, st.Runtime}
		}
		p.Close()
	}
	return out
}

// globalBPFFS is the warpd node's bpffs root, for enableStats.
var globalBPFFS string

// addProfile adds what warpd's programs ran between two readings over
// conns connections to target.
func (pb *proxyBench) addProfile(target string, before, after map[string]progCost, conns int) {
	if pb.profile == nil {
		pb.profile = map[string]map[string]progCost{}
	}
	p := pb.profile[target]
	if p == nil {
		p = map[string]progCost{}
		pb.profile[target] = p
	}
	for name, a := range after {
		d := progCost{a.runs - before[name].runs, a.time - before[name].time}
		cur := p[name]
		p[name] = progCost{cur.runs + d.runs, cur.time + d.time}
	}
	c := p[connectionsKey]
	c.runs += uint64(conns)
	p[connectionsKey] = c
}

// connectionsKey counts the connections in a profile.
const connectionsKey = "(connections)"

// --- short connections ---

// publishShort prints and publishes the short-connection table, its
// ratios and the scale charts.
func (pb *proxyBench) publishShort(res []crrResult, scales []int) {
	var md strings.Builder
	label, q := quantile(len(res[0].lat))
	fmt.Fprintf(&md, "| services | target | conn/s | p50 | p90 | %s | rate / no proxy | rate / warpd |\n|---:|---|---:|---:|---:|---:|---:|---:|\n", label)
	byScale := map[int]map[string]crrResult{}
	for _, r := range res {
		if byScale[r.services] == nil {
			byScale[r.services] = map[string]crrResult{}
		}
		byScale[r.services][r.target] = r
	}
	for _, s := range scales {
		base := byScale[s]["no service proxy, pod IPs"].rate()
		warp := byScale[s]["warpd, ClusterIP"].rate()
		for _, t := range shortTargets {
			r := byScale[s][t.name]
			fmt.Fprintf(&md, "| %d | %s | %.0f | %s | %s | %s | %.3fx | %.2fx |\n", s, t.name, r.rate(),
				us(percentile(r.lat, 0.5)), us(percentile(r.lat, 0.9)), us(percentile(r.lat, q)), r.rate()/base, r.rate()/warp)
		}
	}
	fmt.Fprintf(&md, "\n%d samples per row (%d rounds of %d, the order of the targets rotating and reversing every round); "+
		"connect, 1-byte echo, close, from a pod to ClusterIP %s (10 backends) or to a random one of the 10 backend pods' IPs; client and servers pinned to CPU %d.\n",
		len(res[0].lat), shortRounds, shortPerRun, svcIP(0), clientCPU)
	if len(pb.profile) > 0 {
		fmt.Fprintf(&md, "\nwarpd's programs during its rows (BPF run-time statistics, all scales; the kernel's time in a program, not the syscall around it):\n\n"+
			"| target | program | runs per connection | ns per run | ns per connection |\n|---|---|---:|---:|---:|\n")
		for _, t := range shortTargets {
			p := pb.profile[t.name]
			if p == nil || p[connectionsKey].runs == 0 {
				continue
			}
			conns := float64(p[connectionsKey].runs)
			var total float64
			for _, name := range slices.Sorted(maps.Keys(p)) {
				c := p[name]
				if name == connectionsKey || c.runs == 0 {
					continue
				}
				perConn := float64(c.time.Nanoseconds()) / conns
				total += perConn
				fmt.Fprintf(&md, "| %s | %s | %.2f | %.0f | %.0f |\n", t.name, name, float64(c.runs)/conns, float64(c.time.Nanoseconds())/float64(c.runs), perConn)
			}
			fmt.Fprintf(&md, "| %s | **all** | | | **%.0f** |\n", t.name, total)
		}
	}
	if len(scales) < 2 { // a curve over one scale is a point, and a log axis needs a range
		pb.b.Logf("charts: not drawn for a single scale (WARP_BENCH_SCALES=%d)", scales[0])
	} else {
		rateChart, p99Chart := "bench-proxies-rate.png", "bench-proxies-p99.png"
		pb.chart(res, scales, rateChart, "Short connections through a ClusterIP", "connections/s", func(r crrResult) float64 { return r.rate() })
		pb.chart(res, scales, p99Chart, "Short connections: "+label+" latency", label+" (µs)", func(r crrResult) float64 { return percentile(r.lat, q) })
		fmt.Fprintf(&md, "\n![connections per second by number of services](%s)\n![%s latency by number of services](%s)\n", rateChart, label, p99Chart)
	}
	publish(pb.b, "proxies-short", md.String())
}

// chart draws one line per target over the scales into docs/<file>.
func (pb *proxyBench) chart(res []crrResult, scales []int, file, title, ylabel string, value func(crrResult) float64) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "services (log scale)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	p.Legend.Top = false // bottom right: the y axis starts at 0, the lines run above
	for i, t := range shortTargets {
		var pts plotter.XYs
		for _, s := range scales {
			for _, r := range res {
				if r.target == t.name && r.services == s {
					pts = append(pts, plotter.XY{X: float64(s), Y: value(r)})
				}
			}
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			pb.b.Fatal(err)
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(t.name, line, points)
	}
	p.Add(plotter.NewGrid())
	p.BackgroundColor = color.White
	path := filepath.Join(os.TempDir(), file)
	if os.Getenv(docEnv) == "1" {
		path = filepath.Join(harness.RepoRoot(), "docs", file)
	}
	if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
		pb.b.Fatalf("chart %s: %v", file, err)
	}
	pb.b.Logf("chart: %s", path)
}

// --- long connections and UDP ---

// longAndUDP measures, at the largest scale, request/response on one TCP
// connection, bulk throughput, and UDP request/response on one socket and
// with a new socket per request (as a stub resolver does).
func (pb *proxyBench) longAndUDP(scale int) {
	targets := []target{
		{"no service proxy, pod IPs", "none", nil},
		{"warpd, ClusterIP", "warpd", nil},
		{"kube-proxy iptables, ClusterIP", "iptables", nil},
		{"kube-proxy nftables, ClusterIP", "nftables", nil},
	}
	type row struct {
		rr, udp, udpc            []float64
		rrEl, udpEl, udpcEl, bps float64
	}
	rows := make([]row, len(targets))
	addr := func(t target, svcPort, podPort int) string {
		if t.node == "none" {
			return fmt.Sprintf("%s:%d", pb.nodes[0].ips[0], podPort)
		}
		return fmt.Sprintf("%s:%d", svcIP(0), svcPort)
	}
	for round := range 2 {
		for k := range targets {
			i := k
			if round == 1 {
				i = len(targets) - 1 - k
			}
			t, n := targets[i], pb.node(targets[i].node)
			r := pb.client(n, "rr", addr(t, 80, benchPort), longSamples/2, "--samples")
			rows[i].rr, rows[i].rrEl = append(rows[i].rr, r.Latencies...), rows[i].rrEl+r.Elapsed
			r = pb.client(n, "udprr", addr(t, 53, benchPort), udpSamples/2, "--samples")
			rows[i].udp, rows[i].udpEl = append(rows[i].udp, r.Latencies...), rows[i].udpEl+r.Elapsed
			udpc := addr(t, 53, benchPort)
			if t.node == "none" {
				udpc = podAddrs(pb, benchPort) // spread, as the ClusterIP is
			}
			r = pb.client(n, "udpcrr", udpc, udpSamples/2, "--samples")
			rows[i].udpc, rows[i].udpcEl = append(rows[i].udpc, r.Latencies...), rows[i].udpcEl+r.Elapsed
			r = pb.client(n, "stream", addr(t, 82, sinkPort), 1, "--duration", fmt.Sprintf("%ds", streamSecs))
			rows[i].bps += r.Rate / 2
		}
	}
	label, q := quantile(len(rows[0].rr))
	var md strings.Builder
	fmt.Fprintf(&md, "With %d services. Long connections: 1-byte request/response on one TCP connection; bulk TCP to a sink for %d s (two runs, averaged). "+
		"UDP: 1-byte request/response on one connected socket, and with a new connected socket per request (a stub resolver's pattern).\n\n", scale, streamSecs)
	fmt.Fprintf(&md, "| target | TCP RR p50 | TCP RR %[1]s | bulk Gbit/s | UDP RR p50 | UDP RR %[1]s | UDP new socket per request: req/s | p50 | %[1]s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", label)
	for i, t := range targets {
		r := rows[i]
		fmt.Fprintf(&md, "| %s | %s | %s | %.2f | %s | %s | %.0f | %s | %s |\n", t.name, us(percentile(r.rr, 0.5)), us(percentile(r.rr, q)),
			r.bps*8/1e9, us(percentile(r.udp, 0.5)), us(percentile(r.udp, q)), float64(len(r.udpc))/r.udpcEl, us(percentile(r.udpc, 0.5)), us(percentile(r.udpc, q)))
	}
	fmt.Fprintf(&md, "\n%d samples per latency column; ratios to warpd: ", len(rows[0].rr))
	w := rows[1]
	for i, t := range targets {
		if i == 1 {
			continue
		}
		r := rows[i]
		fmt.Fprintf(&md, "%s: TCP RR p50 %.2fx, bulk %.2fx, UDP new-socket rate %.2fx; ", t.name,
			percentile(r.rr, 0.5)/percentile(w.rr, 0.5), r.bps/w.bps, (float64(len(r.udpc))/r.udpcEl)/(float64(len(w.udpc))/w.udpcEl))
	}
	md.WriteString("(latency: theirs / warpd's, above 1 means warpd is faster; rates: theirs / warpd's).\n")
	publish(pb.b, "proxies-long-udp", md.String())
}

// --- control plane ---

// procStats is CPU time (with waited-for children: kube-proxy runs
// iptables-restore and nft) and peak RSS of a process.
func procStats(pid int) (cpu time.Duration, hwm int64) {
	if st, err := harness.ReadProcStat(pid); err == nil {
		cpu = st.CPU + st.ChildrenCPU
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				hwm = kb << 10
			}
		}
	}
	return cpu, hwm
}

// resetProxyState removes what a proxy programmed, so that its next start
// is a cold one.
func (pb *proxyBench) resetProxyState(n *benchNode) {
	switch n.kind {
	case "warpd":
		if lb, err := servicelb.Open(pb.bpffs, servicelb.Sizes{}); err == nil {
			lb.Detach(pb.hooked.Path)
			lb.Close()
		}
		if err := os.RemoveAll(servicelb.Dir(pb.bpffs)); err != nil {
			pb.b.Fatalf("remove warpd's pins: %v", err)
		}
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := n.ns.Run(ctx, "env", "PATH="+iptablesPath(pb.b, pb.env.TempDir, n.kind), pb.kubeProxy, "--cleanup", "--proxy-mode", n.kind); err != nil {
			pb.b.Logf("kube-proxy --cleanup (%s): %v\n%.2000s", n.kind, err, out)
		}
	}
}

type controlResult struct {
	proxy        string
	coldStart    time.Duration
	delays       []float64 // ms
	churnCPU     time.Duration
	idleCPU      time.Duration
	peakRSS      int64
	churnUpdates int
}

// controlPlane measures, for each proxy alone (the others stopped), a cold
// start with every service already in the API server, the delay from an
// EndpointSlice update to the first new connection that reaches the new
// endpoint, and CPU time and peak RSS over a churn of EndpointSlice
// updates.
func (pb *proxyBench) controlPlane(scale int) {
	if scale <= changeProbes {
		pb.b.Fatalf("the control-plane part needs more than %d services (the largest of WARP_BENCH_SCALES): each change probe moves another service", changeProbes)
	}
	var proxies []*benchNode
	for _, n := range pb.nodes {
		if n.kind != "none" {
			proxies = append(proxies, n)
		}
	}
	for _, n := range proxies {
		pb.stopProxy(n)
	}
	var res []controlResult
	next := 1 // services used for changes, never the same twice
	for _, n := range proxies {
		r := controlResult{proxy: n.kind}
		pb.resetProxyState(n)
		// Cold start: until the probe services all answer.
		addrs := probeAddrs(scale)
		probe, out := startInCgroup(pb.b, pb.cg(n), n.client, loadgen(pb.b), "probe", "--addr", strings.Join(addrs, ","), "--timeout", "5m")
		harness.WaitFor(pb.b, "the cold-start probe to start", 30*time.Second, func() bool { return strings.Contains(out.String(), "ready") })
		pb.startProxy(n)
		waitErr := probe.Wait()
		got, probeErr := parseProbe(out.String(), addrs, waitErr)
		if probeErr != nil {
			pb.b.Fatalf("%s cold start: %v", n.kind, probeErr)
		}
		var last int64
		for _, t := range got {
			last = max(last, t)
		}
		r.coldStart = time.Unix(0, last).Sub(n.started)
		pb.settle(n)

		// One change at a time: service j moves to the who server.
		for range changeProbes {
			j := next
			next++
			r.delays = append(r.delays, pb.changeDelay(n, j))
		}
		pb.settle(n)

		// Churn: updates at a fixed rate, then until the proxy is idle.
		cpu0, _ := procStats(n.proxy.Process.Pid)
		t0 := time.Now()
		for k := range churnUpdates {
			pb.toggleEndpoint(k%scale, k)
			time.Sleep(time.Second / churnRate)
		}
		pb.settle(n)
		cpu1, hwm := procStats(n.proxy.Process.Pid)
		// The same time idle, to tell the churn's cost from the steady one.
		idle := time.Since(t0)
		time.Sleep(min(idle, 20*time.Second))
		cpu2, _ := procStats(n.proxy.Process.Pid)
		r.churnCPU, r.peakRSS, r.churnUpdates = cpu1-cpu0, hwm, churnUpdates
		r.idleCPU = time.Duration(float64(cpu2-cpu1) * float64(idle) / float64(min(idle, 20*time.Second)))
		pb.stopProxy(n)
		res = append(res, r)
	}
	var md strings.Builder
	label, q := quantile(changeProbes)
	fmt.Fprintf(&md, "With %d services and their EndpointSlices (10 endpoints each) in the API server; each proxy measured alone (the others stopped).\n\n", scale)
	fmt.Fprintf(&md, "| proxy | cold start to every service programmed | change to datapath p50 | %s | CPU s for %d updates | same time idle | peak RSS |\n|---|---:|---:|---:|---:|---:|---:|\n", label, churnUpdates)
	for _, r := range res {
		fmt.Fprintf(&md, "| %s | %.2f s | %.0f ms | %.0f ms | %.2f | %.2f | %.0f MiB |\n", proxyName(r.proxy), r.coldStart.Seconds(),
			percentile(r.delays, 0.5), percentile(r.delays, q), r.churnCPU.Seconds(), r.idleCPU.Seconds(), float64(r.peakRSS)/(1<<20))
	}
	if w := res[0]; w.proxy == "warpd" && len(res) > 1 {
		fmt.Fprintf(&md, "\nRatios to warpd: ")
		for _, r := range res[1:] {
			fmt.Fprintf(&md, "%s cold start %.1fx, change p50 %.1fx, churn CPU %.1fx, RSS %.1fx; ", proxyName(r.proxy), r.coldStart.Seconds()/w.coldStart.Seconds(),
				percentile(r.delays, 0.5)/percentile(w.delays, 0.5), r.churnCPU.Seconds()/max(w.churnCPU.Seconds(), 0.01), float64(r.peakRSS)/float64(w.peakRSS))
		}
		fmt.Fprintf(&md, "(above 1: warpd is faster or smaller).\n")
	}
	fmt.Fprintf(&md, "\n"+
		"Cold start: from the process's start to the moment a client in a pod gets an answer from each of %d services spread over the range (polled every 2 ms). "+
		"Change: from the EndpointSlice update call to the first new connection that reaches the new endpoint (%d changes, one at a time, each to another service). "+
		"Churn: %d EndpointSlice updates at %d per second, CPU time of the proxy process and the children it waited for (kube-proxy's iptables-restore, nft) until it is idle again; "+
		"peak RSS is the process's high-water mark (VmHWM) since its start.\n", len(probeAddrs(scale)), changeProbes, churnUpdates, churnRate)
	publish(pb.b, "proxies-control", md.String())
}

func proxyName(kind string) string {
	if kind == "warpd" {
		return "warpd"
	}
	return "kube-proxy " + kind
}

// settle waits until the proxy has used no CPU for a second (at most a
// minute): its syncs are done.
func (pb *proxyBench) settle(n *benchNode) {
	deadline := time.Now().Add(time.Minute)
	prev, _ := procStats(n.proxy.Process.Pid)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		cur, _ := procStats(n.proxy.Process.Pid)
		if cur-prev < 20*time.Millisecond {
			return
		}
		prev = cur
	}
}

// changeDelay points service j's port 80 at the who server only and
// returns how long (ms) until a new connection reaches it.
func (pb *proxyBench) changeDelay(n *benchNode, j int) float64 {
	ctx := context.Background()
	addr := svcIP(j) + ":80"
	cmd, out := pb.startProbe(n, addr)
	harness.WaitFor(pb.b, "the change probe to start", 30*time.Second, func() bool { return strings.Contains(out.String(), "ready") })
	api := pb.kube.DiscoveryV1().EndpointSlices("default")
	es, err := api.Get(ctx, svcName(j)+"-1", metav1.GetOptions{})
	if err != nil {
		pb.b.Fatal(err)
	}
	es.Ports[0].Port = ptr(int32(whoPort))
	es.Endpoints = es.Endpoints[:1] // the first server, which runs the who server
	t0 := time.Now()
	if _, err := api.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		pb.b.Fatal(err)
	}
	cmd.Wait()
	got, err := parseProbe(out.String(), []string{addr}, nil)
	if err != nil {
		pb.b.Fatalf("%s: change of %s: %v", n.kind, svcName(j), err)
	}
	return float64(time.Unix(0, got[addr]).Sub(t0).Microseconds()) / 1000
}

// startProbe starts a who-probe of addr in the node's client pod.
func (pb *proxyBench) startProbe(n *benchNode, addr string) (*exec.Cmd, *harness.OutputBuffer) {
	return startInCgroup(pb.b, pb.cg(n), n.client, loadgen(pb.b), "probe", "--who", "x", "--addr", addr, "--timeout", "60s")
}

// toggleEndpoint flips the readiness of one endpoint of service i (the
// k-th update): a change every proxy must program.
func (pb *proxyBench) toggleEndpoint(i, k int) {
	ctx := context.Background()
	api := pb.kube.DiscoveryV1().EndpointSlices("default")
	es, err := api.Get(ctx, svcName(i)+"-1", metav1.GetOptions{})
	if err != nil {
		pb.b.Fatal(err)
	}
	e := &es.Endpoints[len(es.Endpoints)-1]
	if e.Conditions.Ready == nil {
		e.Conditions.Ready = ptr(true)
	}
	e.Conditions = discoveryv1.EndpointConditions{Ready: ptr(!*e.Conditions.Ready)}
	if _, err := api.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		pb.b.Fatalf("churn update %d: %v", k, err)
	}
}

// --- connect() cost against the number of frontends ---

// connectCost measures connect() through the LB with 1 and with 100,000
// frontends in the maps: a load balancer of its own (private bpffs and
// cgroup), a pod connecting to a ClusterIP whose backend is an echo server
// on the pod's own loopback, so the path is as short as it gets and the
// LB's share shows. BPF statistics give lb_connect4's own time.
func (pb *proxyBench) connectCost() {
	b, env := pb.b, pb.env
	pod := env.NetNS("lbcost")
	cg := env.Cgroup("lbcost")
	srv := pod.Start(b, loadgen(b), "serve", "--tcp", "127.0.0.1:9000", "--cpu", strconv.Itoa(clientCPU))
	harness.WaitFor(b, "loadgen serve", 20*time.Second, func() bool { return strings.Contains(harness.Output(srv), "ready") })
	root := env.BPFFS()
	const many = 100000
	lb, err := servicelb.Open(root, servicelb.Sizes{Services: 131072, Backends: 131072})
	if err != nil {
		b.Fatal(err)
	}
	defer lb.Close()
	if err := lb.Attach(cg.Path); err != nil {
		b.Fatal(err)
	}
	defer lb.Detach(cg.Path)
	be := []servicelb.Backend{{Addr: netip.MustParseAddr("127.0.0.1"), Port: 9000}}
	fe := servicelb.Frontend{Addr: netip.MustParseAddr("10.97.0.1"), Port: 80, Proto: l4.TCP}
	if err := lb.Upsert(servicelb.Service{Frontend: fe, ID: 1, Backends: be}); err != nil {
		b.Fatal(err)
	}
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(servicelb.Dir(root), "progs", "lb_connect4"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer prog.Close()
	_, stop := enableStats(b)
	defer stop()
	type row struct {
		frontends int
		lat       []float64
		elapsed   float64
		nsPerRun  float64
	}
	measure := func(frontends int) row {
		r := row{frontends: frontends}
		for range 2 {
			st0, _ := prog.Stats()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			out, err := cg.Run(ctx, pod, "", loadgen(b), "crr", "--addr", "10.97.0.1:80", "--n", "5000", "--samples", "--cpu", strconv.Itoa(clientCPU))
			cancel()
			rep := parseReport(b, "connect-cost", out, err)
			st1, _ := prog.Stats()
			r.lat, r.elapsed = append(r.lat, rep.Latencies...), r.elapsed+rep.Elapsed
			if runs := st1.RunCount - st0.RunCount; runs > 0 {
				r.nsPerRun += float64((st1.Runtime - st0.Runtime).Nanoseconds()) / float64(runs) / 2
			}
		}
		return r
	}
	one := measure(1)
	start := time.Now()
	for i := 1; i < many; i++ {
		f := servicelb.Frontend{Addr: netip.AddrFrom4([4]byte{10, 98, byte(i >> 8), byte(i)}), Port: 80, Proto: l4.TCP}
		if err := lb.Upsert(servicelb.Service{Frontend: f, ID: uint32(i + 1), Backends: be}); err != nil {
			b.Fatalf("frontend %d: %v", i, err)
		}
	}
	b.Logf("%d frontends written in %v", many, time.Since(start).Round(time.Millisecond))
	lots := measure(many)
	var md strings.Builder
	label, q := quantile(len(one.lat))
	fmt.Fprintf(&md, "| frontends in the maps | lb_connect4 ns per run | conn/s | p50 | %s |\n|---:|---:|---:|---:|---:|\n", label)
	for _, r := range []row{one, lots} {
		fmt.Fprintf(&md, "| %d | %.0f | %.0f | %s | %s |\n", r.frontends, r.nsPerRun, float64(len(r.lat))/r.elapsed, us(percentile(r.lat, 0.5)), us(percentile(r.lat, q)))
	}
	fmt.Fprintf(&md, "\nA pod connects (connect, 1-byte echo, close) to a ClusterIP whose one backend is an echo server on the pod's own loopback, %d times per row; "+
		"lb_connect4's time from the kernel's BPF run-time statistics. 100,000 frontends: 200,000 entries in lb_services (a header and a slot each) and 100,000 in lb_backends.\n", len(one.lat))
	publish(b, "connect-cost", md.String())
}

func parseReport(b *testing.B, what, out string, err error) (r report.Report) {
	i := strings.Index(out, "{")
	if err != nil || i < 0 || json.Unmarshal([]byte(out[i:]), &r) != nil || r.Errors > 0 {
		b.Fatalf("loadgen %s: %v\n%.2000s", what, err, out)
	}
	return r
}
