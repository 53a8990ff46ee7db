// Command loadgen is the benchmarks' traffic generator: a server and a client
// that run as their own processes inside pod namespaces (started with
// nsenter by the bench), so that a measurement includes a real process on
// each end and nothing of the test binary.
//
//	loadgen serve [--tcp ADDR] [--udp ADDR]   echo servers until killed
//	loadgen rr    --addr HOST:PORT            request/response on one TCP connection
//	loadgen crr   --addr HOST:PORT            connect, request/response, close, per sample
//	loadgen udprr --addr HOST:PORT            request/response on one UDP socket
//
// Clients take --n samples (bounded by --timeout) of --size-byte requests
// and print one JSON object: sample count, errors, elapsed time, rate and
// latency percentiles. A p99 is only meaningful over 1000 samples or more;
// the report says how many there were.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"

	"github.com/warpnet/warpnet/tests/loadgen/report"
)

func usage() {
	fmt.Fprint(os.Stderr, `loadgen: traffic generator for warpnet's benchmarks.

Usage:
  loadgen serve [--tcp ADDR] [--udp ADDR]    echo servers (TCP and/or UDP) until killed
  loadgen rr    --addr HOST:PORT [flags]     request/response on one TCP connection
  loadgen crr   --addr HOST:PORT [flags]     a new TCP connection per request/response
  loadgen udprr --addr HOST:PORT [flags]     request/response on one UDP socket

Client flags: --n samples (default 10000), --size request bytes (default 1),
--timeout overall bound (default 60s). Clients print one JSON report.
`)
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet("loadgen "+mode, flag.ExitOnError)
	fs.Usage = usage
	tcpAddr := fs.String("tcp", "", "serve: TCP echo address")
	udpAddr := fs.String("udp", "", "serve: UDP echo address")
	addr := fs.String("addr", "", "client: server address")
	n := fs.Int("n", 10000, "client: samples")
	size := fs.Int("size", 1, "client: request bytes")
	timeout := fs.Duration("timeout", 60*time.Second, "client: bound on the whole run")
	fs.Parse(os.Args[2:])
	if mode == "serve" {
		if err := serve(*tcpAddr, *udpAddr); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen serve:", err)
			os.Exit(1)
		}
		return
	}
	if *addr == "" || *n < 1 || *size < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: --addr is required; --n and --size must be positive")
		os.Exit(2)
	}
	var sample func() error
	var closer func()
	var err error
	switch mode {
	case "rr":
		sample, closer, err = streamRR("tcp", *addr, *size)
	case "udprr":
		sample, closer, err = streamRR("udp", *addr, *size)
	case "crr":
		sample, closer = connectRR(*addr, *size), func() {}
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	defer closer()
	rep := run(mode, sample, *n, *timeout)
	json.NewEncoder(os.Stdout).Encode(rep)
	if rep.Samples == 0 {
		os.Exit(1)
	}
}

// run takes n samples (fewer if timeout passes first).
func run(mode string, sample func() error, n int, timeout time.Duration) report.Report {
	lat := make([]time.Duration, 0, n)
	rep := report.Report{Mode: mode}
	start := time.Now()
	deadline := start.Add(timeout)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		t0 := time.Now()
		if err := sample(); err != nil {
			rep.Errors++
			if rep.FirstEr == "" {
				rep.FirstEr = err.Error()
			}
			if mode != "crr" {
				break // a broken stream stays broken
			}
			continue
		}
		lat = append(lat, time.Since(t0))
	}
	el := time.Since(start)
	rep.Samples, rep.Elapsed = len(lat), el.Seconds()
	if len(lat) == 0 {
		return rep
	}
	rep.Rate = float64(len(lat)) / el.Seconds()
	slices.Sort(lat)
	us := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))]) / 1e3
	}
	rep.P50, rep.P90, rep.P99, rep.Max = us(0.5), us(0.9), us(0.99), float64(lat[len(lat)-1])/1e3
	return rep
}

// streamRR round-trips size bytes on one connection (TCP) or socket (UDP).
func streamRR(network, addr string, size int) (func() error, func(), error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	req, resp := make([]byte, size), make([]byte, size)
	return func() error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(req); err != nil {
			return err
		}
		if network == "udp" {
			_, err := c.Read(resp)
			return err
		}
		_, err := io.ReadFull(c, resp)
		return err
	}, func() { c.Close() }, nil
}

// connectRR opens a connection per sample: connect, one round trip, close.
func connectRR(addr string, size int) func() error {
	req, resp := make([]byte, size), make([]byte, size)
	return func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(req); err != nil {
			return err
		}
		_, err = io.ReadFull(c, resp)
		return err
	}
}

func serve(tcpAddr, udpAddr string) error {
	if tcpAddr == "" && udpAddr == "" {
		return errors.New("give --tcp and/or --udp")
	}
	errc := make(chan error, 2)
	if tcpAddr != "" {
		ln, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
	}
	if udpAddr != "" {
		pc, err := net.ListenPacket("udp", udpAddr)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					errc <- err
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	fmt.Println("ready")
	return <-errc
}
