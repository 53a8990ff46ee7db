package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// The client child: the test binary re-executed (see client.go).

const clientEnv = "WARP_HARNESS_CLIENT"

// Main is TestMain for packages that start clients: in a client child it
// runs the client, otherwise the tests.
func Main(m *testing.M) {
	if spec := os.Getenv(clientEnv); spec != "" {
		os.Exit(runClient(spec))
	}
	os.Exit(m.Run())
}

// runClient is the child's side.
func runClient(spec string) int {
	var d Dials
	if err := json.Unmarshal([]byte(spec), &d); err != nil {
		fmt.Fprintf(os.Stderr, "harness client: spec %q: %v\n", spec, err)
		return 2
	}
	if d.Msg == "" {
		d.Msg = "hi"
	}
	if d.Timeout <= 0 {
		d.Timeout = 2 * time.Second
	}
	stop := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stop) }() // stdin closed: stop
	// A counted client reports at the end, an endless one as it goes (the
	// test watches its progress).
	endless := d.Count == 0
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	if endless {
		enc = json.NewEncoder(os.Stdout)
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	err := ns.WithNetNSPath(d.Netns, func(ns.NetNS) error {
		start := time.Now()
		for i := 0; i < maxDials && (endless || i < d.Count) && !(endless && stopped()); i++ {
			enc.Encode(clientLine{Dial: dial(d)})
			time.Sleep(d.Pause)
		}
		return enc.Encode(clientLine{Done: true, Elapsed: time.Since(start)})
	})
	os.Stdout.Write(out.Bytes())
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness client: %v\n", err)
		return 1
	}
	return 0
}

func dial(d Dials) Dial {
	var r Dial
	t0 := time.Now()
	c, err := net.DialTimeout(d.Network, d.Addr, d.Timeout)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.Close()
	r.Peer = c.RemoteAddr().String() // getpeername(2)
	c.SetDeadline(time.Now().Add(d.Timeout))
	buf := make([]byte, 512)
	n := 0
	if _, err = c.Write([]byte(d.Msg)); err == nil {
		n, err = c.Read(buf)
	}
	r.Latency = time.Since(t0)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	server, echoed, ok := strings.Cut(string(buf[:n]), ":")
	if !ok || echoed != d.Msg {
		r.Err = fmt.Sprintf("reply %q, want \"<server>:%s\"", buf[:n], d.Msg)
		return r
	}
	r.Server = server
	return r
}
