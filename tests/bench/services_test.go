package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/tests/harness"
)

// Short TCP connections through a ClusterIP (translated by warpd at
// connect) versus dialing the backend pod's IP directly, from the same
// client pod, alternating so both see the same machine state.

const (
	svcRounds      = 6    // alternations of direct and ClusterIP runs
	svcConnsPerRun = 1500 // connections per run
)

// clientEnv makes the bench binary a client process (see TestMain): it
// must be its own process to be born in the pods' cgroup, where warpd's
// hooks act.
const clientEnv = "WARP_BENCH_CLIENT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(clientEnv); spec != "" {
		os.Exit(runClient(spec))
	}
	os.Exit(m.Run())
}

type clientResult struct {
	Latencies []time.Duration
	Elapsed   time.Duration
	Err       string
}

// runClient: spec is "netnsPath addr count". It makes count connections,
// each writing one byte and reading the echo, and prints the latencies.
func runClient(spec string) int {
	f := strings.Fields(spec)
	count, _ := strconv.Atoi(f[2])
	var res clientResult
	err := ns.WithNetNSPath(f[0], func(ns.NetNS) error {
		buf := make([]byte, 64)
		start := time.Now()
		for i := 0; i < count; i++ {
			t0 := time.Now()
			c, err := net.DialTimeout("tcp", f[1], 2*time.Second)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write([]byte("x")); err != nil {
				c.Close()
				return err
			}
			if _, err := c.Read(buf); err != nil {
				c.Close()
				return err
			}
			c.Close()
			res.Latencies = append(res.Latencies, time.Since(t0))
		}
		res.Elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		res.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func runClientIn(b *testing.B, cg *harness.Cgroup, pod *harness.NetNS, addr string, n int) clientResult {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := cg.Output(ctx, []string{fmt.Sprintf("%s=%s %s %d", clientEnv, pod.Path, addr, n)}, "", os.Args[0])
	if err != nil {
		b.Fatalf("client: %v", err)
	}
	var r clientResult
	if err := json.Unmarshal(out, &r); err != nil || r.Err != "" {
		b.Fatalf("client: %v %s %s", err, r.Err, out)
	}
	return r
}

// BenchmarkServiceConnections compares short connections through a warpd
// ClusterIP with direct ones. Run with -benchtime 1x.
func BenchmarkServiceConnections(b *testing.B) {
	harness.RequireTools(b, filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"))
	env := harness.New(b)
	node := env.NetNS("node")
	pods := env.Cgroup("pods")
	bpffs := env.BPFFS()
	veth := env.Plugin(b, "warp-veth").In(node)
	conf := harness.ConfigJSON(b, harness.NetConf("bench", "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"ipam": map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(env.TempDir, "ipam"), "detectConflicts": false,
			"ranges": [][]map[string]any{{{"subnet": "10.244.7.0/24"}}}}}))
	ips := map[string]string{}
	nss := map[string]*harness.NetNS{}
	for _, name := range []string{"server", "client"} {
		nss[name] = env.NetNS(name)
		res := harness.ParseResult(b, veth.MustSucceed(b, harness.Call{Command: "ADD", ContainerID: name, Netns: nss[name].Path, IfName: "eth0", Config: conf}))
		ips[name] = res.IPs[0].Address.IP.String()
	}
	env.EchoServer(nss["server"], "server", 8080)
	file := filepath.Join(env.TempDir, "services.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: bench, namespace: default}
spec: {clusterIP: 10.96.7.7, clusterIPs: [10.96.7.7], ports: [{name: echo, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bench-1, namespace: default, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: echo, port: 8080, protocol: TCP}]
endpoints: [{addresses: [%s], conditions: {ready: true}}]
`, ips["server"])), 0o644)
	node.Start(b, filepath.Join(harness.BinDir(), "warpd"), "--services-file", file, "--cgroup-root", pods.Path,
		"--bpffs-root", bpffs, "--node-name", "node1", "--listen", "")
	harness.WaitFor(b, "warpd to program the service", 20*time.Second, func() bool {
		svcs, _ := servicelb.PinnedServices(bpffs)
		return slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return len(s.Backends) == 1 })
	})

	var direct, viaSvc []time.Duration
	var directTime, svcTime time.Duration
	for round := 0; round < svcRounds; round++ {
		// Which side goes first alternates too, so neither always runs
		// on a freshly idle machine.
		var d, s clientResult
		if round%2 == 0 {
			d = runClientIn(b, pods, nss["client"], net.JoinHostPort(ips["server"], "8080"), svcConnsPerRun)
			s = runClientIn(b, pods, nss["client"], "10.96.7.7:80", svcConnsPerRun)
		} else {
			s = runClientIn(b, pods, nss["client"], "10.96.7.7:80", svcConnsPerRun)
			d = runClientIn(b, pods, nss["client"], net.JoinHostPort(ips["server"], "8080"), svcConnsPerRun)
		}
		direct, viaSvc = append(direct, d.Latencies...), append(viaSvc, s.Latencies...)
		directTime, svcTime = directTime+d.Elapsed, svcTime+s.Elapsed
	}
	rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	dRate, sRate := rate(len(direct), directTime), rate(len(viaSvc), svcTime)
	b.ReportMetric(sRate/dRate, "svc/direct-rate")
	fmt.Printf("\nShort TCP connections from a pod (connect, 1-byte echo, close), %d per side, alternating\n", len(direct))
	fmt.Printf("%-22s %12s %10s %10s\n", "target", "conn/s", "p50", "p99")
	fmt.Printf("%-22s %12.0f %10s %10s\n", "pod IP (direct)", dRate, pct(direct, 0.5).Round(time.Microsecond), pct(direct, 0.99).Round(time.Microsecond))
	fmt.Printf("%-22s %12.0f %10s %10s\n", "ClusterIP via warpd", sRate, pct(viaSvc, 0.5).Round(time.Microsecond), pct(viaSvc, 0.99).Round(time.Microsecond))
	fmt.Printf("%-22s %11.3fx %9.3fx %9.3fx   (ClusterIP / direct; rate: higher is better, latency: direct/ClusterIP)\n", "ratio",
		sRate/dRate, float64(pct(direct, 0.5))/float64(pct(viaSvc, 0.5)), float64(pct(direct, 0.99))/float64(pct(viaSvc, 0.99)))
}
