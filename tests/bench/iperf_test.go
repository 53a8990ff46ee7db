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

// iperfSeconds is how long each iperf3 run sends.
const iperfSeconds = 3

// iperf runs iperf3 from client to server for iperfSeconds: TCP bulk
// throughput with streams parallel streams (bits/s), or with mode "udp"
// 64-byte datagrams as fast as the client can send them (datagrams/s
// received). Client and server are processes of their own, in their
// namespaces.
func iperf(b *testing.B, client, server *harness.NetNS, serverIP, mode string, streams int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(iperfSeconds+20)*time.Second)
	defer cancel()
	port := "5201"
	args := []string{"iperf3", "-c", serverIP, "-t", fmt.Sprint(iperfSeconds), "-P", fmt.Sprint(streams), "-J"}
	if mode == "udp" {
		port = "5202" // never the TCP run's server, which may still be exiting
		args = append(args, "-u", "-l", "64", "-b", "0")
	}
	args = append(args, "-p", port)
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
