package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warpnet/warpnet/ipam/kube"
	kubestore "github.com/warpnet/warpnet/ipam/store/kube"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// Cluster-wide IPAM, side by side on one real API server: warp-ipam's
// kubernetes store and whereabouts v0.9.2 (its kubernetes backend, built
// from the module proxy by hack/build-whereabouts.sh). Four simulated nodes
// (network namespaces reaching the API server through tests/apiserver's
// bridge) each run 50 plugin processes at a time, as a runtime starting
// many pods at once would. Measured per plugin: allocations/s, ADD latency
// of the whole process, API requests per ADD (the API server's own
// apiserver_request_total), addresses handed out twice, and addresses still
// held after every pod's DEL. First from an empty pool, then from a pool
// 95% full (the same free addresses for both, scattered).

const (
	clusterNodes   = 4
	clusterPerNode = 50 // plugin processes at a time per node
	clusterAllocs  = 1000
	clusterPool    = 1050 // addresses in the pool: 1000 allocations fill it to 95%
	fullPool       = 5000
	fullPrefill    = 4750 // 95%
	fullAllocs     = 250
	// clusterRunBound stops handing out work to a plugin after this long;
	// what is left is reported as not run. clusterCallTimeout bounds one
	// plugin process (whereabouts gives up on its own after 2 minutes).
	clusterRunBound    = 6 * time.Minute
	clusterCallTimeout = 3 * time.Minute
	wbNamespace        = "kube-system" // whereabouts keeps its objects in its kubeconfig's namespace, else here
)

type clusterNode struct {
	name       string
	ns, podNS  *harness.NetNS
	kubeconfig string
	dataDir    string
	podFacts   string    // where the node's warpd publishes its pods
	warpd      *exec.Cmd // nil until startBenchWarpd
}

// benchPod is a Pod object the ADDs are for.
type benchPod struct{ name, uid string }

// args is CNI_ARGS as a Kubernetes runtime passes them for the pod.
func (p benchPod) args() string {
	return fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=c-%s;K8S_POD_UID=%s", p.name, p.name, p.uid)
}

// startBenchWarpd runs warpd on node n as every node of a cluster runs it,
// for what warp-ipam reads from it (--pod-facts: the node's pods), and
// waits until it has published the pods bound to the node.
func startBenchWarpd(b *testing.B, env *harness.Env, n *clusterNode, pods int) {
	warpd := filepath.Join(harness.BinDir(), "warpd")
	harness.RequireTools(b, warpd)
	n.podFacts = n.dataDir + "-pods"
	n.warpd = n.ns.Start(b, warpd, "--kubeconfig", n.kubeconfig, "--node-name", n.name, "--node-ip", "10.0.0.1",
		"--cgroup-root", env.Cgroup("pods-"+n.name).Path, "--bpffs-root", env.BPFFS(), "--routing", "none", "--listen", "",
		"--pod-facts", n.podFacts)
	harness.WaitFor(b, fmt.Sprintf("warpd on %s to publish its %d pods", n.name, pods), 2*time.Minute, func() bool {
		got, _ := kube.PublishedPods(n.podFacts)
		return len(got) >= pods
	})
}

// clusterRun is the outcome of one plugin's batch of ADDs.
type clusterRun struct {
	plugin     string
	lat        []time.Duration
	ok, failed int
	notRun     int
	wall       time.Duration
	requests   float64               // API requests during the batch
	held       map[string][]benchPod // address → the pods it was handed to
	failures   []string
	leaks      int
	dups       int
}

func BenchmarkIPAMCluster(b *testing.B) {
	warp := filepath.Join(harness.BinDir(), "warp-ipam")
	harness.RequireTools(b, "socat", "nsenter", warp)
	wbBin, wbCRDs := whereaboutsBinary(b)
	env := harness.New(b)
	api := ipamAPIServer(b, wbCRDs)
	rc := rest.CopyConfig(api.RESTConfig())
	rc.QPS, rc.Burst = 2000, 2000
	k8s := kubernetes.NewForConfigOrDie(rc)
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		b.Fatal(err)
	}
	admin := kube.NewClient(api.URL, hc, "warpnet-bench")

	allocs, full, fullN := clusterAllocs, fullPrefill, fullAllocs
	if testing.Short() {
		allocs, fullN = 200, 100
	}
	var nodes []*clusterNode
	for i := 1; i <= clusterNodes; i++ {
		ns := env.NetNS(fmt.Sprintf("n%d", i))
		n := &clusterNode{name: fmt.Sprintf("node%d", i), ns: ns, podNS: env.NetNS(fmt.Sprintf("n%d-pods", i)),
			kubeconfig: api.BridgeInto(b, ns), dataDir: filepath.Join(env.TempDir, fmt.Sprintf("n%d-ipam", i))}
		nodes = append(nodes, n)
		if _, err := k8s.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	// warp-ipam reads the pod (annotations, owner), as warpd publishes it on
	// the node; whereabouts does not.
	pods := createBenchPods(b, k8s, allocs+fullN, func(i int) string { return nodes[i%len(nodes)].name })
	for _, n := range nodes {
		startBenchWarpd(b, env, n, (allocs+fullN)/len(nodes))
	}

	plugins := clusterPlugins(b, env, wbBin)

	// The pools: the same sizes for both plugins, in subnets of their own.
	warpPool := func(name, subnet string, size int) {
		p := netip.MustParsePrefix(subnet)
		start := addrAdd(p.Addr(), 10)
		if _, err := admin.CreatePool(context.Background(), &kube.IPPool{ObjectMeta: kube.ObjectMeta{Name: name}, Spec: kube.IPPoolSpec{
			Subnet: subnet, Ranges: []kube.PoolRange{{Start: start.String(), End: addrAdd(start, size-1).String()}}}}); err != nil {
			b.Fatal(err)
		}
	}
	warpPool("bench", "10.90.0.0/20", clusterPool)
	warpPool("bench-full", "10.92.0.0/19", fullPool)
	// 95% of the full pools held, at the same scattered positions for both.
	held := rand.New(rand.NewPCG(1, 2)).Perm(fullPool)[:full]
	prefillWarp(b, admin, "bench-full", netip.MustParseAddr("10.92.0.10"), held)
	prefillWhereabouts(b, hc, api.URL, wbRanges["bench-full"][0], 10, held)

	type phase struct {
		title string
		pool  string
		pods  []benchPod
	}
	phases := []phase{
		{fmt.Sprintf("%d allocations, empty pool of %d", allocs, clusterPool), "bench", pods[:allocs]},
		{fmt.Sprintf("%d allocations, pool of %d at 95%%", fullN, fullPool), "bench-full", pods[allocs:]},
	}
	results := map[string]map[string]*clusterRun{}
	// WARP_BENCH_IPAM_ONLY=warp-ipam (or whereabouts) runs one plugin (and
	// warp-ipam's baseline), for trial runs; make bench runs both.
	only := os.Getenv("WARP_BENCH_IPAM_ONLY")
	for i, ph := range phases {
		results[ph.title] = map[string]*clusterRun{}
		order := slices.Clone(plugins)
		if i%2 == 1 && len(order) > 2 {
			order[0], order[1] = order[1], order[0] // the two warp-ipam builds alternate
		}
		for _, p := range order {
			if p.floor() && ph.pool != "bench" {
				continue // the floor has no cluster-wide pool to fill to 95%
			}
			if only != "" && !strings.HasPrefix(p.name, only) && !p.floor() {
				results[ph.title][p.name] = &clusterRun{plugin: p.name}
				continue
			}
			b.Logf("%s: %s ...", ph.title, p.name)
			r := runClusterADDs(b, api, hc, nodes, p, func(n *clusterNode) []byte { return p.conf(n, ph.pool) }, ph.pods)
			delAll(b, nodes, p, func(n *clusterNode) []byte { return p.conf(n, ph.pool) }, r)
			switch {
			case p.floor():
				r.leaks = p.floorLeaks(nodes)
			case p.dataDir != nil:
				r.leaks = warpLeaks(b, admin, ph.pool, ph.pool == "bench-full", full, nodes, p.dataDir)
			default:
				r.leaks = whereaboutsLeaks(b, hc, api.URL, ph.pool, ph.pool == "bench-full", full)
			}
			b.Logf("%s: %s: %d ok, %d failed, %d not run in %v; %d duplicates, %d leaked", ph.title, p.name, r.ok, r.failed, r.notRun,
				r.wall.Round(time.Millisecond), r.dups, r.leaks)
			for _, f := range r.failures {
				b.Logf("  failure: %s", f)
			}
			results[ph.title][p.name] = r
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "%d simulated nodes × %d concurrent plugin processes each, one real kube-apiserver (%s) with etcd; "+
		"latency is the whole plugin process as a runtime sees it; API requests counted by the API server (apiserver_request_total, "+
		"its own background requests included); leaks counted after every pod's DEL.\n\n", clusterNodes, clusterPerNode, apiserver.Version)
	fmt.Fprintf(&out, "| run | plugin | ok | failed | allocations/s | ADD p50 | ADD %s | API requests per ADD | duplicates | leaked |\n",
		"p99 (or max)")
	out.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, ph := range phases {
		for _, p := range plugins {
			r := results[ph.title][p.name]
			if r == nil || r.wall == 0 {
				continue // not run (WARP_BENCH_IPAM_ONLY)
			}
			label, q := quantile(len(r.lat))
			failed := fmt.Sprint(r.failed)
			if r.notRun > 0 {
				failed += fmt.Sprintf(" (+%d not run within %v)", r.notRun, clusterRunBound)
			}
			fmt.Fprintf(&out, "| %s | %s | %d | %s | %.1f | %s | %s (%s) | %.1f | %d | %d |\n", ph.title, p.name, r.ok, failed,
				float64(r.ok)/r.wall.Seconds(), roundMs(pctOr(r.lat, 0.5)), roundMs(pctOr(r.lat, q)), label,
				r.requests/float64(max(r.ok, 1)), r.dups, r.leaks)
		}
		w, wb := results[ph.title]["warp-ipam"], results[ph.title]["whereabouts"]
		if w.ok > 0 && wb.ok > 0 && w.wall > 0 && wb.wall > 0 {
			fmt.Fprintf(&out, "| %s | **warp-ipam / whereabouts** | | | **%.1fx** | **%.1fx** faster | | | | |\n", ph.title,
				(float64(w.ok)/w.wall.Seconds())/(float64(wb.ok)/wb.wall.Seconds()), float64(pct(wb.lat, 0.5))/float64(pct(w.lat, 0.5)))
		}
		if fl := results[ph.title][hostLocalFloor]; fl != nil && w.ok > 0 && fl.ok > 0 && w.wall > 0 && fl.wall > 0 {
			fmt.Fprintf(&out, "| %s | **warp-ipam / host-local floor** | | | **%.2fx** | | | | | |\n", ph.title,
				(float64(w.ok)/w.wall.Seconds())/(float64(fl.ok)/fl.wall.Seconds()))
		}
		if base := results[ph.title]["warp-ipam (baseline)"]; base != nil && w.ok > 0 && base.ok > 0 && w.wall > 0 && base.wall > 0 {
			fmt.Fprintf(&out, "| %s | **warp-ipam / baseline** | | | **%.2fx** | **%.2fx** faster | | | | |\n", ph.title,
				(float64(w.ok)/w.wall.Seconds())/(float64(base.ok)/base.wall.Seconds()), float64(pct(base.lat, 0.5))/float64(pct(w.lat, 0.5)))
		}
	}
	for _, p := range plugins {
		r0, r1 := results[phases[0].title][p.name], results[phases[1].title][p.name]
		if r0 != nil && r1 != nil && r0.ok > 0 && r1.ok > 0 && r0.wall > 0 && r1.wall > 0 {
			fmt.Fprintf(&out, "\n%s at 95%% full: %.2fx its rate from the empty pool.", p.name,
				(float64(r1.ok)/r1.wall.Seconds())/(float64(r0.ok)/r0.wall.Seconds()))
		}
	}
	out.WriteString("\n")
	publish(b, "ipam-cluster", out.String())
	for _, ph := range phases {
		w := results[ph.title]["warp-ipam"]
		if w.dups > 0 || w.leaks > 0 || w.failed > 0 {
			b.Errorf("%s: warp-ipam had %d failures, %d duplicates, %d leaks", ph.title, w.failed, w.dups, w.leaks)
		}
	}
}

// clusterPlugin is one cluster-wide IPAM plugin under test.
type clusterPlugin struct {
	name    string
	plugin  *harness.Plugin
	conf    func(n *clusterNode, pool string) []byte
	dataDir func(n *clusterNode) string // warp-ipam's node-local state; nil for whereabouts
	// floorLeaks is set for a floor, a reference plugin with no API server
	// (what a process per ADD costs on this machine with nothing
	// cluster-wide), and counts what it still holds after the DELs.
	floorLeaks func(nodes []*clusterNode) int
	// args is CNI_ARGS for pod p (nil: p.args()).
	args func(p benchPod) string
}

func (c *clusterPlugin) floor() bool { return c.floorLeaks != nil }

// cniArgs is CNI_ARGS for pod p's ADD and DEL with plugin c.
func (c *clusterPlugin) cniArgs(p benchPod) string {
	if c.args != nil {
		return c.args(p)
	}
	return p.args()
}

// staticFloor names the row of the floor that allocates nothing.
const staticFloor = "static (floor: no allocation at all)"

// hostLocalFloor names the floor's row.
const hostLocalFloor = "host-local (floor: per node, no API server)"

// hostLocalDir is where the floor's host-local keeps node n's addresses.
func hostLocalDir(n *clusterNode) string { return n.dataDir + "-host-local" }

// hostLocalLeaks counts the floor's addresses still held after the DELs
// (host-local keeps a file per address, beside its lock and cursor files).
func hostLocalLeaks(nodes []*clusterNode) int {
	leaks := 0
	for _, n := range nodes {
		ents, _ := os.ReadDir(filepath.Join(hostLocalDir(n), "bench-cluster"))
		for _, e := range ents {
			if _, err := netip.ParseAddr(e.Name()); err == nil {
				leaks++
			}
		}
	}
	return leaks
}

// clusterPlugins returns warp-ipam and whereabouts (its binary wbBin),
// configured for a pool name (whereabouts' range for it is in wbRanges),
// and with WARP_BENCH_IPAM_BASELINE=path another warp-ipam binary (say,
// one built from main) beside this one, on the same pools and pods: a
// before/after comparison under the same load on a shared machine.
func clusterPlugins(b *testing.B, env *harness.Env, wbBin string) []clusterPlugin {
	warpIPAM := func(name string, plugin *harness.Plugin, suffix string) clusterPlugin {
		dataDir := func(n *clusterNode) string { return n.dataDir + suffix }
		return clusterPlugin{name: name, plugin: plugin, dataDir: dataDir, conf: func(n *clusterNode, pool string) []byte {
			return harness.ConfigJSON(b, harness.NetConf("bench-cluster", "macvlan", map[string]any{"cniVersion": "1.0.0", "ipam": map[string]any{
				"type": "warp-ipam", "store": "kubernetes", "kubeconfig": n.kubeconfig, "nodeName": n.name, "dataDir": dataDir(n),
				"pool": pool, "detectConflicts": false, "timeout": "60s", "podFacts": n.podFacts}}))
		}}
	}
	plugins := []clusterPlugin{
		warpIPAM("warp-ipam", env.Plugin(b, "warp-ipam"), ""),
		{name: "whereabouts", plugin: &harness.Plugin{Name: "whereabouts", Path: wbBin, CNIPath: filepath.Dir(wbBin)}, conf: func(n *clusterNode, pool string) []byte {
			r := wbRanges[pool]
			// whereabouts wants its node's flat file (its DaemonSet
			// writes one), here beside the node's state.
			flat := n.dataDir + "-whereabouts.conf"
			if _, err := os.Stat(flat); err != nil {
				os.WriteFile(flat, harness.ConfigJSON(b, map[string]any{"kubernetes": map[string]any{"kubeconfig": n.kubeconfig}, "log_level": "error"}), 0o644)
			}
			return harness.ConfigJSON(b, harness.NetConf("bench-cluster", "macvlan", map[string]any{"cniVersion": "1.0.0", "ipam": map[string]any{
				"type": "whereabouts", "range": r[0], "range_start": r[1], "range_end": r[2], "log_level": "error",
				"configuration_path": flat, "kubernetes": map[string]any{"kubeconfig": n.kubeconfig}}}))
		}},
	}
	// The floors. static returns the address CNI_ARGS names (one per pod):
	// a process per ADD and nothing else. host-local: node i hands out the
	// i-th quarter of a subnet of its own, under its node-wide lock.
	harness.RequireTools(b, "/usr/lib/cni/host-local", "/usr/lib/cni/static")
	plugins = append(plugins, clusterPlugin{name: staticFloor,
		plugin:     &harness.Plugin{Name: "static", Path: "/usr/lib/cni/static", CNIPath: "/usr/lib/cni"},
		floorLeaks: func([]*clusterNode) int { return 0 }, // holds nothing
		args: func(p benchPod) string {
			var i int
			fmt.Sscanf(p.name, "bench-%d", &i)
			return p.args() + ";IP=" + addrAdd(netip.MustParseAddr("10.98.0.10"), i).String() + "/16"
		},
		conf: func(n *clusterNode, pool string) []byte {
			return harness.ConfigJSON(b, harness.NetConf("bench-cluster", "macvlan", map[string]any{"cniVersion": "1.0.0", "ipam": map[string]any{
				"type": "static"}}))
		}})
	plugins = append(plugins, clusterPlugin{name: hostLocalFloor, floorLeaks: hostLocalLeaks,
		plugin: &harness.Plugin{Name: "host-local", Path: "/usr/lib/cni/host-local", CNIPath: "/usr/lib/cni"},
		conf: func(n *clusterNode, pool string) []byte {
			var i int
			fmt.Sscanf(n.name, "node%d", &i)
			per := (clusterPool + clusterNodes - 1) / clusterNodes
			start := addrAdd(netip.MustParseAddr("10.96.0.10"), (i-1)*per)
			// cniVersion 1.0.0: Debian's host-local predates 1.1.0.
			return harness.ConfigJSON(b, harness.NetConf("bench-cluster", "macvlan", map[string]any{"cniVersion": "1.0.0", "ipam": map[string]any{
				"type": "host-local", "dataDir": hostLocalDir(n), "ranges": [][]map[string]any{{{"subnet": "10.96.0.0/20",
					"rangeStart": start.String(), "rangeEnd": addrAdd(start, per-1).String()}}}}}))
		}})
	if base := os.Getenv("WARP_BENCH_IPAM_BASELINE"); base != "" {
		harness.RequireTools(b, base)
		bp := warpIPAM("warp-ipam (baseline)", &harness.Plugin{Name: "warp-ipam", Path: base, CNIPath: filepath.Dir(base)}, "-baseline")
		plugins = slices.Insert(plugins, 1, bp)
	}
	return plugins
}

// wbRanges are whereabouts' ranges (range, range_start, range_end) of the
// same sizes as warp-ipam's pools.
var wbRanges = map[string][3]string{
	"bench":      {"10.91.0.0/20", "10.91.0.10", addrAdd(netip.MustParseAddr("10.91.0.10"), clusterPool-1).String()},
	"bench-full": {"10.93.0.0/19", "10.93.0.10", addrAdd(netip.MustParseAddr("10.93.0.10"), fullPool-1).String()},
	"cpu":        {"10.95.0.0/20", "10.95.0.10", addrAdd(netip.MustParseAddr("10.95.0.10"), clusterPool-1).String()},
}

func addrAdd(a netip.Addr, n int) netip.Addr {
	for ; n > 0; n-- {
		a = a.Next()
	}
	return a
}

// pctOr is pct, or 0 for no samples (a plugin none of whose ADDs worked).
func pctOr(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return pct(d, p)
}

func roundMs(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}

// createBenchPods creates the Pod objects the ADDs are for (not measured).
func createBenchPods(b *testing.B, k8s kubernetes.Interface, n int, nodeOf func(i int) string) []benchPod {
	pods := make([]benchPod, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		name := fmt.Sprintf("bench-%d", i)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			p, err := k8s.CoreV1().Pods("default").Create(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.PodSpec{NodeName: nodeOf(i), Containers: []corev1.Container{{Name: "app", Image: "pause"}}}},
				metav1.CreateOptions{})
			if err != nil {
				errs <- err
				return
			}
			pods[i] = benchPod{name, string(p.UID)}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return pods
}

// prefillWarp creates IPAllocations for the pool's addresses at positions
// held (offsets from start), as if pods held them.
func prefillWarp(b *testing.B, c *kube.Client, pool string, start netip.Addr, held []int) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	errs := make(chan error, len(held))
	for i, pos := range held {
		ip := addrAdd(start, pos)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			a := &kube.IPAllocation{ObjectMeta: kube.ObjectMeta{Name: kube.AllocationName(ip), Labels: map[string]string{kube.LabelPool: pool, kube.LabelNode: "elsewhere"}},
				Spec: kube.IPAllocationSpec{Pool: pool, Address: ip.String(), Pod: kube.PodRef{Namespace: "default", Name: fmt.Sprintf("prefill-%d", i)},
					Attachment: &kube.Attachment{ContainerID: fmt.Sprintf("prefill-%d", i), IfName: "net1", Node: "elsewhere"}}}
			if _, err := c.CreateAllocation(context.Background(), a); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// prefillWhereabouts writes whereabouts' IPPool for rng holding the same
// positions (offsets from the range's first address plus base).
func prefillWhereabouts(b *testing.B, hc *http.Client, server, rng string, base int, held []int) {
	allocs := map[string]map[string]string{}
	for i, pos := range held {
		allocs[fmt.Sprint(base+pos)] = map[string]string{"id": fmt.Sprintf("prefill-%d", i), "podref": fmt.Sprintf("default/prefill-%d", i), "ifname": "net1"}
	}
	obj := map[string]any{"apiVersion": "whereabouts.cni.cncf.io/v1alpha1", "kind": "IPPool",
		"metadata": map[string]any{"name": wbPoolName(rng), "namespace": wbNamespace}, "spec": map[string]any{"range": rng, "allocations": allocs}}
	if err := rawRequest(hc, http.MethodPost, server+"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/"+wbNamespace+"/ippools", obj, nil); err != nil {
		b.Fatal(err)
	}
}

// wbPoolName is whereabouts' name for the IPPool of an unnamed network's range.
func wbPoolName(rng string) string { return strings.NewReplacer("/", "-", ":", "-").Replace(rng) }

func rawRequest(hc *http.Client, method, url string, body, out any) error {
	var rd *strings.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = strings.NewReader(string(data))
	} else {
		rd = strings.NewReader("")
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var st struct{ Message string }
		json.NewDecoder(resp.Body).Decode(&st)
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, st.Message)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

type clusterJob struct {
	pod benchPod
	i   int
}

// runClusterADDs runs one ADD per pod, clusterPerNode processes at a time
// on each node (pod i on node i mod clusterNodes).
func runClusterADDs(b *testing.B, api *apiserver.Server, hc *http.Client, nodes []*clusterNode, cp clusterPlugin,
	conf func(*clusterNode) []byte, pods []benchPod) *clusterRun {
	r := &clusterRun{plugin: cp.name, held: map[string][]benchPod{}}
	var mu sync.Mutex
	queues := make([]chan clusterJob, len(nodes))
	for i := range nodes {
		queues[i] = make(chan clusterJob, len(pods))
	}
	for i, p := range pods {
		queues[i%len(nodes)] <- clusterJob{p, i}
	}
	before := api.Requests(b, nil)
	start := time.Now()
	deadline := start.Add(clusterRunBound)
	var wg sync.WaitGroup
	for ni, n := range nodes {
		close(queues[ni])
		p, c := cp.plugin.In(n.ns), conf(n)
		for range clusterPerNode {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for job := range queues[ni] {
					if time.Now().After(deadline) {
						mu.Lock()
						r.notRun++
						mu.Unlock()
						continue
					}
					ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
					t0 := time.Now()
					o, err := p.Exec(ctx, harness.Call{Command: "ADD", ContainerID: "c-" + job.pod.name, Netns: n.podNS.Path, IfName: "net1", Config: c,
						Args: cp.cniArgs(job.pod)})
					took := time.Since(t0)
					cancel()
					mu.Lock()
					switch {
					case err == nil && o.ExitCode == 0:
						r.ok++
						r.lat = append(r.lat, took)
						var res struct{ IPs []struct{ Address string } }
						json.Unmarshal(o.Stdout, &res)
						for _, ip := range res.IPs {
							r.held[ip.Address] = append(r.held[ip.Address], job.pod)
						}
					default:
						r.failed++
						if len(r.failures) < 3 {
							msg := fmt.Sprint(err)
							if o != nil {
								msg = strings.TrimSpace(string(o.Stdout) + " " + string(o.Stderr))
							}
							r.failures = append(r.failures, fmt.Sprintf("%s after %v: %.400s", job.pod.name, took.Round(time.Millisecond), strings.Join(strings.Fields(msg), " ")))
						}
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	r.wall = time.Since(start)
	r.requests = api.Requests(b, nil) - before
	for _, pods := range r.held {
		if len(pods) > 1 {
			r.dups++
		}
	}
	return r
}

// delAll DELs every pod of the run (also the failed ones, as a runtime
// would), with the same concurrency.
func delAll(b *testing.B, nodes []*clusterNode, cp clusterPlugin, conf func(*clusterNode) []byte, r *clusterRun) {
	var pods []benchPod
	for _, ps := range r.held {
		pods = append(pods, ps...)
	}
	slices.SortFunc(pods, func(a, b benchPod) int { return strings.Compare(a.name, b.name) })
	var wg sync.WaitGroup
	sem := make(chan struct{}, clusterNodes*clusterPerNode)
	var failed []string
	var mu sync.Mutex
	for _, pod := range pods {
		var i int
		fmt.Sscanf(pod.name, "bench-%d", &i)
		n := nodes[i%len(nodes)]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
			defer cancel()
			o, err := cp.plugin.In(n.ns).Exec(ctx, harness.Call{Command: "DEL", ContainerID: "c-" + pod.name, Netns: n.podNS.Path, IfName: "net1", Config: conf(n),
				Args: cp.cniArgs(pod)})
			if err != nil || o.ExitCode != 0 {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: %v %v", pod.name, err, o))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		b.Logf("%s: %d DELs failed, e.g. %.300s", r.plugin, len(failed), failed[0])
	}
}

// warpLeaks counts the pool's IPAllocations beyond the prefilled ones, and
// releases still queued on the nodes.
func warpLeaks(b *testing.B, c *kube.Client, pool string, prefilled bool, nPrefill int, nodes []*clusterNode, dataDir func(*clusterNode) string) int {
	names, err := c.ListAllocationNames(context.Background(), kube.LabelPool+"="+pool, false)
	if err != nil {
		b.Fatal(err)
	}
	leaks := len(names)
	if prefilled {
		leaks -= nPrefill
	}
	for _, n := range nodes {
		ents, _ := os.ReadDir(filepath.Join(kubestore.Dir(dataDir(n), "bench-cluster"), "journal"))
		leaks += len(ents)
	}
	return leaks
}

// whereaboutsLeaks counts allocations left in whereabouts' IPPool beyond
// the prefilled ones, and its overlapping-range reservations.
func whereaboutsLeaks(b *testing.B, hc *http.Client, server, pool string, prefilled bool, nPrefill int) int {
	var p struct {
		Spec struct {
			Allocations map[string]any `json:"allocations"`
		} `json:"spec"`
	}
	rng := wbRanges[pool][0]
	if err := rawRequest(hc, http.MethodGet, server+"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/"+wbNamespace+"/ippools/"+wbPoolName(rng), nil, &p); err != nil {
		b.Logf("whereabouts' IPPool: %v", err)
		return 0
	}
	leaks := len(p.Spec.Allocations)
	if prefilled {
		leaks -= nPrefill
	}
	var l struct{ Items []any }
	if err := rawRequest(hc, http.MethodGet, server+"/apis/whereabouts.cni.cncf.io/v1alpha1/namespaces/"+wbNamespace+"/overlappingrangeipreservations", nil, &l); err == nil {
		leaks += len(l.Items)
	}
	return leaks
}

// whereaboutsBinary returns the whereabouts plugin and its CRDs' directory,
// building them with hack/build-whereabouts.sh when missing.
func whereaboutsBinary(b *testing.B) (string, string) {
	b.Helper()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	bin := os.Getenv("WARP_WHEREABOUTS_BIN")
	if bin == "" {
		bin = filepath.Join(cache, "warpnet", "whereabouts-v0.9.2")
	}
	if _, err := os.Stat(bin + ".crds"); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(harness.RepoRoot(), "hack", "build-whereabouts.sh"))
		cmd.Env = append(os.Environ(), "WARP_WHEREABOUTS_BIN="+bin)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 30 * time.Second
		out, err := cmd.CombinedOutput()
		b.Logf("%s", strings.TrimSpace(string(out)))
		if err != nil {
			harness.RequireTools(b, bin) // skips, or fails under WARP_E2E_REQUIRED
			b.Fatalf("building whereabouts: %v", err)
		}
	}
	return bin, bin + ".crds"
}

// ipamAPIServer starts a real API server with both plugins' CRDs: warp-ipam's
// (and its overlap policy) and whereabouts' from wbCRDs.
func ipamAPIServer(b *testing.B, wbCRDs string) *apiserver.Server {
	api := apiserver.Start(b)
	var manifests []string
	for _, m := range []string{"ipam.warpnet.io_ippools.yaml", "ipam.warpnet.io_ipallocations.yaml", "ipam.warpnet.io_ippool-overlap-policy.yaml"} {
		manifests = append(manifests, filepath.Join(harness.RepoRoot(), "install", "crds", m))
	}
	for _, m := range []string{"whereabouts.cni.cncf.io_ippools.yaml", "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml"} {
		manifests = append(manifests, filepath.Join(wbCRDs, m))
	}
	api.ApplyManifests(b, manifests...)
	return api
}
