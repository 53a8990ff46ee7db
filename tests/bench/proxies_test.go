package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
	"github.com/warpnet/warpnet/tests/loadgen/report"
)

// BenchmarkServiceProxies measures warpd side by side with the real
// kube-proxy (v1.34.3, iptables and nftables modes) and with a node that has
// no service proxy at all, in one run, against one real kube-apiserver.
// Each proxy has a node of its own (a network namespace) with the same
// routed warp-veth pods at the same addresses: a client pod and ten server
// pods, so every ClusterIP has ten backends; all four nodes see the same
// Services and EndpointSlices. See docs/benchmarks.md for what each table
// means. Run with -benchtime 1x (make bench).
//
// WARP_BENCH_SCALES overrides the service counts (default "1,1000,10000");
// the largest is the one the long-connection, UDP and control-plane
// measurements run at. WARP_BENCH_PARTS picks the parts (short, long,
// control, connect; default all) and WARP_BENCH_PROXIES the service proxies
// (warpd, iptables, nftables; default all), e.g. warpd's control plane
// alone (cold start, change delay, churn CPU, peak RSS), in minutes:
//
//	WARP_BENCH_PARTS=control WARP_BENCH_PROXIES=warpd WARP_BENCH_SCALES=10000
//
// The short and long parts compare every proxy. A run of fewer proxies
// only prints its tables: the document's compare them all.
func BenchmarkServiceProxies(b *testing.B) {
	harness.RequireTools(b, filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"), "nft", "iptables-legacy-restore", "socat")
	parts := benchChoice(b, "WARP_BENCH_PARTS", "short", "long", "control", "connect")
	proxies := benchChoice(b, "WARP_BENCH_PROXIES", "warpd", "iptables", "nftables")
	if len(proxies) < 3 {
		if parts["short"] || parts["long"] {
			b.Fatal("the short and long parts compare every proxy: with WARP_BENCH_PROXIES, set WARP_BENCH_PARTS=control and/or connect")
		}
		b.Setenv(docEnv, "") // print only
	}
	scales := []int{1, 1000, 10000}
	if v := os.Getenv("WARP_BENCH_SCALES"); v != "" {
		scales = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("WARP_BENCH_SCALES=%s", v)
			}
			scales = append(scales, n)
		}
	}
	var kubeProxy string
	if proxies["iptables"] || proxies["nftables"] {
		kubeProxy = kubeProxyBinary(b)
	}
	env := harness.New(b)
	api := apiserver.Start(b)
	pb := &proxyBench{b: b, env: env, api: api, kube: fastClient(b, api), kubeProxy: kubeProxy,
		hooked: env.Cgroup("pods-warpd"), plain: env.Cgroup("pods-plain"), bpffs: env.BPFFS()}
	globalBPFFS = pb.bpffs
	for _, kind := range []string{"none", "warpd", "iptables", "nftables"} {
		if proxies[kind] || kind == "none" && (parts["short"] || parts["long"]) {
			pb.nodes = append(pb.nodes, pb.newNode(kind))
		}
	}
	pb.createNodes()
	for _, n := range pb.nodes {
		pb.startProxy(n)
	}

	var crr []crrResult
	created := 0
	for _, scale := range scales {
		createServices(pb.b, pb.kube, pb.nodes[0].ips, created, scale)
		created = scale
		pb.waitProgrammed(scale)
		if parts["short"] {
			crr = append(crr, pb.shortConnections(scale)...)
		}
	}
	if parts["short"] {
		pb.publishShort(crr, scales)
	}
	if parts["long"] {
		pb.longAndUDP(created)
	}
	if parts["control"] {
		pb.controlPlane(created)
	}
	if parts["connect"] {
		pb.connectCost()
	}
}

// benchChoice reads a comma-separated subset of choices from the
// environment variable name (unset: all of them).
func benchChoice(b *testing.B, name string, choices ...string) map[string]bool {
	out := map[string]bool{}
	v := os.Getenv(name)
	if v == "" {
		for _, c := range choices {
			out[c] = true
		}
		return out
	}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(choices, f) {
			b.Fatalf("%s=%s: %q is not one of %s", name, v, f, strings.Join(choices, ", "))
		}
		out[f] = true
	}
	return out
}

// proxyBench is the bench's state.
type proxyBench struct {
	b         *testing.B
	env       *harness.Env
	api       *apiserver.Server
	kube      kubernetes.Interface
	kubeProxy string
	hooked    *harness.Cgroup // the warpd node's pods: warpd's hooks act here
	plain     *harness.Cgroup // the other nodes' pods: no hooks
	bpffs     string
	nodes     []*benchNode
	profile   map[string]map[string]progCost // by target: warpd's programs during its short connections
}

// benchNode is one simulated node with its pods and its service proxy.
type benchNode struct {
	kind    string // none, warpd, iptables, nftables
	ns      *harness.NetNS
	client  *harness.NetNS
	servers []*harness.NetNS
	ips     []string // the servers' addresses (the same on every node)
	proxy   *exec.Cmd
	kc      string // kubeconfig inside the node
	started time.Time
}

// nodeName is the Kubernetes Node a kube-proxy node runs as.
func (n *benchNode) nodeName() string { return "bench-" + n.kind }

// cg is the cgroup the node's client processes are born in.
func (pb *proxyBench) cg(n *benchNode) *harness.Cgroup {
	if n.kind == "warpd" {
		return pb.hooked
	}
	return pb.plain
}

const (
	benchServers = 10
	benchPort    = 8080 // echo (TCP, UDP) on every server
	sinkPort     = 8082 // TCP sink
	whoPort      = 8081 // answers "who:<name>" on the first server
	clientCPU    = 1    // client and servers pinned here: the whole path on one CPU, the same for every node
	podSubnet    = "10.244.1.0/24"
)

// svcIP is the ClusterIP of service i (from 10.96.16.0 on: below are the
// API server's own).
func svcIP(i int) string { return fmt.Sprintf("10.96.%d.%d", 16+i/256, i%256) }

func svcName(i int) string { return fmt.Sprintf("svc-%05d", i) }

func kubeProxyBinary(b *testing.B) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(harness.RepoRoot(), "hack", "build-kube.sh"), "kube-proxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build kube-proxy: %v\n%s", err, out)
	}
	return k8s.KubeBinary("kube-proxy")
}

// fastClient is an admin client without client-side throttling worth the
// name: creating 20,000 objects at 100/s would take minutes.
func fastClient(b *testing.B, api *apiserver.Server) kubernetes.Interface {
	rc := api.RESTConfig()
	rc.QPS, rc.Burst = 5000, 10000
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// newNode builds a node: a namespace with conntrack on (the same nftables
// table in every node, as a real node always has some), a client pod and
// the server pods, all routed warp-veth pods.
func (pb *proxyBench) newNode(kind string) *benchNode {
	b, env := pb.b, pb.env
	n := &benchNode{kind: kind, ns: env.NetNS("node-" + kind)}
	rules := filepath.Join(env.TempDir, "conntrack-"+kind+".nft")
	if err := os.WriteFile(rules, []byte("table inet bench {\n\tchain conntrack {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tct state invalid drop\n\t}\n}\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	n.ns.Exec(b, "nft", "-f", rules)
	veth := env.Plugin(b, "warp-veth").In(n.ns)
	conf := harness.ConfigJSON(b, harness.NetConf("bench", "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"ipam": map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(env.TempDir, "ipam-"+kind), "detectConflicts": false,
			"ranges": [][]map[string]any{{{"subnet": podSubnet}}}}}))
	add := func(name string) (*harness.NetNS, string) {
		pod := env.NetNS(kind + "-" + name)
		res := harness.ParseResult(b, veth.MustSucceed(b, harness.Call{Command: "ADD", ContainerID: kind + "-" + name, Netns: pod.Path, IfName: "eth0", Config: conf}))
		return pod, res.IPs[0].Address.IP.String()
	}
	n.client, _ = add("client")
	// Short connections from one client leave many sockets in TIME_WAIT.
	n.client.Exec(b, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000")
	for i := range benchServers {
		pod, ip := add(fmt.Sprintf("s%d", i))
		n.servers, n.ips = append(n.servers, pod), append(n.ips, ip)
		args := []string{loadgen(b), "serve", "--tcp", fmt.Sprintf(":%d", benchPort), "--udp", fmt.Sprintf(":%d", benchPort),
			"--sink", fmt.Sprintf(":%d", sinkPort), "--cpu", strconv.Itoa(clientCPU)}
		if i == 0 {
			args = append(args, "--who", fmt.Sprintf(":%d", whoPort), "--name", "s0")
		}
		cmd := pod.Start(b, args...)
		harness.WaitFor(b, "loadgen serve in "+pod.Name, 20*time.Second, func() bool { return strings.Contains(harness.Output(cmd), "ready") })
	}
	if kind != "none" {
		n.kc = pb.api.BridgeInto(b, n.ns)
	}
	return n
}

// createNodes creates the Node objects kube-proxy waits for.
func (pb *proxyBench) createNodes() {
	for _, n := range pb.nodes {
		if n.kind != "iptables" && n.kind != "nftables" {
			continue
		}
		// With an address: without one, kube-proxy waits 30 s for it.
		ctx := context.Background()
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.nodeName()}, Spec: corev1.NodeSpec{PodCIDR: podSubnet, PodCIDRs: []string{podSubnet}}}
		created, err := pb.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			pb.b.Fatal(err)
		}
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}
		if _, err := pb.kube.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			pb.b.Fatal(err)
		}
	}
}

// startProxy starts the node's service proxy (none for "none").
func (pb *proxyBench) startProxy(n *benchNode) {
	var argv []string
	switch n.kind {
	case "none":
		return
	case "warpd":
		argv = []string{filepath.Join(harness.BinDir(), "warpd"), "--kubeconfig", n.kc, "--cgroup-root", pb.hooked.Path,
			"--bpffs-root", pb.bpffs, "--node-name", n.nodeName(), "--routing", "none", "--listen", "127.0.0.1:9090"}
	default:
		argv = kubeProxyArgv(pb.b, pb.kubeProxy, pb.env.TempDir, n.kc, n.kind, n.nodeName())
	}
	n.started = time.Now()
	n.proxy = n.ns.Start(pb.b, argv...)
}

// kubeProxyArgv is the command line of the real kube-proxy in mode
// (iptables or nftables) as node, inside the node's namespace. Flags that
// would change the machine's own settings (conntrack table size and
// timeouts are global sysctls) are turned off.
func kubeProxyArgv(b *testing.B, binary, tempDir, kubeconfig, mode, node string) []string {
	return []string{"env", "PATH=" + iptablesPath(b, tempDir, mode), binary, "--kubeconfig", kubeconfig, "--proxy-mode", mode, "--hostname-override", node,
		"--cluster-cidr", "10.244.0.0/16", "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0", "--conntrack-udp-timeout=0", "--conntrack-udp-timeout-stream=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--v=0"}
}

// iptablesPath is the PATH kube-proxy runs with: for iptables mode, one
// that finds the legacy (x_tables) iptables first (links in tempDir). The
// machine's default, iptables-nft 1.8.9, needs minutes (more than 7 in a
// trial) to load the rules of 10,000 Services of 10 endpoints, where
// legacy needs seconds; kube-proxy's images pick either backend by what
// the node already uses.
func iptablesPath(b *testing.B, tempDir, mode string) string {
	path := os.Getenv("PATH")
	if mode != "iptables" {
		return path
	}
	dir := filepath.Join(tempDir, "iptables-legacy")
	if _, err := os.Stat(dir); err != nil {
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
			legacy, err := exec.LookPath(strings.Replace(tool, "tables", "tables-legacy", 1)) // iptables-legacy-save, ...
			if err != nil {
				b.Fatalf("kube-proxy iptables mode runs on the legacy iptables: %v", err)
			}
			if err := os.Symlink(legacy, filepath.Join(dir, tool)); err != nil {
				b.Fatal(err)
			}
		}
	}
	return dir + ":" + path
}

// stopProxy stops the node's proxy and waits for it.
func (pb *proxyBench) stopProxy(n *benchNode) {
	if n.proxy == nil {
		return
	}
	n.proxy.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { n.proxy.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		n.proxy.Process.Kill()
		<-done
	}
	n.proxy = nil
}

// createServices creates services from..to-1 (and their EndpointSlices,
// with ips as ready endpoints), in parallel. Service 0 also has a UDP port
// (53) and a port to the sink (82).
func createServices(b *testing.B, kube kubernetes.Interface, ips []string, from, to int) {
	ctx := context.Background()
	start := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := createService(ctx, kube, i, ips); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("create services: %v", firstErr)
	}
	b.Logf("created services %d to %d in %v", from, to-1, time.Since(start).Round(time.Millisecond))
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func createService(ctx context.Context, kube kubernetes.Interface, i int, ips []string) error {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	ports := []corev1.ServicePort{{Name: "http", Port: 80, Protocol: tcp}}
	epPorts := []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(benchPort)), Protocol: &tcp}}
	if i == 0 {
		ports = append(ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: udp}, corev1.ServicePort{Name: "sink", Port: 82, Protocol: tcp})
		epPorts = append(epPorts, discoveryv1.EndpointPort{Name: ptr("dns"), Port: ptr(int32(benchPort)), Protocol: &udp},
			discoveryv1.EndpointPort{Name: ptr("sink"), Port: ptr(int32(sinkPort)), Protocol: &tcp})
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: svcName(i), Namespace: "default"},
		Spec: corev1.ServiceSpec{ClusterIP: svcIP(i), ClusterIPs: []string{svcIP(i)}, Ports: ports}}
	if _, err := kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := kube.DiscoveryV1().EndpointSlices("default").Create(ctx, endpointSlice(i, epPorts, ips), metav1.CreateOptions{})
	return err
}

func endpointSlice(i int, ports []discoveryv1.EndpointPort, ips []string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svcName(i) + "-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: svcName(i)}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	return es
}

func ptr[T any](v T) *T { return &v }

// probeAddrs are services spread over 0..n-1, the first and the last
// among them: all answer once everything is programmed.
func probeAddrs(n int) []string {
	var out []string
	for _, i := range []int{0, n / 3, 2 * n / 3, n - 1} {
		a := svcIP(i) + ":80"
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// waitProgrammed waits until every node with a proxy serves n services.
func (pb *proxyBench) waitProgrammed(n int) {
	for _, node := range pb.nodes {
		if node.kind == "none" {
			continue
		}
		start := time.Now()
		if _, err := pb.probe(node, probeAddrs(n), false, 10*time.Minute); err != nil {
			pb.b.Fatalf("%s with %d services: %v", node.kind, n, err)
		}
		pb.b.Logf("%s: %d services answer (%v)", node.kind, n, time.Since(start).Round(time.Millisecond))
	}
}

// probe runs loadgen probe in the node's client pod until every address
// answered (a who server, with who) and returns when each did (Unix ns).
func (pb *proxyBench) probe(n *benchNode, addrs []string, who bool, timeout time.Duration) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	args := []string{loadgen(pb.b), "probe", "--addr", strings.Join(addrs, ","), "--timeout", timeout.String()}
	if who {
		args = append(args, "--who", "x")
	}
	out, err := pb.cg(n).Run(ctx, n.client, "", args...)
	return parseProbe(out, addrs, err)
}

func parseProbe(out string, addrs []string, err error) (map[string]int64, error) {
	var got map[string]int64
	i := strings.Index(out, "{")
	if err != nil || i < 0 || json.Unmarshal([]byte(out[i:]), &got) != nil {
		return nil, fmt.Errorf("probe: %v: %s", err, out)
	}
	if len(got) != len(addrs) {
		return got, fmt.Errorf("only %d of %v answered", len(got), addrs)
	}
	return got, nil
}

// client runs a loadgen client in the node's client pod, pinned to the
// servers' CPU.
func (pb *proxyBench) client(n *benchNode, mode, addr string, samples int, extra ...string) report.Report {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := append([]string{loadgen(pb.b), mode, "--addr", addr, "--n", strconv.Itoa(samples), "--timeout", "3m",
		"--cpu", strconv.Itoa(clientCPU)}, extra...)
	out, err := pb.cg(n).Run(ctx, n.client, "", args...)
	return parseReport(pb.b, fmt.Sprintf("%s %s on node %s", mode, addr, n.kind), out, err)
}

func (pb *proxyBench) node(kind string) *benchNode {
	for _, n := range pb.nodes {
		if n.kind == kind {
			return n
		}
	}
	pb.b.Fatalf("no node %s", kind)
	return nil
}

// target is one way of reaching the service: a node and an address.
type target struct {
	name string
	node string
	addr func(pb *proxyBench) string
}

var cipTarget = func(port int) func(*proxyBench) string {
	return func(*proxyBench) string { return fmt.Sprintf("%s:%d", svcIP(0), port) }
}

// directTarget is every backend pod's address: loadgen dials a random one
// per connection, as the ClusterIP spreads over them, so the rows differ
// only in the service proxy.
var directTarget = func(port int) func(*proxyBench) string {
	return func(pb *proxyBench) string { return podAddrs(pb, port) }
}

func podAddrs(pb *proxyBench, port int) string {
	var addrs []string
	for _, ip := range pb.nodes[0].ips {
		addrs = append(addrs, fmt.Sprintf("%s:%d", ip, port))
	}
	return strings.Join(addrs, ",")
}

// shortTargets are the rows of the short-connection table.
var shortTargets = []target{
	{"no service proxy, pod IPs", "none", directTarget(benchPort)},
	{"warpd hooks attached, pod IPs", "warpd", directTarget(benchPort)},
	{"warpd, ClusterIP", "warpd", cipTarget(80)},
	{"kube-proxy iptables, ClusterIP", "iptables", cipTarget(80)},
	{"kube-proxy nftables, ClusterIP", "nftables", cipTarget(80)},
}

const (
	shortRounds  = 4
	shortPerRun  = 2500 // x rounds: 10,000 samples per target and scale
	longSamples  = 10000
	udpSamples   = 10000
	streamSecs   = 3
	changeProbes = 15 // EndpointSlice changes timed per proxy
	churnUpdates = 150
	churnRate    = 25 // updates per second
)

// crrResult is one target's short connections at one scale.
type crrResult struct {
	target   string
	services int
	lat      []float64 // µs
	elapsed  float64   // s
}

func (r crrResult) rate() float64 { return float64(len(r.lat)) / r.elapsed }

// shortConnections runs the short-connection rounds at one scale, rotating
// the order of the targets every round.
func (pb *proxyBench) shortConnections(scale int) []crrResult {
	res := make([]crrResult, len(shortTargets))
	for i, t := range shortTargets {
		res[i] = crrResult{target: t.name, services: scale}
	}
	stats, stop := enableStats(pb.b)
	defer stop()
	for round := range shortRounds {
		for k := range shortTargets {
			i := (k + round) % len(shortTargets)
			if round%2 == 1 {
				i = len(shortTargets) - 1 - i
			}
			t := shortTargets[i]
			n := pb.node(t.node)
			var before map[string]progCost
			if t.node == "warpd" {
				before = stats()
			}
			r := pb.client(n, "crr", t.addr(pb), shortPerRun, "--samples")
			if before != nil {
				pb.addProfile(t.name, before, stats(), r.Samples)
			}
			res[i].lat = append(res[i].lat, r.Latencies...)
			res[i].elapsed += r.Elapsed
		}
	}
	return res
}

// percentile of latencies (µs).
func percentile(lat []float64, q float64) float64 {
	s := slices.Clone(lat)
	slices.Sort(s)
	if len(s) == 0 {
		return math.NaN()
	}
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

func us(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}
