package bench

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// What one cluster-wide ADD costs in CPU, on one real API server, side by
// side: the plugin process's own CPU time, and the CPU time kube-apiserver
// and etcd spend meanwhile, per ADD. The ADDs run one at a time from one
// simulated node, so the figures do not depend on other load on the
// machine the way rates and latencies do (BenchmarkIPAMCluster): on two
// cores, CPU per ADD is what bounds the rate of 200 concurrent ADDs. The
// plugins run in rounds of cpuBatch ADDs, in an order that rotates every
// round; every batch is DELed (not measured) before the next.

const (
	cpuRounds = 4
	cpuBatch  = 50
)

func BenchmarkIPAMClusterCPU(b *testing.B) {
	warp := filepath.Join(harness.BinDir(), "warp-ipam")
	harness.RequireTools(b, "socat", "nsenter", warp)
	wbBin, wbCRDs := whereaboutsBinary(b)
	env := harness.New(b)
	api := ipamAPIServer(b, wbCRDs)
	k8s := api.Client(b)
	hc, err := rest.HTTPClientFor(api.RESTConfig())
	if err != nil {
		b.Fatal(err)
	}
	admin := kube.NewClient(api.URL, hc, "warpnet-bench")
	ns := env.NetNS("n1")
	n := &clusterNode{name: "node1", ns: ns, podNS: env.NetNS("n1-pods"), kubeconfig: api.BridgeInto(b, ns), dataDir: filepath.Join(env.TempDir, "n1-ipam")}
	if _, err := admin.CreatePool(context.Background(), &kube.IPPool{ObjectMeta: kube.ObjectMeta{Name: "cpu"}, Spec: kube.IPPoolSpec{
		Subnet: "10.94.0.0/20", Ranges: []kube.PoolRange{{Start: "10.94.0.10", End: addrAdd(netip.MustParseAddr("10.94.0.10"), clusterPool-1).String()}}}}); err != nil {
		b.Fatal(err)
	}
	rounds := cpuRounds
	if testing.Short() {
		rounds = 2
	}
	pods := createBenchPods(b, k8s, cpuBatch, func(int) string { return n.name })
	startBenchWarpd(b, env, n, cpuBatch)
	plugins := clusterPlugins(b, env, wbBin)

	type cost struct {
		adds        int
		plugin, api time.Duration
		warpd       time.Duration // the node's warpd, which runs whichever plugin is measured
		requests    float64
		failures    []string
	}
	costs := map[string]*cost{}
	for round := range rounds {
		order := slices.Clone(plugins)
		for range round % len(order) {
			order = append(order[1:], order[0])
		}
		for _, p := range order {
			c := costs[p.name]
			if c == nil {
				c = &cost{}
				costs[p.name] = c
			}
			conf := p.conf(n, "cpu")
			call := func(cmd string, pod benchPod) harness.Call {
				return harness.Call{Command: cmd, ContainerID: "c-" + pod.name, Netns: n.podNS.Path, IfName: "net1", Config: conf, Args: p.cniArgs(pod)}
			}
			pl := p.plugin.In(n.ns)
			apiBefore, reqBefore, warpdBefore := api.CPUTime(b), api.Requests(b, nil), processCPU(b, n.warpd.Process.Pid)
			for _, pod := range pods {
				ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
				o, err := pl.Exec(ctx, call("ADD", pod))
				cancel()
				if err != nil || o.ExitCode != 0 {
					if len(c.failures) < 3 {
						c.failures = append(c.failures, fmt.Sprintf("%s: %v %v", pod.name, err, o))
					}
					continue
				}
				c.adds++
				c.plugin += o.CPU
			}
			c.api += api.CPUTime(b) - apiBefore
			c.warpd += processCPU(b, n.warpd.Process.Pid) - warpdBefore
			c.requests += api.Requests(b, nil) - reqBefore
			for _, pod := range pods {
				ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
				if o, err := pl.Exec(ctx, call("DEL", pod)); err != nil || o.ExitCode != 0 {
					b.Errorf("%s: DEL %s: %v %v", p.name, pod.name, err, o)
				}
				cancel()
			}
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "%d ADDs per plugin, one at a time from one simulated node, in %d rounds of %d (the order rotating every round), "+
		"one real kube-apiserver (%s) with etcd and the node's warpd (which publishes the node's pods for warp-ipam); CPU time of the plugin process "+
		"(with the nsenter that starts it), of kube-apiserver + etcd and of warpd while the ADDs ran, divided by the ADDs; API requests counted by the API server.\n\n", rounds*cpuBatch, rounds, cpuBatch, apiserver.Version)
	out.WriteString("| plugin | ADDs | plugin CPU per ADD | API server + etcd CPU per ADD | warpd CPU per ADD | together | API requests per ADD |\n")
	out.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range plugins {
		c := costs[p.name]
		per := func(d time.Duration) string {
			return (d / time.Duration(max(c.adds, 1))).Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(&out, "| %s | %d | %s | %s | %s | %s | %.1f |\n", p.name, c.adds, per(c.plugin), per(c.api), per(c.warpd), per(c.plugin+c.api+c.warpd),
			c.requests/float64(max(c.adds, 1)))
		for _, f := range c.failures {
			b.Logf("%s: failure: %.400s", p.name, strings.Join(strings.Fields(f), " "))
		}
	}
	publish(b, "ipam-cluster-cpu", out.String())
	if c := costs["warp-ipam"]; c.adds != rounds*cpuBatch {
		b.Errorf("warp-ipam: %d of %d ADDs succeeded", c.adds, rounds*cpuBatch)
	}
}
