package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/tests/harness"
)

// Pod-to-pod on one node, side by side: warp-veth with the XDP redirect,
// warp-veth without XDP, and the reference bridge and ptp plugins. Every
// configuration gets a fresh node namespace; all use host-local as IPAM so
// that ADD/DEL latency compares the interface plugins, not the IPAMs.

const (
	iperfSeconds = 4
	rrRounds     = 5000 // request/response round trips per configuration
	podsForCNI   = 100  // pods added then deleted for ADD/DEL latency
)

type podNetCase struct {
	name   string
	plugin string
	conf   func(dataDir, bpffs string) map[string]any
}

func podNetCases() []podNetCase {
	hostLocal := func(dataDir string) map[string]any {
		return map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": [][]map[string]any{{{"subnet": "10.70.0.0/16"}}}}
	}
	veth := func(xdp any) func(string, string) map[string]any {
		return func(dataDir, bpffs string) map[string]any {
			return map[string]any{"xdp": xdp, "bpffsRoot": bpffs, "ipam": hostLocal(dataDir)}
		}
	}
	return []podNetCase{
		{"warp-veth+xdp", "warp-veth", veth(map[string]any{"redirect": true, "antiSpoof": true})},
		{"warp-veth", "warp-veth", veth(false)},
		{"bridge", "bridge", func(dataDir, _ string) map[string]any {
			return map[string]any{"bridge": "cni0", "isGateway": true, "ipam": hostLocal(dataDir)}
		}},
		{"ptp", "ptp", func(dataDir, _ string) map[string]any { return map[string]any{"ipam": hostLocal(dataDir)} }},
	}
}

type podNetResult struct {
	tcpGbps        float64
	rrP50, rrP99   time.Duration
	udpKpps        float64
	addP50, addP99 time.Duration
	delP50, delP99 time.Duration
}

func runPodNetCase(b *testing.B, tc podNetCase) podNetResult {
	env := harness.New(b)
	node := env.NetNS("node")
	plugin := env.Plugin(b, tc.plugin).In(node)
	fields := tc.conf(filepath.Join(env.TempDir, "ipam"), env.BPFFS())
	fields["cniVersion"] = "1.0.0" // Debian's reference plugins predate 1.1.0
	conf := harness.ConfigJSON(b, harness.NetConf("bench-"+tc.plugin, tc.plugin, fields))
	call := func(cmd, id string, pod *harness.NetNS) harness.Call {
		return harness.Call{Command: cmd, ContainerID: id, Netns: pod.Path, IfName: "eth0", Config: conf}
	}
	add := func(id string, pod *harness.NetNS) string {
		res := harness.ParseResult(b, plugin.MustSucceed(b, call("ADD", id, pod)))
		return res.IPs[0].Address.IP.String()
	}

	var r podNetResult
	client, server := env.NetNS("client"), env.NetNS("server")
	add("client", client)
	serverIP := add("server", server)

	r.tcpGbps = iperf(b, client, server, serverIP, "") / 1e9
	r.udpKpps = iperf(b, client, server, serverIP, "udp") / 1e3
	r.rrP50, r.rrP99 = requestResponse(b, env, client, server, serverIP)

	var adds, dels []time.Duration
	pods := make([]*harness.NetNS, podsForCNI)
	for i := range pods {
		pods[i] = env.NetNS(fmt.Sprintf("p%d", i))
	}
	timed := func(c harness.Call) time.Duration {
		start := time.Now()
		plugin.MustSucceed(b, c)
		return time.Since(start)
	}
	for i, p := range pods {
		adds = append(adds, timed(call("ADD", fmt.Sprintf("p%d", i), p)))
	}
	for i, p := range pods {
		dels = append(dels, timed(call("DEL", fmt.Sprintf("p%d", i), p)))
	}
	r.addP50, r.addP99 = pct(adds, 0.5), pct(adds, 0.99)
	r.delP50, r.delP99 = pct(dels, 0.5), pct(dels, 0.99)
	return r
}

// iperf runs iperf3 from client to server for iperfSeconds: TCP bulk
// throughput (bits/s), or with mode "udp" 64-byte datagrams as fast as the
// client can send them (datagrams/s received).
func iperf(b *testing.B, client, server *harness.NetNS, serverIP, mode string) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(iperfSeconds+20)*time.Second)
	defer cancel()
	port := "5201"
	args := []string{"iperf3", "-c", serverIP, "-p", port, "-t", fmt.Sprint(iperfSeconds), "-J"}
	if mode == "udp" {
		port = "5202" // never the TCP run's server, which may still be exiting
		args = append(args, "-p", port, "-u", "-l", "64", "-b", "0")
	}
	srv := server.Start(b, "iperf3", "-s", "-1", "-p", port)
	defer srv.Process.Kill()
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				Seconds     float64 `json:"seconds"`
				Packets     float64 `json:"packets"`
				LostPackets float64 `json:"lost_packets"`
			} `json:"sum"`
		} `json:"end"`
	}
	var out string
	for try := 0; ; try++ { // the server needs a moment to listen
		out, _ = client.Run(ctx, args...)
		rep.Error = ""
		if i := strings.Index(out, "{"); i >= 0 && json.Unmarshal([]byte(out[i:]), &rep) == nil && rep.Error == "" {
			break
		}
		if try == 50 {
			b.Fatalf("iperf3 %s: %s", mode, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	v := rep.End.SumReceived.BitsPerSecond
	if mode == "udp" {
		s := rep.End.Sum
		v = (s.Packets - s.LostPackets) / s.Seconds
	}
	if !(v > 0) {
		b.Fatalf("iperf3 %s measured nothing: %s", mode, out)
	}
	return v
}

// requestResponse measures round trips of one byte over one TCP connection,
// both ends in this process (inside the pod namespaces).
func requestResponse(b *testing.B, env *harness.Env, client, server *harness.NetNS, serverIP string) (p50, p99 time.Duration) {
	var ln net.Listener
	if err := server.Do(func() (err error) { ln, err = net.Listen("tcp", ":7000"); return err }); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	var c net.Conn
	if err := client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(serverIP, "7000"), 5*time.Second)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 1)
	rtts := make([]time.Duration, 0, rrRounds)
	for i := 0; i < rrRounds; i++ {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	return pct(rtts, 0.5), pct(rtts, 0.99)
}

// BenchmarkPodToPod compares pod networking plugins on one node. Run with
// -benchtime 1x: each configuration measures a fixed amount itself.
func BenchmarkPodToPod(b *testing.B) {
	harness.RequireTools(b, "iperf3", "/usr/lib/cni/bridge", "/usr/lib/cni/ptp", "/usr/lib/cni/host-local")
	var names []string
	results := map[string]podNetResult{}
	for _, tc := range podNetCases() {
		b.Run(tc.name, func(b *testing.B) {
			r := runPodNetCase(b, tc)
			results[tc.name] = r
			b.ReportMetric(r.tcpGbps, "tcp-Gbit/s")
			b.ReportMetric(float64(r.rrP50.Microseconds()), "rr-p50-us")
			b.ReportMetric(r.udpKpps, "udp64-kpps")
		})
		names = append(names, tc.name)
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nPod-to-pod on one node (TCP %ds iperf3; %d 1-byte TCP round trips; UDP 64-byte datagrams %ds; CNI ADD/DEL of %d pods)\n",
		iperfSeconds, rrRounds, iperfSeconds, podsForCNI)
	fmt.Fprintf(&out, "%-15s %10s %9s %9s %11s %9s %9s %9s %9s\n", "plugin", "TCP Gb/s", "RR p50", "RR p99", "UDP64 kpps", "ADD p50", "ADD p99", "DEL p50", "DEL p99")
	for _, name := range names {
		r, ok := results[name]
		if !ok {
			continue
		}
		fmt.Fprintf(&out, "%-15s %10.2f %9s %9s %11.1f %9s %9s %9s %9s\n", name, r.tcpGbps,
			r.rrP50.Round(time.Microsecond), r.rrP99.Round(time.Microsecond), r.udpKpps, round(r.addP50), round(r.addP99), round(r.delP50), round(r.delP99))
	}
	if base, ok := results["bridge"]; ok {
		for _, name := range []string{"warp-veth+xdp", "warp-veth"} {
			if r, ok := results[name]; ok {
				fmt.Fprintf(&out, "%-15s %9.2fx %8.2fx %8.2fx %10.2fx   (vs bridge; throughput: higher is better, latency: bridge/x)\n", name,
					r.tcpGbps/base.tcpGbps, float64(base.rrP50)/float64(r.rrP50), float64(base.rrP99)/float64(r.rrP99), r.udpKpps/base.udpKpps)
			}
		}
	}
	fmt.Print(out.String())
}
