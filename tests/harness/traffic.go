package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Traffic helpers run in the test process: a socket is created inside a
// namespace (on the thread NetNS.Do has moved there) and stays in it, so
// servers and clients need no extra binaries. Every exchange is bounded in
// time, and servers stop at cleanup.

// EchoServer serves TCP and UDP echo on port of every address in n. Each
// reply is "<name>:<request>", so a test can tell which server answered
// (a load balancer's backend, say). It returns the port (useful when 0
// was passed: both protocols then share the TCP port number).
func (e *Env) EchoServer(n *NetNS, name string, port int) int {
	e.t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	err := n.Do(func() error {
		var err error
		if tl, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		port = tl.Addr().(*net.TCPAddr).Port
		ul, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		if tl != nil {
			tl.Close()
		}
		e.fatalf("echo server in %s: %v", n, err)
	}
	e.Defer("stop echo server in "+n.Name, func() error { return errors.Join(tl.Close(), ul.Close()) })
	serveTCP(tl, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		nr, err := c.Read(buf)
		if err != nil {
			return
		}
		c.Write([]byte(name + ":" + string(buf[:nr])))
	})
	go func() {
		buf := make([]byte, 4096)
		for {
			nr, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			ul.WriteTo([]byte(name+":"+string(buf[:nr])), from)
		}
	}()
	return port
}

// LineServer serves TCP on port of every address in n: it greets each
// connection with "<name>\n" and answers every line with
// "<name>:<line>\n" until the client closes, so that a test can hold a
// connection open (and see whether it is destroyed) as long as it likes.
func (e *Env) LineServer(n *NetNS, name string, port int) {
	e.t.Helper()
	var l net.Listener
	if err := n.Do(func() (err error) { l, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		e.fatalf("line server in %s: %v", n, err)
	}
	e.Defer("stop line server in "+n.Name, l.Close)
	serveTCP(l, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", name)
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s:%s\n", name, sc.Text())
		}
	})
}

// serveTCP accepts connections on l until it is closed, each handled on a
// goroutine of its own and closed after handle.
func serveTCP(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// HTTPGet fetches http://addr/ (a health check port) over a connection
// dialled inside a namespace by do (NetNS.Do or the like): http.Transport
// dials on goroutines of its own, which would be in the machine's
// namespace. It returns the status and the body, within timeout.
func HTTPGet(do func(func() error) error, addr string, timeout time.Duration) (int, []byte, error) {
	var conn net.Conn
	if err := do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	}); err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }}}
	resp, err := hc.Get("http://" + addr + "/")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// HTTPGetJSON is HTTPGet of a JSON object (a health check's answer).
func HTTPGetJSON(do func(func() error) error, addr string, timeout time.Duration) (int, map[string]any, error) {
	code, body, err := HTTPGet(do, addr, timeout)
	if err != nil {
		return code, nil, err
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		return code, nil, fmt.Errorf("%q: %w", body, err)
	}
	return code, v, nil
}

// Exchange sends msg from inside n to addr ("host:port") over network
// ("tcp", "udp", "tcp4", ...) and returns the reply. UDP is connected, so
// only the server's reply is accepted. It gives up after timeout.
func (n *NetNS) Exchange(network, addr, msg string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s dial %s from %s: %w", network, addr, n, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte(msg)); err != nil {
		return "", fmt.Errorf("%s write to %s from %s: %w", network, addr, n, err)
	}
	buf := make([]byte, 4096)
	nr, err := conn.Read(buf)
	if err != nil {
		return "", fmt.Errorf("%s read from %s in %s: %w", network, addr, n, err)
	}
	return string(buf[:nr]), nil
}

// MustExchange is Exchange that fails the test unless the reply is
// "<server>:<msg>"; it returns the server's name.
func (n *NetNS) MustExchange(t testing.TB, network, addr, msg string) string {
	t.Helper()
	reply, err := n.Exchange(network, addr, msg, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	server, echoed, ok := strings.Cut(reply, ":")
	if !ok || echoed != msg {
		t.Fatalf("%s %s from %s: reply %q, want \"<server>:%s\"", network, addr, n, reply, msg)
	}
	return server
}

// SNMP returns n's protocol counters, read inside n: /proc/net/snmp's as
// "Group:Name" ("Ip:ForwDatagrams", "Udp:InDatagrams", ...) and
// /proc/net/snmp6's under their own names ("Ip6OutForwDatagrams", ...).
func (n *NetNS) SNMP(t testing.TB) map[string]uint64 {
	t.Helper()
	out := n.Exec(t, "cat", "/proc/net/snmp", "/proc/net/snmp6")
	counters := map[string]uint64{}
	header := map[string][]string{} // group -> names, from the line before its values
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && !strings.HasSuffix(f[0], ":"):
			counters[f[0]] = parseCounter(t, f[1])
		case len(f) > 1 && strings.HasSuffix(f[0], ":"):
			group := strings.TrimSuffix(f[0], ":")
			names, ok := header[group]
			if !ok || len(names) != len(f)-1 {
				header[group] = f[1:]
				continue
			}
			for i, name := range names {
				if v, err := strconv.ParseInt(f[i+1], 10, 64); err == nil && v >= 0 { // a few are gauges, -1 for "none"
					counters[group+":"+name] = uint64(v)
				}
			}
			delete(header, group)
		}
	}
	return counters
}

// Forwarded returns how many IPv4 and IPv6 packets n's stack has forwarded
// (ForwDatagrams of /proc/net/snmp, Ip6OutForwDatagrams of
// /proc/net/snmp6, read inside n): a datapath that delivers packets itself
// leaves them flat, the forwarding path makes them grow.
func (n *NetNS) Forwarded(t testing.TB) (v4, v6 uint64) {
	t.Helper()
	c := n.SNMP(t)
	v4, ok4 := c["Ip:ForwDatagrams"]
	v6, ok6 := c["Ip6OutForwDatagrams"]
	if !ok4 || !ok6 {
		t.Fatalf("harness: no forwarding counters in %s's /proc/net/snmp{,6}", n)
	}
	return v4, v6
}

func parseCounter(t testing.TB, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("harness: counter %q: %v", s, err)
	}
	return v
}
