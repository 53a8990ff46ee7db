package nodeport

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/internal/l4"
)

// A backend leaves its service: a flow tracked to it fails over (its next
// packet goes to a backend of the new table, which resets it).
func TestBackendRemovedMidStream(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "same LB", true: "new LB"}[restart], func(t *testing.T) { backendRemoved(t, restart) })
	}
}

func backendRemoved(t *testing.T, restart bool) {
	c := newCluster(t, TC)
	c.debugOnFailure(t)
	svc := Service{ID: newID(), Proto: l4.TCP, Backends: backendsOf(false, c.a.pods[0], c.b.pods[0])}
	c.service(t, svc, c.a)
	fe := netip.AddrPortFrom(c.a.ip4, nodePort)
	var conn net.Conn
	var server string
	for i := 0; i < 50 && server != "pb0"; i++ {
		if conn != nil {
			conn.Close()
		}
		if err := c.client.Do(func() (err error) { conn, err = net.DialTimeout("tcp", fe.String(), 3*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		server = ask(t, conn)
	}
	if server != "pb0" {
		t.Fatal("no flow to pb0")
	}
	defer conn.Close()
	if restart {
		// warpd restarted: a new LB on the pinned maps does the update
		c.a.lb.Close()
		lb, err := Open(c.a.root, Sizes{Frontends: 256, Services: 64, Backends: 256, Conns: 4096})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lb.Close() })
		c.a.lb = lb
		if n, err := lb.GC(); err != nil {
			t.Fatal(err, n)
		}
	}
	svc.Backends = backendsOf(false, c.a.pods[0])
	c.service(t, svc, c.a)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("who")); err == nil {
		buf := make([]byte, 100)
		if n, err := conn.Read(buf); err == nil {
			t.Errorf("the flow to the removed pb0 still answers: %q", buf[:n])
		}
	}
}

func ask(t *testing.T, conn net.Conn) string {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("who")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	server, _, _ := strings.Cut(string(buf[:n]), " ")
	return server
}
