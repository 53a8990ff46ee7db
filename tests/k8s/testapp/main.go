// Command testapp is the one binary of the real-cluster test images: the
// sandbox (pause) image and the app image (tests/k8s builds both with
// internal/ociimage). Static, no shell needed:
//
//	testapp pause                 wait for SIGTERM (pod sandbox)
//	testapp serve ADDR            HTTP: "<hostname> <pod IPs> from <client address>" on every path;
//	                              the same line answers every UDP datagram to ADDR
//	testapp echo ADDR             TCP and UDP echo server
//	testapp get URL [TRIES]       print the body of GET URL; retries connection errors (1s apart)
//	testapp hold ADDR DURATION    one TCP connection to an echo server, a round trip
//	                              every 100ms for DURATION (0: until stopped), a line
//	                              every 50; exits 1 at the first failure
//	testapp udp ADDR [TRIES]      one datagram to a UDP echo server; prints the reply and
//	                              the address it came from (1s per try)
//	testapp resolve NAME [TRIES]  the addresses of NAME through /etc/resolv.conf (the
//	                              kubelet's: the cluster's DNS); retries failures 1s apart
//	testapp addrs                 print this namespace's global addresses
//	testapp links                 print "<name> <mac> <addresses>" for every interface
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		wait()
		return
	}
	var err error
	switch os.Args[1] {
	case "pause":
		wait()
	case "serve":
		err = serve(arg(2))
	case "echo":
		err = echo(arg(2))
	case "get":
		err = get(arg(2), os.Args[3:])
	case "hold":
		err = hold(arg(2), arg(3))
	case "udp":
		err = udp(arg(2), os.Args[3:])
	case "resolve":
		err = resolve(arg(2), os.Args[3:])
	case "addrs":
		fmt.Println(strings.Join(addrs(), " "))
	case "links":
		err = links()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fmt.Fprintf(os.Stderr, "testapp %s: missing argument %d\n", os.Args[1], i)
		os.Exit(2)
	}
	return os.Args[i]
}

func wait() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}

func addrs() []string {
	var out []string
	as, _ := net.InterfaceAddrs()
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() {
			out = append(out, n.IP.String())
		}
	}
	return out
}

func links() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, i := range ifs {
		var as []string
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			as = append(as, a.String())
		}
		fmt.Printf("%s %s %s\n", i.Name, i.HardwareAddr, strings.Join(as, ","))
	}
	return nil
}

func serve(addr string) error {
	host, _ := os.Hostname()
	who := func(client string) string {
		return fmt.Sprintf("%s %s from %s\n", host, strings.Join(addrs(), ","), client)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(who(from.String())), from)
		}
	}()
	go func() { wait(); os.Exit(0) }()
	return http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, who(r.RemoteAddr))
	}))
}

func echo(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	go func() { wait(); os.Exit(0) }()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
	}
}

func tries(rest []string) int {
	if len(rest) > 0 {
		if n, err := strconv.Atoi(rest[0]); err == nil && n > 0 {
			return n
		}
	}
	return 1
}

func udp(addr string, rest []string) error {
	host, _ := os.Hostname()
	var err error
	for i := 0; i < tries(rest); i++ {
		var c net.Conn
		if c, err = net.Dial("udp", addr); err != nil {
			return err
		}
		msg := fmt.Sprintf("udp from %s %d", host, i)
		_ = c.SetDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 1500)
		var n int
		if _, err = c.Write([]byte(msg)); err == nil {
			n, err = c.Read(buf)
		}
		c.Close()
		if err == nil && string(buf[:n]) == msg {
			// A connected socket only accepts datagrams from its peer: the
			// reply came from addr (as the application sees it).
			fmt.Printf("%s (reply from %s)\n", buf[:n], c.RemoteAddr())
			return nil
		}
		if err == nil {
			err = fmt.Errorf("reply %q, want %q", buf[:n], msg)
		}
	}
	return err
}

func resolve(name string, rest []string) error {
	var err error
	for i := 0; i < tries(rest); i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		var as []string
		if as, err = net.LookupHost(name); err == nil {
			fmt.Println(strings.Join(as, " "))
			return nil
		}
	}
	return err
}

func get(url string, rest []string) error {
	tries := 1
	if len(rest) > 0 {
		tries, _ = strconv.Atoi(rest[0])
	}
	c := &http.Client{Timeout: 5 * time.Second}
	var err error
	for i := 0; i < tries; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		var resp *http.Response
		if resp, err = c.Get(url); err == nil {
			defer resp.Body.Close()
			_, err = io.Copy(os.Stdout, resp.Body)
			return err
		}
	}
	return err
}

func hold(addr, dur string) error {
	d, err := time.ParseDuration(dur)
	if err != nil {
		return err
	}
	var c net.Conn
	for i := 0; i < 30; i++ { // the server may not be up yet
		if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("connected %s -> %s (peer as seen: %s)\n", c.LocalAddr(), addr, c.RemoteAddr())
	r := bufio.NewReader(c)
	end := time.Now().Add(d)
	n := 0
	for d == 0 || time.Now().Before(end) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := fmt.Sprintf("ping %d\n", n)
		if _, err := io.WriteString(c, msg); err != nil {
			return fmt.Errorf("connection broke after %d round trips: %w", n, err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != msg {
			return fmt.Errorf("connection broke after %d round trips: %q %v", n, got, err)
		}
		n++
		if n%50 == 0 {
			fmt.Printf("%d round trips\n", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("held: %d round trips over one connection\n", n)
	return nil
}
