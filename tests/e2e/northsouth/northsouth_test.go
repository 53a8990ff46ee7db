// Package northsouth_test runs warpd's north-south load balancer for real:
// two simulated nodes against a real API server, each with its own warpd
// (--lb-attach), pods from warp-veth, and an external client on the
// underlay, outside every cluster CIDR, that reaches NodePort and
// LoadBalancer Services through the nodes' addresses.
package northsouth_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

const (
	echoPort = 8080 // harness.EchoServer, TCP and UDP: "<pod>:<msg>"
	peerPort = 9000 // peerServer: answers with the client address it saw
	linePort = 7000 // harness.LineServer: answers lines until the client closes
)

type node struct {
	name   string
	ns     *harness.NetNS
	v4, v6 netip.Addr
	bpffs  string
	facts  string
	warpd  []string // argv
	proc   *os.Process
}

type pod struct {
	name   string
	node   *node
	ns     *harness.NetNS
	v4, v6 string
}

type cluster struct {
	t      *testing.T
	env    *harness.Env
	api    *apiserver.Server
	client kubernetes.Interface
	l2     *harness.Segment
	ext    *harness.NetNS
	extV4  netip.Addr
	extV6  netip.Addr
}

func newCluster(t *testing.T) *cluster {
	harness.RequireTools(t, "socat", filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"))
	env := harness.New(t)
	c := &cluster{t: t, env: env}
	c.api = apiserver.Start(t)
	c.client = c.api.Client(t)
	c.l2 = env.Segment("l2", "10.200.0.0/24", "fd00:200::/64")
	// the external client: on the underlay, no route to any pod
	c.ext = env.NetNS("ext")
	c.extV4, c.extV6 = c.l2.Attach(c.ext, "eth0", 50, true)
	return c
}

// addNode creates node i (host 10+i on the underlay) and its Node object,
// and starts its warpd with the north-south load balancer.
func (c *cluster) addNode(i int, warpdArgs ...string) *node {
	t := c.t
	n := &node{name: fmt.Sprintf("n%d", i)}
	n.ns = c.env.NetNS(n.name)
	n.v4, n.v6 = c.l2.Attach(n.ns, "eth0", 10+i)
	n.bpffs = c.env.BPFFS()
	n.facts = filepath.Join(c.env.TempDir, n.name, "node.json")
	cidrs := []string{fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("fd00:10:244:%d::/64", i)}
	obj, err := c.client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name},
		Spec: corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.v4.String()},
		{Type: corev1.NodeInternalIP, Address: n.v6.String()}}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(t.Context(), obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := c.env.Cgroup(n.name + "-pods")
	n.warpd = append([]string{filepath.Join(harness.BinDir(), "warpd"),
		"--kubeconfig", c.api.BridgeInto(t, n.ns), "--node-name", n.name, "--node-ip", n.v4.String() + "," + n.v6.String(),
		"--cgroup-root", pods.Path, "--bpffs-root", n.bpffs, "--node-facts", n.facts, "--listen", "127.0.0.1:9090",
		"--routing", "native", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--service-cidr", "10.96.0.0/16,fd00:96::/112",
		"--resync", "5s"}, warpdArgs...)
	n.proc = n.ns.Start(t, n.warpd...).Process
	harness.WaitFor(t, "warpd on "+n.name+" to publish the node's facts", 60*time.Second, func() bool {
		_, err := os.Stat(n.facts)
		return err == nil
	})
	return n
}

// addPod adds a warp-veth pod on n with an echo server and a server that
// answers with the client address it sees.
func (c *cluster) addPod(name string, n *node) *pod {
	t := c.t
	p := &pod{name: name, node: n, ns: c.env.NetNS(name)}
	conf := harness.ConfigJSON(t, harness.NetConf("cluster", "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"nodeFacts": n.facts, "bpffsRoot": n.bpffs,
		"ipam": map[string]any{"type": "warp-ipam", "ranges": [][]map[string]any{{{"subnet": "podCIDR"}}},
			"nodeFacts": n.facts, "dataDir": filepath.Join(c.env.TempDir, n.name, "ipam"), "detectConflicts": false}}))
	veth := c.env.Plugin(t, "warp-veth").In(n.ns)
	res := harness.ParseResult(t, veth.MustSucceed(t, harness.Call{Command: "ADD", ContainerID: name, Netns: p.ns.Path, IfName: "eth0", Config: conf}))
	for _, ip := range res.IPs {
		if ip.Address.IP.To4() != nil {
			p.v4 = ip.Address.IP.String()
		} else {
			p.v6 = ip.Address.IP.String()
		}
	}
	c.env.EchoServer(p.ns, name, echoPort)
	peerServer(t, p.ns)
	c.env.LineServer(p.ns, name, linePort)
	return p
}

// peerServer answers every TCP connection on peerPort with the client
// address it sees, and closes it.
func peerServer(t *testing.T, ns *harness.NetNS) {
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", fmt.Sprintf(":%d", peerPort)); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			c.Close()
		}
	}()
}

// apply creates a dual-stack Service of type typ with a TCP and a UDP port
// (to the pods' echo servers) and a TCP port to their client-address
// servers, and EndpointSlices with pods as endpoints.
func (c *cluster) apply(name, typ string, local bool, pods ...*pod) *corev1.Service {
	return c.applyMode(name, typ, local, "", pods...)
}

// applyMode is apply with the warpnet.io/lb-mode annotation ("": none).
func (c *cluster) applyMode(name, typ string, local bool, mode string, pods ...*pod) *corev1.Service {
	t := c.t
	policy := "Cluster"
	if local {
		policy = "Local"
	}
	var v4, v6 strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&v4, "\n- {addresses: [%q], nodeName: %s, conditions: {ready: true}}", p.v4, p.node.name)
		fmt.Fprintf(&v6, "\n- {addresses: [%q], nodeName: %s, conditions: {ready: true}}", p.v6, p.node.name)
	}
	ports := fmt.Sprintf("[{name: tcp, port: %d, protocol: TCP}, {name: udp, port: %d, protocol: UDP}, {name: peer, port: %d, protocol: TCP}, {name: line, port: %d, protocol: TCP}]", echoPort, echoPort, peerPort, linePort)
	annotations := "{}"
	if mode != "" {
		annotations = fmt.Sprintf("{warpnet.io/lb-mode: %s}", mode)
	}
	c.api.Apply(t, fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default, annotations: %[9]s}
spec:
  type: %[2]s
  externalTrafficPolicy: %[3]s
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{name: tcp, port: 80, protocol: TCP, targetPort: %[4]d}, {name: udp, port: 53, protocol: UDP, targetPort: %[4]d}, {name: peer, port: 90, protocol: TCP, targetPort: %[5]d}, {name: line, port: 70, protocol: TCP, targetPort: %[10]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-v4, namespace: default, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: %[6]s
endpoints:%[7]s
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-v6, namespace: default, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv6
ports: %[6]s
endpoints:%[8]s
`, name, typ, policy, echoPort, peerPort, ports, v4.String(), v6.String(), annotations, linePort))
	svc, err := c.client.CoreV1().Services("default").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func nodePort(svc *corev1.Service, name string) int {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return int(p.NodePort)
		}
	}
	return 0
}

// answers sends up to tries requests (each a new connection or socket,
// so a new source port) from the client to addr and returns who answered
// how often; it stops early once every one of want answered.
func (c *cluster) answers(network string, addr netip.AddrPort, tries int, want ...string) (map[string]int, error) {
	seen := map[string]int{}
	var lastErr error
	for i := 0; i < tries; i++ {
		reply, err := c.ext.Exchange(network, addr.String(), fmt.Sprint("hi", i), 3*time.Second)
		if err != nil {
			lastErr = err
			continue
		}
		server, _, _ := strings.Cut(reply, ":")
		seen[server]++
		all := len(want) > 0
		for _, w := range want {
			all = all && seen[w] > 0
		}
		if all {
			break
		}
	}
	return seen, lastErr
}

// peerSeen is the client address a backend saw for a connection from the
// external client to addr.
func (c *cluster) peerSeen(addr netip.AddrPort) (string, error) {
	var out string
	err := c.ext.Do(func() error {
		conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		out, err = bufio.NewReader(conn).ReadString('\n')
		return err
	})
	return strings.TrimSpace(out), err
}

// health fetches the healthCheckNodePort of a node from the client.
func (c *cluster) health(addr netip.AddrPort) (int, map[string]any, error) {
	var conn net.Conn
	if err := c.ext.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	}); err != nil {
		return 0, nil, err
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }}}
	resp, err := hc.Get("http://" + addr.String() + "/")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%q: %w", body, err)
	}
	return resp.StatusCode, v, nil
}

// conntrackOf lists the netfilter conntrack entries of n's namespace that
// involve the external client.
func (c *cluster) conntrackOf(n *node) (all int, client []string) {
	out := n.ns.Exec(c.t, "cat", "/proc/net/nf_conntrack")
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		all++
		if strings.Contains(l, "src="+c.extV4.String()+" ") || strings.Contains(l, "src="+c.extV6.String()+" ") {
			client = append(client, l)
		}
	}
	return all, client
}

// TestNorthSouth runs with --lb-attach tc: XDP on a veth underlay needs
// NIC-like settings on the simulated switch (bpf/nodeport's tests cover
// the XDP hook with them).
func TestNorthSouth(t *testing.T) {
	c := newCluster(t)
	n1 := c.addNode(1, "--lb-attach", "tc")
	n2 := c.addNode(2, "--lb-attach", "tc")
	p1, p2 := c.addPod("p1", n1), c.addPod("p2", n2)
	nodes := []*node{n1, n2}
	top := t

	t.Run("NodePort SNAT: backends on the same and the other node", func(t *testing.T) {
		svc := c.apply("web", "NodePort", false, p1, p2)
		for _, n := range nodes {
			for _, v6 := range []bool{false, true} {
				addr := n.v4
				if v6 {
					addr = n.v6
				}
				for _, proto := range []string{"tcp", "udp"} {
					fe := netip.AddrPortFrom(addr, uint16(nodePort(svc, proto)))
					var seen map[string]int
					var err error
					start, failed := time.Now(), 0
					defer func() {
						if t.Failed() {
							t.Logf("%s %s: answered by %v, %d rounds with failures, the last: %v", proto, fe, seen, failed, err)
						}
					}()
					harness.WaitFor(t, fmt.Sprintf("%s %s to answer from both pods", proto, fe), 90*time.Second, func() bool {
						if seen, err = c.answers(proto, fe, 10, "p1", "p2"); err != nil {
							failed++
						}
						return seen["p1"] > 0 && seen["p2"] > 0
					})
					// (failures before warpd programs the service are expected:
					// the node refuses)
					t.Logf("%s %s: answered by %v after %v (%d rounds with failures, the last: %v)", proto, fe, seen,
						time.Since(start).Round(time.Millisecond), failed, err)
				}
			}
		}
		// SNAT: a backend on the other node sees the node's address; one
		// on this node keeps the client's
		var seen map[string]bool
		var lastErr error
		defer func() {
			if t.Failed() {
				t.Logf("client addresses seen: %v (last error %v)", seen, lastErr)
			}
		}()
		harness.WaitFor(t, "both backends through n1 to report the client address they see", 30*time.Second, func() bool {
			seen = map[string]bool{}
			for i := 0; i < 20; i++ {
				s, err := c.peerSeen(netip.AddrPortFrom(n1.v4, uint16(nodePort(svc, "peer"))))
				if err != nil {
					lastErr = err
					continue
				}
				seen[s] = true
			}
			return seen[c.extV4.String()] && seen[n1.v4.String()]
		})
		// warpctl shows the service, its Maglev table and the flows
		warpctl := filepath.Join(harness.BinDir(), "warpctl")
		ext := n1.ns.Exec(t, warpctl, "lb", "external", "--bpffs-root", n1.bpffs)
		for _, want := range []string{p1.v4 + ":8080", p2.v4 + ":8080", n1.v4.String() + ":" + fmt.Sprint(nodePort(svc, "tcp")), "snat=", "local=", "reply="} {
			if !strings.Contains(ext, want) {
				t.Errorf("warpctl lb external on n1 lacks %q:\n%s", want, ext)
			}
		}
		conns := n1.ns.Exec(t, warpctl, "lb", "conns", "--bpffs-root", n1.bpffs)
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
		svc := c.apply("local", "LoadBalancer", true, p1)
		hc := uint16(svc.Spec.HealthCheckNodePort)
		if hc == 0 {
			t.Fatal("the API server allocated no healthCheckNodePort")
		}
		fe := netip.AddrPortFrom(n1.v4, uint16(nodePort(svc, "peer")))
		harness.WaitFor(t, "the local backend behind n1 to see the client's address", 60*time.Second, func() bool {
			s, err := c.peerSeen(fe)
			return err == nil && s == c.extV4.String()
		})
		t.Log("IPv4 client address kept")
		fe6 := netip.AddrPortFrom(n1.v6, uint16(nodePort(svc, "peer")))
		harness.WaitFor(t, "the local backend behind n1 to see the client's IPv6 address", 30*time.Second, func() bool {
			s, err := c.peerSeen(fe6)
			return err == nil && s == c.extV6.String()
		})
		t.Log("IPv6 client address kept")
		// n2 has no local endpoint: its NodePort drops, its health check
		// says 503 so that load balancers skip it
		if s, err := c.peerSeen(netip.AddrPortFrom(n2.v4, uint16(nodePort(svc, "peer")))); err == nil {
			t.Errorf("n2 (no local endpoint) answered, seen %q", s)
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
		harness.WaitFor(t, "the LoadBalancer IP to answer through n1", 60*time.Second, func() bool {
			s, err := c.peerSeen(netip.MustParseAddrPort("10.200.0.200:90"))
			return err == nil && s == c.extV4.String()
		})
	})

	t.Run("DSR: the backend's node answers the client directly", func(t *testing.T) {
		svc := c.applyMode("dsr", "NodePort", false, "dsr", p2) // p2 is on n2: remote from n1
		for _, fe := range []netip.AddrPort{netip.AddrPortFrom(n1.v4, uint16(nodePort(svc, "peer"))), netip.AddrPortFrom(n1.v6, uint16(nodePort(svc, "peer")))} {
			want := c.extV4.String()
			if fe.Addr().Is6() {
				want = c.extV6.String()
			}
			var s string
			var err error
			defer func() {
				if t.Failed() {
					t.Logf("%s: the backend saw %q (%v)", fe, s, err)
				}
			}()
			harness.WaitFor(t, "the remote backend behind "+fe.String()+" to see the client's address (DSR)", 90*time.Second, func() bool {
				s, err = c.peerSeen(fe)
				return err == nil && s == want
			})
		}
	})

	t.Run("warpd restarted: an established flow survives", func(t *testing.T) {
		svc := c.apply("restart", "NodePort", false, p1, p2)
		fe := netip.AddrPortFrom(n1.v4, uint16(nodePort(svc, "line")))
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
		if seen, err := c.answers("tcp", netip.AddrPortFrom(n1.v4, uint16(nodePort(svc, "tcp"))), 10); len(seen) == 0 {
			t.Errorf("no new connection after the restart: %v", err)
		}
	})

	t.Run("a backend removed mid-stream: its flows fail over, the others are untouched", func(t *testing.T) {
		svc := c.apply("failover", "NodePort", false, p1, p2)
		fe := netip.AddrPortFrom(n1.v4, uint16(nodePort(svc, "line")))
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
		c.apply("failover", "NodePort", false, p1) // p2 leaves
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
