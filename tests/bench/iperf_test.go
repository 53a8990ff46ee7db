package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/tests/harness"
)

const (
	iperfSeconds = 3    // how long each iperf3 run sends
	iperfTCPPort = 5201 // the server's port for TCP runs
	iperfUDPPort = 5202 // and for UDP runs (its control connection is TCP)
)

// iperf runs iperf3 from client to server for iperfSeconds: TCP bulk
// throughput with streams parallel streams (bits/s), or with mode "udp"
// 64-byte datagrams as fast as the client can send them, counted as
// delivered to the server's namespace per second (its UDP stack's
// InDatagrams and RcvbufErrors: the datapath delivered them, whether the
// single iperf3 server thread kept up reading them or not). Client and
// server are processes of their own, in their namespaces. It also returns
// the CPU time both used, the kernel's work in their context included.
func iperf(b *testing.B, client, server *harness.NetNS, serverIP, mode string, streams int) (float64, time.Duration) {
	return iperfTo(b, client, server, func(port int) (string, int) { return serverIP, port }, mode, streams)
}

// iperfTo is iperf to wherever dial says the server's port is reached
// (a NodePort of the server's port, say): the server listens on
// iperfTCPPort or iperfUDPPort; dial maps that to the host and port the
// client sends to.
func iperfTo(b *testing.B, client, server *harness.NetNS, dial func(serverPort int) (string, int), mode string, streams int) (float64, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(iperfSeconds+20)*time.Second)
	defer cancel()
	port := iperfTCPPort
	if mode == "udp" {
		port = iperfUDPPort // never the TCP run's server, which may still be exiting
	}
	host, dialPort := dial(port)
	args := []string{"iperf3", "-c", host, "-t", fmt.Sprint(iperfSeconds), "-P", fmt.Sprint(streams), "-J", "-p", fmt.Sprint(dialPort)}
	if mode == "udp" {
		args = append(args, "-u", "-l", "64", "-b", "0")
	}
	srv := server.Start(b, "iperf3", "-s", "-1", "-p", fmt.Sprint(port))
	defer srv.Process.Kill()
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				Seconds float64 `json:"seconds"`
			} `json:"sum"`
		} `json:"end"`
	}
	delivered := func() uint64 {
		c := server.SNMP(b)
		return c["Udp:InDatagrams"] + c["Udp:RcvbufErrors"]
	}
	var before uint64
	var out string
	var cpu time.Duration
	for try := 0; ; try++ { // the server needs a moment to listen
		if mode == "udp" {
			before = delivered()
		}
		out, cpu, _ = client.RunCPU(ctx, args...)
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
		v = float64(delivered()-before) / rep.End.Sum.Seconds
	}
	if !(v > 0) {
		b.Fatalf("iperf3 %s measured nothing: %s", mode, out)
	}
	// The server (-1) exits after this one test.
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	select {
	case <-done:
		cpu += srv.ProcessState.UserTime() + srv.ProcessState.SystemTime()
	case <-time.After(10 * time.Second):
		b.Fatalf("iperf3 server in %s did not exit after the test", server.Name)
	}
	return v, cpu
}
