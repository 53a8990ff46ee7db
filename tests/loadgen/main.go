// Command loadgen is the benchmarks' traffic generator: a server and a client
// that run as their own processes inside pod namespaces (started with
// nsenter by the bench), so that a measurement includes a real process on
// each end and nothing of the test binary.
//
//	loadgen serve  [--tcp ADDR] [--udp ADDR] [--sink ADDR] [--who ADDR --name N]   servers until killed
//	loadgen rr     --addr HOST:PORT           request/response on one TCP connection
//	loadgen crr    --addr HOST:PORT[,...]     connect, request/response, close, per sample (to a random address of the list, as a service spreads)
//	loadgen udprr  --addr HOST:PORT           request/response on one UDP socket
//	loadgen udpcrr --addr HOST:PORT[,...]     a new connected UDP socket per request/response (a stub resolver)
//	loadgen stream --addr HOST:PORT           bulk TCP to a sink for --duration: throughput
//	loadgen probe  --addr A[,B...]            dial until each answered, or until one answers from a who server
//
// Clients take --n samples (bounded by --timeout) of --size-byte requests
// and print one JSON object: sample count, errors, elapsed time, rate and
// latency percentiles (and every latency with --samples, for merging runs).
// A p99 is only meaningful over 1000 samples or more; the report says how
// many there were. --cpu pins the process to one CPU.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/tests/loadgen/report"
)

func usage() {
	fmt.Fprint(os.Stderr, `loadgen: traffic generator for warpnet's benchmarks.

Usage:
  loadgen serve  [--tcp ADDR] [--udp ADDR] [--sink ADDR] [--who ADDR --name N]
                                             echo servers (TCP, UDP), a TCP sink, a TCP server
                                             that says "who:N" at once; until killed
  loadgen rr     --addr HOST:PORT [flags]    request/response on one TCP connection
  loadgen crr    --addr HOST:PORT[,...]      a new TCP connection per request/response, each to a random address of the list
  loadgen udprr  --addr HOST:PORT [flags]    request/response on one UDP socket
  loadgen udpcrr --addr HOST:PORT[,...]      a new connected UDP socket per request/response, each to a random address
  loadgen stream --addr HOST:PORT [flags]    bulk TCP to a sink for --duration
  loadgen probe  --addr A[,B...] [flags]     dial each address until it answers (prints when,
                                             in Unix ns); with --who, dial until a who server
                                             answers instead of an echo server

Client flags: --n samples (default 10000), --size request bytes (default 1),
--timeout overall bound (default 60s), --samples (report every latency),
--duration (stream, default 3s), --cpu N (pin to CPU N; -1: no pinning).
Clients print one JSON report. Probes print "ready" first, then one JSON line.
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
	sinkAddr := fs.String("sink", "", "serve: TCP sink address")
	whoAddr := fs.String("who", "", "serve: who server address; probe: wait for a who server's answer")
	name := fs.String("name", "", "serve: the name the who server says")
	addr := fs.String("addr", "", "client: server address (probe: comma-separated)")
	n := fs.Int("n", 10000, "client: samples")
	size := fs.Int("size", 1, "client: request bytes")
	timeout := fs.Duration("timeout", 60*time.Second, "client: bound on the whole run")
	samples := fs.Bool("samples", false, "client: report every latency")
	duration := fs.Duration("duration", 3*time.Second, "stream: how long")
	cpu := fs.Int("cpu", -1, "pin to this CPU")
	fs.Parse(os.Args[2:])
	if *cpu >= 0 {
		var set unix.CPUSet
		set.Set(*cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: --cpu:", err)
			os.Exit(1)
		}
	}
	switch mode {
	case "serve":
		if err := serve(*tcpAddr, *udpAddr, *sinkAddr, *whoAddr, *name); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen serve:", err)
			os.Exit(1)
		}
		return
	case "probe":
		probe(strings.Split(*addr, ","), *whoAddr != "", *timeout)
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
		sample, closer = connectRR("tcp", strings.Split(*addr, ","), *size), func() {}
	case "udpcrr":
		sample, closer = connectRR("udp", strings.Split(*addr, ","), *size), func() {}
	case "stream":
		rep := stream(*addr, *duration)
		json.NewEncoder(os.Stdout).Encode(rep)
		if rep.Errors > 0 {
			os.Exit(1)
		}
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	defer closer()
	rep := run(mode, sample, *n, *timeout, *samples)
	json.NewEncoder(os.Stdout).Encode(rep)
	if rep.Samples == 0 {
		os.Exit(1)
	}
}

// run takes n samples (fewer if timeout passes first).
func run(mode string, sample func() error, n int, timeout time.Duration, all bool) report.Report {
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
			if mode == "rr" || mode == "udprr" {
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
	if all {
		rep.Latencies = make([]float64, len(lat))
		for i, l := range lat {
			rep.Latencies[i] = float64(l) / 1e3
		}
	}
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

// connectRR opens a connection (TCP) or connected socket (UDP) per sample:
// connect, one round trip, close.
func connectRR(network string, addrs []string, size int) func() error {
	req, resp := make([]byte, size), make([]byte, size)
	return func() error {
		c, err := net.DialTimeout(network, addrs[rand.IntN(len(addrs))], 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(req); err != nil {
			return err
		}
		if network == "udp" {
			_, err = c.Read(resp)
			return err
		}
		_, err = io.ReadFull(c, resp)
		return err
	}
}

// stream writes to a sink for d and reports the throughput (Rate: bytes
// per second).
func stream(addr string, d time.Duration) report.Report {
	rep := report.Report{Mode: "stream"}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		rep.Errors, rep.FirstEr = 1, err.Error()
		return rep
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	var total int64
	start := time.Now()
	c.SetWriteDeadline(start.Add(d))
	for time.Since(start) < d {
		n, err := c.Write(buf)
		total += int64(n)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				rep.Errors, rep.FirstEr = 1, err.Error()
			}
			break
		}
	}
	rep.Elapsed = time.Since(start).Seconds()
	rep.Samples, rep.Rate = 1, float64(total)/rep.Elapsed
	return rep
}

// probe dials each address (TCP: connect, one byte, read) until it has
// answered once, or, with who, until a who server answers it; it prints
// "ready" first and then when each answered (Unix ns), bounded by timeout.
func probe(addrs []string, who bool, timeout time.Duration) {
	fmt.Println("ready")
	done := map[string]int64{}
	deadline := time.Now().Add(timeout)
	for len(done) < len(addrs) && time.Now().Before(deadline) {
		for _, a := range addrs {
			if _, ok := done[a]; ok {
				continue
			}
			if answer := probeOnce(a); answer != "" && (!who || strings.HasPrefix(answer, "who:")) {
				done[a] = time.Now().UnixNano()
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	json.NewEncoder(os.Stdout).Encode(done)
}

func probeOnce(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return ""
	}
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	return string(buf[:n])
}

func serve(tcpAddr, udpAddr, sinkAddr, whoAddr, name string) error {
	if tcpAddr == "" && udpAddr == "" && sinkAddr == "" && whoAddr == "" {
		return errors.New("give --tcp, --udp, --sink and/or --who")
	}
	errc := make(chan error, 4)
	listen := func(addr string, handle func(net.Conn)) error {
		ln, err := net.Listen("tcp", addr)
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
				go func() { defer c.Close(); handle(c) }()
			}
		}()
		return nil
	}
	for _, l := range []struct {
		addr   string
		handle func(net.Conn)
	}{
		{tcpAddr, func(c net.Conn) { io.Copy(c, c) }},
		{sinkAddr, func(c net.Conn) { io.Copy(io.Discard, bufio.NewReaderSize(c, 256<<10)) }},
		{whoAddr, func(c net.Conn) { fmt.Fprintf(c, "who:%s\n", name) }},
	} {
		if l.addr == "" {
			continue
		}
		if err := listen(l.addr, l.handle); err != nil {
			return err
		}
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
