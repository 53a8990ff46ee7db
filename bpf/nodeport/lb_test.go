package nodeport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// debugOnFailure logs what the nodes' load balancers counted and track,
// and the kernel's counters, when t fails.
func (c *tcluster) debugOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range []*tnode{c.a, c.b} {
			st, _ := n.lb.Stats()
			cs, _ := n.lb.Conns()
			t.Logf("%s: stats %v; conns %+v", n.name, st, cs)
		}
		for _, ns := range []*harness.NetNS{c.client, c.a.ns, c.b.ns, c.b.pods[0].ns} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, _ := ns.Run(ctx, "nstat", "-az")
			cancel()
			var keep []string
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) > 1 && f[1] != "0" &&
					(strings.Contains(l, "Csum") || strings.Contains(l, "Err") || strings.Contains(l, "NoPorts") || strings.Contains(l, "Drop") || strings.HasPrefix(l, "Tcp") || strings.HasPrefix(l, "IpIn") || strings.HasPrefix(l, "IpForw") || strings.HasPrefix(l, "IpFrag") || strings.HasPrefix(l, "IpReasm") || strings.HasPrefix(l, "IpOut")) {
					keep = append(keep, strings.Join(f[:2], " "))
				}
			}
			t.Logf("%s: %s", ns.Name, strings.Join(keep, ", "))
		}
	})
}

// nextID gives every subtest's service its own ID (and counters).
var nextID uint32 = 100

func newID() uint32 { nextID++; return nextID }

func TestSNATToRemoteBackend(t *testing.T) {
	for _, hook := range []Hook{TC, XDP} {
		t.Run(string(hook), func(t *testing.T) {
			c := newCluster(t, hook)
			families(t, func(t *testing.T, v6 bool, proto l4.Protocol) {
				c.debugOnFailure(t)
				svc := Service{ID: newID(), IPv6: v6, Proto: proto, Backends: backendsOf(v6, c.b.pods[0])}
				c.service(t, svc, c.a)
				fe := netip.AddrPortFrom(nodeAddr(c.a, v6), nodePort)
				for range 3 {
					server, seen := c.mustWho(t, network(proto), fe)
					if server != "pb0" {
						t.Errorf("answered by %q, want pb0", server)
					}
					if !strings.HasPrefix(seen, netip.AddrPortFrom(nodeAddr(c.a, v6), 0).String()[:len(nodeAddr(c.a, v6).String())]) &&
						!strings.Contains(seen, nodeAddr(c.a, v6).String()) {
						t.Errorf("the backend saw %s, want node a's address (SNAT)", seen)
					}
				}
				if n := stat(t, c.a, svc.Key(), VerdictSNAT); n == 0 {
					t.Error("no packet counted as SNAT")
				}
				if n := stat(t, c.a, svc.Key(), VerdictReply); n == 0 {
					t.Error("no reply counted")
				}
				// XDP leaves only what it cannot send itself to tc: at
				// most the first packet, before node b's MAC is known.
				if n := stat(t, c.a, svc.Key(), VerdictXDPDeferred); hook == XDP && n > 1 {
					t.Errorf("XDP deferred %d packets of a native remote backend to tc", n)
				}
			})
		})
	}
}

func TestLocalBackendKeepsClientAddress(t *testing.T) {
	for _, hook := range []Hook{TC, XDP} {
		t.Run(string(hook), func(t *testing.T) {
			c := newCluster(t, hook)
			families(t, func(t *testing.T, v6 bool, proto l4.Protocol) {
				c.debugOnFailure(t)
				svc := Service{ID: newID(), IPv6: v6, Proto: proto, Backends: backendsOf(v6, c.a.pods[0])}
				c.service(t, svc, c.a)
				server, seen := c.mustWho(t, network(proto), netip.AddrPortFrom(nodeAddr(c.a, v6), nodePort))
				if server != "pa0" || !strings.Contains(seen, clientAddr(v6)) {
					t.Errorf("answered by %s, which saw %s; want pa0 seeing the client %s", server, seen, clientAddr(v6))
				}
				if stat(t, c.a, svc.Key(), VerdictLocal) == 0 || stat(t, c.a, svc.Key(), VerdictReply) == 0 {
					t.Error("not counted as local and reply")
				}
			})
		})
	}
}

func TestDSR(t *testing.T) {
	for _, hook := range []Hook{TC, XDP} {
		t.Run(string(hook), func(t *testing.T) {
			c := newCluster(t, hook)
			families(t, func(t *testing.T, v6 bool, proto l4.Protocol) {
				c.debugOnFailure(t)
				svc := Service{ID: newID(), IPv6: v6, Proto: proto, DSR: true, Backends: backendsOf(v6, c.b.pods[0])}
				c.service(t, svc, c.a)
				fe := netip.AddrPortFrom(nodeAddr(c.a, v6), nodePort)
				for range 3 {
					server, seen := c.mustWho(t, network(proto), fe)
					if server != "pb0" || !strings.Contains(seen, clientAddr(v6)) {
						t.Errorf("answered by %s, which saw %s; want pb0 seeing the client %s", server, seen, clientAddr(v6))
					}
				}
				if stat(t, c.a, svc.Key(), VerdictDSR) == 0 {
					t.Error("a counted no DSR packet")
				}
				// The replies went from b straight to the client.
				if n := stat(t, c.a, svc.Key(), VerdictReply); n != 0 {
					t.Errorf("a translated %d replies, want none (DSR)", n)
				}
				if stat(t, c.b, ServiceKey{IPv6: v6}, VerdictDSRRestore) == 0 {
					t.Error("b restored no DSR flow")
				}
			})
		})
	}
}

func TestTunnel(t *testing.T) {
	for _, hook := range []Hook{TC, XDP} {
		t.Run(string(hook), func(t *testing.T) {
			c := newCluster(t, hook)
			c.tunnel()
			for _, dsr := range []bool{false, true} {
				t.Run(map[bool]string{false: "SNAT", true: "DSR"}[dsr], func(t *testing.T) {
					families(t, func(t *testing.T, v6 bool, proto l4.Protocol) {
						c.debugOnFailure(t)
						svc := Service{ID: newID(), IPv6: v6, Proto: proto, DSR: dsr, Backends: backendsOf(v6, c.b.pods[0])}
						c.service(t, svc, c.a)
						fe := netip.AddrPortFrom(nodeAddr(c.a, v6), nodePort)
						for range 3 {
							if server, _ := c.mustWho(t, network(proto), fe); server != "pb0" {
								t.Errorf("answered by %q, want pb0", server)
							}
						}
						if stat(t, c.a, svc.Key(), VerdictTunnel) == 0 {
							t.Error("nothing was encapsulated")
						}
					})
				})
			}
			// The peer behind a router (the client, forwarding): the FIB
			// lookup gives the router as the next hop, the outer header
			// must still be addressed to the peer.
			t.Run("peer behind a router", func(t *testing.T) {
				c.debugOnFailure(t)
				c.client.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0")
				c.a.ns.Exec(t, "ip", "route", "add", c.b.ip4.String()+"/32", "via", clientAddr(false))
				svc := Service{ID: newID(), Proto: l4.TCP, Backends: backendsOf(false, c.b.pods[0])}
				c.service(t, svc, c.a)
				forwarded, _ := c.client.Forwarded(t)
				if server, _ := c.mustWho(t, "tcp", netip.AddrPortFrom(c.a.ip4, nodePort)); server != "pb0" {
					t.Errorf("answered by %q, want pb0", server)
				}
				if now, _ := c.client.Forwarded(t); now == forwarded {
					t.Error("the router forwarded nothing: the flow did not take the route through it")
				}
			})
		})
	}
}

// TestPathMTU: a packet that does not fit the tunnel once encapsulated is
// answered with ICMP "fragmentation needed" / "packet too big", so that its
// sender learns the path MTU: TCP through the tunnel lowers its segment
// size (XDP sees every segment), and a UDP sender that forbids
// fragmentation gets the path MTU in its route cache. tc takes GSO packets
// whole: their segments shrink to fit when they leave (no ICMP needed).
func TestPathMTU(t *testing.T) {
	for _, hook := range []Hook{TC, XDP} {
		t.Run(string(hook), func(t *testing.T) {
			c := newCluster(t, hook)
			c.tunnel()
			for _, v6 := range []bool{false, true} {
				t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
					c.debugOnFailure(t)
					tcp := Service{ID: newID(), IPv6: v6, Proto: l4.TCP, Backends: backendsOf(v6, c.b.pods[0])}
					c.service(t, tcp, c.a)
					fe := netip.AddrPortFrom(nodeAddr(c.a, v6), nodePort)
					bulk(t, c.client, fe, 2<<20)
					if n := stat(t, c.a, tcp.Key(), VerdictTooBig); hook == XDP && n == 0 {
						t.Error("no ICMP too big was sent, yet full-size segments cannot pass the tunnel")
					}

					udp := Service{ID: newID(), IPv6: v6, Proto: l4.UDP, Backends: backendsOf(v6, c.b.pods[0])}
					c.service(t, udp, c.a)
					// 1500 bytes, fragmentation forbidden, by a client that
					// has not learnt the path MTU yet
					c.client.Exec(t, "ip", "route", "flush", "cache")
					c.client.Exec(t, "ip", "-6", "route", "flush", "cache")
					if err := sendDF(c.client, fe, 1500); err != nil {
						t.Fatal(err)
					}
					harness.WaitFor(t, "the client to learn the path MTU", 10*time.Second, func() bool {
						out, _ := c.client.Run(t.Context(), "ip", "route", "get", fe.Addr().String())
						return strings.Contains(out, "mtu 1450")
					})
					if n := stat(t, c.a, udp.Key(), VerdictTooBig); n == 0 {
						t.Error("not counted as too big")
					}
					// what fits now passes
					if err := sendDF(c.client, fe, 1450); err != nil {
						t.Fatal(err)
					}
					if n := stat(t, c.a, udp.Key(), VerdictTunnel); n == 0 {
						t.Error("the datagram that fits was not sent")
					}
				})
			}
		})
	}
}

// sendDF sends a UDP datagram of size bytes (IP packet) from ns to addr
// with fragmentation forbidden (path MTU discovery "do").
func sendDF(ns *harness.NetNS, addr netip.AddrPort, size int) error {
	return ns.Do(func() error {
		network, hdr := "udp4", 28
		level, opt := unix.IPPROTO_IP, unix.IP_MTU_DISCOVER
		val := unix.IP_PMTUDISC_DO
		if addr.Addr().Is6() {
			network, hdr = "udp6", 48
			level, opt, val = unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO
		}
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, val) })
			return errors.Join(err, serr)
		}}
		conn, err := d.Dial(network, addr.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		payload := make([]byte, size-hdr)
		payload[0] = '#'
		_, err = conn.Write(payload)
		return err
	})
}

// bulk sends n bytes over one TCP connection from ns to addr (a whoServer,
// which echoes data starting with '#') and checks they come back.
func bulk(t *testing.T, ns *harness.NetNS, addr netip.AddrPort, n int) {
	t.Helper()
	var conn net.Conn
	if err := ns.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte('#' + i%50)
	}
	data[0] = '#'
	errc := make(chan error, 1)
	go func() { _, err := conn.Write(data); errc <- err }()
	got := make([]byte, n)
	for off := 0; off < n; {
		m, err := conn.Read(got[off:])
		if err != nil {
			t.Fatalf("bulk to %v: after %d of %d bytes: %v", addr, off, n, err)
		}
		off += m
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if string(got) != string(data) {
		t.Fatalf("bulk to %v: data changed on the way", addr)
	}
}

var _ = fmt.Sprint
