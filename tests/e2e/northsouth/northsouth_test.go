// Package northsouth_test runs warpd's north-south load balancer for real:
// simulated nodes against a real API server, each with its own warpd
// (--lb-attach), pods from warp-veth, and an external client on the
// underlay, outside every cluster CIDR, that reaches NodePort, ExternalIP
// and LoadBalancer Services through the nodes' addresses.
package northsouth_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/tests/harness"
)

// TestNorthSouth runs with --lb-attach tc on both nodes, natively routed
// (TestNorthSouthXDPAndTunnel covers XDP and the VXLAN tunnel).
func TestNorthSouth(t *testing.T) {
	c := newCluster(t)
	n1 := c.addNode(1, c.l2, "--lb-attach", "tc")
	n2 := c.addNode(2, c.l2, "--lb-attach", "tc")
	p1, p2 := c.addPod(t, "p1", n1, nil), c.addPod(t, "p2", n2, nil)
	nodes := []*node{n1, n2}
	top := t

	t.Run("NodePort SNAT: backends on the same and the other node", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "web", typ: "NodePort", pods: []*pod{p1, p2}})[0]
		for _, n := range nodes {
			for _, v6 := range []bool{false, true} {
				for _, p := range protocols {
					c.waitAnswered(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.echo)), p1, p2)
				}
			}
		}
		// SNAT: a backend on the other node sees the node's address; one
		// on this node keeps the client's
		for _, n := range nodes {
			local, remote := p1, p2
			if n == n2 {
				local, remote = p2, p1
			}
			for _, v6 := range []bool{false, true} {
				for _, p := range protocols {
					c.waitSeen(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.peer)),
						map[string]string{local.name: c.clientAddr(v6), remote.name: n.addr(v6).String()})
				}
			}
		}
		// warpctl shows the service, its Maglev table and the flows
		ext := c.warpctl(t, n1, "lb", "external")
		for _, want := range []string{p1.v4 + ":8080", p2.v4 + ":8080", n1.v4.String() + ":" + fmt.Sprint(nodePort(svc, "tcp")), "snat=", "local=", "reply="} {
			if !strings.Contains(ext, want) {
				t.Errorf("warpctl lb external on n1 lacks %q:\n%s", want, ext)
			}
		}
		conns := c.warpctl(t, n1, "lb", "conns")
		if !strings.Contains(conns, c.extV4.String()) {
			t.Errorf("warpctl lb conns on n1 shows no flow of the client:\n%s", conns)
		}
		// none of it went through netfilter's conntrack on the nodes
		// that balanced it (which does track: warpd's masquerade table
		// makes it, and the API server bridge's connections are listed)
		for _, n := range nodes {
			all, client := c.conntrackOf(n)
			if all == 0 {
				t.Errorf("%s: no conntrack entries at all: the check cannot see anything", n.name)
			}
			if len(client) > 0 {
				t.Errorf("%s: conntrack entries for the external client's traffic:\n%s", n.name, strings.Join(client, "\n"))
			}
		}
	})

	t.Run("externalTrafficPolicy Local: client address kept, health check port", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "local", typ: "LoadBalancer", local: true, pods: []*pod{p1}})[0]
		hc := uint16(svc.Spec.HealthCheckNodePort)
		if hc == 0 {
			t.Fatal("the API server allocated no healthCheckNodePort")
		}
		for _, v6 := range []bool{false, true} {
			for _, p := range protocols {
				c.waitSeen(t, p.network, netip.AddrPortFrom(n1.addr(v6), nodePort(svc, p.peer)), map[string]string{"p1": c.clientAddr(v6)})
			}
		}
		t.Log("TCP and UDP, IPv4 and IPv6: client address kept")
		// n2 has no local endpoint: its NodePort drops, its health check
		// says 503 so that load balancers skip it
		for _, p := range protocols {
			if s, seen, err := c.peerSeen(p.network, netip.AddrPortFrom(n2.v4, nodePort(svc, p.peer))); err == nil {
				t.Errorf("n2 (no local endpoint) answered %s: %s saw %s", p.network, s, seen)
			}
		}
		for _, tc := range []struct {
			n     *node
			code  int
			local float64
		}{{n1, 200, 1}, {n2, 503, 0}} {
			var code int
			var v map[string]any
			var err error
			harness.WaitFor(t, "the health check of "+tc.n.name, 30*time.Second, func() bool {
				code, v, err = c.health(netip.AddrPortFrom(tc.n.v4, hc))
				return err == nil && code == tc.code
			})
			if v["localEndpoints"] != tc.local || fmt.Sprint(v["service"]) != "map[name:local namespace:default]" {
				t.Errorf("%s health: %d %v (%v)", tc.n.name, code, v, err)
			}
		}

		// a LoadBalancer ingress IP, routed to n1 by the client
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "10.200.0.200"}}
		if _, err := c.client.CoreV1().Services("default").UpdateStatus(t.Context(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// the route only once n1 serves the address: before, n1's stack
		// would forward the client's packets back onto the segment and
		// send it an ICMP redirect, which the client would keep
		harness.WaitFor(t, "n1 to program the LoadBalancer IP", 60*time.Second, func() bool {
			out, err := n1.ns.Run(t.Context(), filepath.Join(harness.BinDir(), "warpctl"), "lb", "external", "--bpffs-root", n1.bpffs)
			return err == nil && strings.Contains(out, "10.200.0.200:90")
		})
		c.ext.Exec(t, "ip", "route", "add", "10.200.0.200/32", "via", n1.v4.String())
		for _, p := range protocols {
			c.waitSeen(t, p.network, netip.AddrPortFrom(netip.MustParseAddr("10.200.0.200"), servicePort(svc, p.peer)), map[string]string{"p1": c.clientAddr(false)})
		}
	})

	t.Run("DSR: the backend's node answers the client directly", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "dsr", typ: "NodePort", mode: "dsr", pods: []*pod{p2}})[0] // p2 is on n2: remote from n1
		for _, v6 := range []bool{false, true} {
			for _, p := range protocols {
				c.waitSeen(t, p.network, netip.AddrPortFrom(n1.addr(v6), nodePort(svc, p.peer)), map[string]string{"p2": c.clientAddr(v6)})
			}
		}
	})

	t.Run("ExternalIPs: each node serves its own", func(t *testing.T) {
		// n1's addresses and n2's IPv4 one; n2's IPv6 address is no
		// ExternalIP, so nothing answers on the service's ports there
		svc := c.apply(t, svcSpec{name: "extip", typ: "NodePort", externalIPs: []netip.Addr{n1.v4, n1.v6, n2.v4}, pods: []*pod{p1, p2}})[0]
		for _, a := range []netip.Addr{n1.v4, n1.v6, n2.v4} {
			for _, p := range protocols {
				c.waitAnswered(t, p.network, netip.AddrPortFrom(a, servicePort(svc, p.echo)), p1, p2)
			}
		}
		// the same SNAT and local delivery as NodePorts
		c.waitSeen(t, "tcp", netip.AddrPortFrom(n1.v4, servicePort(svc, "peer")), map[string]string{"p1": c.clientAddr(false), "p2": n1.v4.String()})
		c.waitSeen(t, "udp", netip.AddrPortFrom(n2.v4, servicePort(svc, "peer-udp")), map[string]string{"p2": c.clientAddr(false), "p1": n2.v4.String()})
		if reply, err := c.ext.Exchange("tcp", netip.AddrPortFrom(n2.v6, servicePort(svc, "tcp")).String(), "hi", 3*time.Second); err == nil {
			t.Errorf("n2's IPv6 address, not an ExternalIP, answered on the service's port: %q", reply)
		}
		// an ExternalIP removed: its node stops answering there
		c.apply(t, svcSpec{name: "extip", typ: "NodePort", externalIPs: []netip.Addr{n1.v4, n1.v6}, pods: []*pod{p1, p2}})
		harness.WaitFor(t, "n2 to stop serving its address as an ExternalIP", 60*time.Second, func() bool {
			_, err := c.ext.Exchange("tcp", netip.AddrPortFrom(n2.v4, servicePort(svc, "tcp")).String(), "hi", 3*time.Second)
			return err != nil
		})
		// externalTrafficPolicy Local applies to ExternalIPs too: only
		// the node's own backends, with the client's address
		local := c.apply(t, svcSpec{name: "extip-local", typ: "NodePort", local: true, externalIPs: []netip.Addr{n2.v4, n2.v6}, pods: []*pod{p1, p2}})[0]
		for _, v6 := range []bool{false, true} {
			for _, p := range protocols {
				c.waitSeen(t, p.network, netip.AddrPortFrom(n2.addr(v6), servicePort(local, p.peer)), map[string]string{"p2": c.clientAddr(v6)})
			}
		}
	})

	t.Run("backends running warp-veth's own tc or XDP program", func(t *testing.T) {
		for _, kind := range []struct {
			name string
			veth map[string]any
		}{
			{"tc", map[string]any{"redirect": "tc"}}, // the shipped conflist's
			{"xdp", map[string]any{"xdp": true}},
		} {
			t.Run(kind.name, func(t *testing.T) {
				k1, k2 := c.addPod(t, kind.name+"1", n1, kind.veth), c.addPod(t, kind.name+"2", n2, kind.veth)
				// SNAT: k1 is local to n1 and remote from n2, k2 the
				// other way round; Local: the local backend answers
				// with the client's address kept; DSR to the other
				// node: the backend's node answers
				svcs := c.apply(t, svcSpec{name: kind.name + "-snat", typ: "NodePort", pods: []*pod{k1, k2}},
					svcSpec{name: kind.name + "-local", typ: "NodePort", local: true, pods: []*pod{k1}},
					svcSpec{name: kind.name + "-dsr", typ: "NodePort", mode: "dsr", pods: []*pod{k2}})
				svc, local, dsr := svcs[0], svcs[1], svcs[2]
				for _, n := range nodes {
					local, remote := k1, k2
					if n == n2 {
						local, remote = k2, k1
					}
					for _, v6 := range []bool{false, true} {
						for _, p := range protocols {
							c.waitAnswered(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.echo)), k1, k2)
							c.waitSeen(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.peer)),
								map[string]string{local.name: c.clientAddr(v6), remote.name: n.addr(v6).String()})
						}
					}
				}
				for _, v6 := range []bool{false, true} {
					for _, p := range protocols {
						c.waitSeen(t, p.network, netip.AddrPortFrom(n1.addr(v6), nodePort(local, p.peer)), map[string]string{k1.name: c.clientAddr(v6)})
						c.waitSeen(t, p.network, netip.AddrPortFrom(n1.addr(v6), nodePort(dsr, p.peer)), map[string]string{k2.name: c.clientAddr(v6)})
					}
				}
				// and the pods' own program saw their replies
				for _, k := range []*pod{k1, k2} {
					checkPodProgram(t, c, k, kind.name)
				}
			})
		}
	})

	t.Run("SR-IOV pods as backends: reached with SNAT on the VFs' network", func(t *testing.T) {
		// Each node's simulated PF is cabled to the VFs' network, and the
		// node has its own port there (host0, through the PF, as a host's
		// port on the NIC's embedded switch): the gateway of its SR-IOV
		// pods. Their traffic never crosses a veth of the node, so the
		// load balancer reaches them as it reaches remote backends: with
		// SNAT to the node's address on that network, local or not.
		vfnet := c.env.Segment("vfnet", "192.168.50.0/24", "fd00:50::/64")
		var srs []*pod
		for i, n := range nodes {
			gw4, gw6 := vfnet.Host(1+i, true), vfnet.Host(1+i, false)
			// warpctl, not sim.Create in this process: creating the
			// underlay namespace retires the OS thread that did it, and a
			// thread's exit kills the children it forked with Pdeathsig
			// (warpd)
			warpctl, dir := filepath.Join(harness.BinDir(), "warpctl"), filepath.Join(c.env.TempDir, n.name+"-sriov")
			if out, err := exec.CommandContext(t.Context(), warpctl, "sim", "sriov", "create", "--netns", n.ns.Path, "--dir", dir, "--vfs", "1").CombinedOutput(); err != nil {
				t.Fatalf("warpctl sim sriov create: %v\n%s", err, out)
			}
			c.env.Defer("destroy "+n.name+"'s simulated PF", func() error {
				if out, err := exec.Command(warpctl, "sim", "sriov", "destroy", "--dir", dir).CombinedOutput(); err != nil {
					return fmt.Errorf("warpctl sim sriov destroy: %w\n%s", err, out)
				}
				return nil
			})
			pf, err := sim.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			vfnet.Plug(pf.UnderlayNetns, pf.UnderlayPort)
			n.ns.Exec(t, "ip", "link", "add", "host0", "link", pf.PFName, "type", "macvlan", "mode", "bridge")
			c.env.Addr(n.ns, "host0", gw4.String()+"/24")
			c.env.Addr(n.ns, "host0", gw6.String()+"/64")
			n.ns.Exec(t, "ip", "link", "set", "host0", "up")
			sr := &pod{name: fmt.Sprintf("sr%d", i+1), node: n}
			sr.ns = c.env.NetNS(sr.name)
			ipam := map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(c.env.TempDir, n.name, "sriov-ipam"), "detectConflicts": false,
				"ranges": [][]map[string]any{
					{{"subnet": "192.168.50.0/24", "gateway": gw4.String(), "rangeStart": fmt.Sprintf("192.168.50.%d", 10*(i+1)), "rangeEnd": fmt.Sprintf("192.168.50.%d", 10*(i+1)+9)}},
					{{"subnet": "fd00:50::/64", "gateway": gw6.String(), "rangeStart": fmt.Sprintf("fd00:50::%d", 10*(i+1)), "rangeEnd": fmt.Sprintf("fd00:50::%d", 10*(i+1)+9)}}},
				"routes": []map[string]any{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}}}
			conf := harness.ConfigJSON(t, harness.NetConf("vfs", "warp-sriov", map[string]any{"cniVersion": "1.1.0", "ipam": ipam,
				"deviceID": pf.VFs[0].PCI, "dataDir": filepath.Join(c.env.TempDir, n.name, "sriov-data")}))
			res := harness.ParseResult(t, c.env.Plugin(t, "warp-sriov").In(n.ns).MustSucceed(t,
				harness.Call{Command: "ADD", ContainerID: sr.name, Netns: sr.ns.Path, IfName: "eth0", Config: conf, Env: pf.Env()}))
			for _, ip := range res.IPs {
				if ip.Address.IP.To4() != nil {
					sr.v4 = ip.Address.IP.String()
				} else {
					sr.v6 = ip.Address.IP.String()
				}
			}
			c.env.EchoServer(sr.ns, sr.name, echoPort)
			peerServer(t, c.env, sr.ns, sr.name)
			srs = append(srs, sr)
		}
		svc := c.apply(t, svcSpec{name: "sriov", typ: "NodePort", pods: srs})[0]
		for i, n := range nodes {
			for _, v6 := range []bool{false, true} {
				gw := vfnet.Host(1+i, !v6).String()
				for _, p := range protocols {
					c.waitAnswered(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.echo)), srs...)
					c.waitSeen(t, p.network, netip.AddrPortFrom(n.addr(v6), nodePort(svc, p.peer)), map[string]string{"sr1": gw, "sr2": gw})
				}
			}
		}
	})

	t.Run("warpd restarted: an established flow survives", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "restart", typ: "NodePort", pods: []*pod{p1, p2}})[0]
		fe := netip.AddrPortFrom(n1.v4, nodePort(svc, "line"))
		var conn net.Conn
		harness.WaitFor(t, "a connection through "+fe.String(), 90*time.Second, func() bool {
			return c.ext.Do(func() (err error) {
				conn, err = net.DialTimeout("tcp", fe.String(), 3*time.Second)
				return err
			}) == nil
		})
		defer conn.Close()
		r := bufio.NewReader(conn)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		server, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("greeting: %v", err)
		}
		server = strings.TrimSpace(server)
		ping := func(what string) {
			t.Helper()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := fmt.Fprintf(conn, "%s\n", what); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			line, err := r.ReadString('\n')
			if err != nil || strings.TrimSpace(line) != server+":"+what {
				t.Fatalf("%s: %q, %v", what, line, err)
			}
		}
		ping("before")
		if err := n1.proc.Kill(); err != nil {
			t.Fatal(err)
		}
		n1.proc.Wait()
		ping("while warpd is down")
		n1.proc = n1.ns.Start(top, n1.warpd...).Process // lives on after this subtest
		harness.WaitFor(t, "the new warpd on n1 to be healthy", 60*time.Second, func() bool {
			out, err := n1.ns.Run(t.Context(), "curl", "-sf", "http://127.0.0.1:9090/healthz")
			return err == nil && out != ""
		})
		ping("after the new warpd synced")
		// and the new warpd serves new flows too
		if seen, err := c.answers("tcp", netip.AddrPortFrom(n1.v4, nodePort(svc, "tcp")), 10); len(seen) == 0 {
			t.Errorf("no new connection after the restart: %v", err)
		}
	})

	t.Run("a backend removed mid-stream: its flows fail over, the others are untouched", func(t *testing.T) {
		svc := c.apply(t, svcSpec{name: "failover", typ: "NodePort", pods: []*pod{p1, p2}})[0]
		fe := netip.AddrPortFrom(n1.v4, nodePort(svc, "line"))
		type flow struct {
			conn   net.Conn
			r      *bufio.Reader
			server string
		}
		byServer := map[string][]*flow{}
		var lastErr error
		defer func() {
			if t.Failed() {
				t.Logf("flows by backend: p1 %d, p2 %d; last error %v", len(byServer["p1"]), len(byServer["p2"]), lastErr)
				warpctl := filepath.Join(harness.BinDir(), "warpctl")
				for _, view := range []string{"external", "conns"} {
					out, err := n1.ns.Run(context.Background(), warpctl, "lb", view, "--bpffs-root", n1.bpffs)
					t.Logf("n1: warpctl lb %s: %v\n%s", view, err, out)
				}
			}
		}()
		harness.WaitFor(t, "long-lived connections through "+fe.String()+" to both backends", 90*time.Second, func() bool {
			var conn net.Conn
			if lastErr = c.ext.Do(func() (err error) { conn, err = net.DialTimeout("tcp", fe.String(), 3*time.Second); return err }); lastErr != nil {
				return false
			}
			f := &flow{conn: conn, r: bufio.NewReader(conn)}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			greeting, err := f.r.ReadString('\n')
			if err != nil {
				lastErr = fmt.Errorf("greeting: %w", err)
				conn.Close()
				return false
			}
			f.server = strings.TrimSpace(greeting)
			byServer[f.server] = append(byServer[f.server], f)
			t.Cleanup(func() { conn.Close() })
			return len(byServer["p1"]) > 0 && len(byServer["p2"]) > 0
		})
		ping := func(f *flow, what string) error {
			f.conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(f.conn, "%s\n", what); err != nil {
				return err
			}
			line, err := f.r.ReadString('\n')
			if err != nil {
				return err
			}
			if strings.TrimSpace(line) != f.server+":"+what {
				return fmt.Errorf("answer %q", line)
			}
			return nil
		}
		c.apply(t, svcSpec{name: "failover", typ: "NodePort", pods: []*pod{p1}}) // p2 leaves
		// Removal done: p2's backend entry is gone (warpctl lists the
		// backends from np_backends). Upsert deletes it last, after the
		// new Maglev table; the table's update waits for an RCU grace
		// period, so new connections avoid p2 some time before its
		// tracked flows fail over: they cannot tell that the removal is done.
		harness.WaitFor(t, "n1 to remove p2 from "+fe.String(), 60*time.Second, func() bool {
			out, err := n1.ns.Run(t.Context(), filepath.Join(harness.BinDir(), "warpctl"), "lb", "external", "--bpffs-root", n1.bpffs)
			if err != nil {
				return false
			}
			for _, row := range strings.Split(out, "\n") {
				if strings.Contains(row, " "+fe.String()+" ") {
					return !strings.Contains(row, p2.v4+":")
				}
			}
			return false
		})
		harness.WaitFor(t, "new connections to go to p1 only", 60*time.Second, func() bool {
			for range 10 {
				var conn net.Conn
				if c.ext.Do(func() (err error) { conn, err = net.DialTimeout("tcp", fe.String(), 3*time.Second); return err }) != nil {
					return false
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				greeting, err := bufio.NewReader(conn).ReadString('\n')
				conn.Close()
				if err != nil || strings.TrimSpace(greeting) != "p1" {
					return false
				}
			}
			return true
		})
		for _, f := range byServer["p1"] {
			if err := ping(f, "still there"); err != nil {
				t.Errorf("a flow to p1, which stayed, broke: %v", err)
			}
		}
		for _, f := range byServer["p2"] {
			// its packets now reach p1, which has no such connection
			if err := ping(f, "moved"); err == nil {
				t.Error("a flow to the removed p2 still answers as p2")
			}
		}
	})
}

// checkPodProgram checks that pod k's host end runs warp-veth's program of
// the kind (tc or xdp) and that the program passed packets of the pod
// (its replies included).
func checkPodProgram(t *testing.T, c *cluster, k *pod, kind string) {
	t.Helper()
	var eps []struct {
		IPs      []string `json:"ips"`
		Datapath string   `json:"datapath"`
		Attached *bool    `json:"attached"`
		Counters *struct {
			PassPackets uint64 `json:"passPackets"`
		} `json:"counters"`
	}
	out := c.warpctl(t, k.node, "podpath", "endpoints", "--json")
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("warpctl podpath endpoints --json on %s: %v\n%s", k.node.name, err, out)
	}
	for _, ep := range eps {
		if len(ep.IPs) == 0 || !strings.Contains(strings.Join(ep.IPs, ","), k.v4) {
			continue
		}
		if ep.Datapath != kind || ep.Attached == nil || !*ep.Attached || ep.Counters == nil || ep.Counters.PassPackets == 0 {
			t.Errorf("%s on %s: want its %s program attached and passing packets, got %s", k.name, k.node.name, kind, out)
		}
		return
	}
	t.Errorf("%s (%s) is not in %s's pod datapath:\n%s", k.name, k.v4, k.node.name, out)
}
