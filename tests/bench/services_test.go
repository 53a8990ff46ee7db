package bench

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

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

// The clients are this binary re-executed (harness.Main).
func TestMain(m *testing.M) { harness.Main(m) }

// runClientIn makes n short connections (connect, 1-byte echo, close) to
// addr from pod, as a client process born in the pods' cgroup, where
// warpd's hooks act.
func runClientIn(b *testing.B, cg *harness.Cgroup, pod *harness.NetNS, addr string, n int) (latencies []time.Duration, elapsed time.Duration) {
	r := cg.RunClient(b, harness.Dials{Netns: pod.Path, Network: "tcp", Addr: addr, Count: n, Msg: "x"})
	if failed := r.Failed(); len(failed) > 0 {
		b.Fatalf("client: %d of %d connections to %s failed, first: %s", len(failed), n, addr, failed[0].Err)
	}
	for _, d := range r.Dials {
		latencies = append(latencies, d.Latency)
	}
	return latencies, r.Elapsed
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
	if err := os.WriteFile(file, []byte(harness.ServiceYAML("default", "bench", "10.96.7.7", "TCP", 80, 8080, ips["server"])), 0o644); err != nil {
		b.Fatal(err)
	}
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
		var d, s []time.Duration
		var dt, st time.Duration
		if round%2 == 0 {
			d, dt = runClientIn(b, pods, nss["client"], net.JoinHostPort(ips["server"], "8080"), svcConnsPerRun)
			s, st = runClientIn(b, pods, nss["client"], "10.96.7.7:80", svcConnsPerRun)
		} else {
			s, st = runClientIn(b, pods, nss["client"], "10.96.7.7:80", svcConnsPerRun)
			d, dt = runClientIn(b, pods, nss["client"], net.JoinHostPort(ips["server"], "8080"), svcConnsPerRun)
		}
		direct, viaSvc = append(direct, d...), append(viaSvc, s...)
		directTime, svcTime = directTime+dt, svcTime+st
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
