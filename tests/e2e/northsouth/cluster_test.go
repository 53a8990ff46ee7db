package northsouth_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
	peerPort = 9000 // peerServer, TCP and UDP: "<pod> <client address it saw>"
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

// addr is the node's address of the family.
func (n *node) addr(v6 bool) netip.Addr {
	if v6 {
		return n.v6
	}
	return n.v4
}

type pod struct {
	name   string
	node   *node
	ns     *harness.NetNS
	v4, v6 string
}

type cluster struct {
	t       *testing.T
	env     *harness.Env
	api     *apiserver.Server
	client  kubernetes.Interface
	l2      *harness.Segment
	ext     *harness.NetNS
	extV4   netip.Addr
	extV6   netip.Addr
	routing string // warpd --routing
}

func newCluster(t *testing.T) *cluster {
	harness.RequireTools(t, "socat", filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"),
		filepath.Join(harness.BinDir(), "warpctl"), filepath.Join(harness.BinDir(), "warp-sriov"))
	env := harness.New(t)
	c := &cluster{t: t, env: env, routing: "native"}
	c.api = apiserver.Start(t)
	c.client = c.api.Client(t)
	c.l2 = env.Segment("l2", "10.200.0.0/24", "fd00:200::/64")
	// the external client: on the underlay, no route to any pod
	c.ext = env.NetNS("ext")
	c.extV4, c.extV6 = c.l2.Attach(c.ext, "eth0", 50, true)
	return c
}

// clientAddr is the external client's address of the family.
func (c *cluster) clientAddr(v6 bool) string {
	if v6 {
		return c.extV6.String()
	}
	return c.extV4.String()
}

// addNode creates node i (host 10+i on seg) and its Node object, and
// starts its warpd with the north-south load balancer.
func (c *cluster) addNode(i int, seg *harness.Segment, warpdArgs ...string) *node {
	t := c.t
	n := &node{name: fmt.Sprintf("n%d", i)}
	n.ns = c.env.NetNS(n.name)
	n.v4, n.v6 = seg.Attach(n.ns, "eth0", 10+i)
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
		"--routing", c.routing, "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--service-cidr", "10.96.0.0/16,fd00:96::/112",
		"--resync", "5s"}, warpdArgs...)
	n.proc = n.ns.Start(t, n.warpd...).Process
	harness.WaitFor(t, "warpd on "+n.name+" to publish the node's facts", 60*time.Second, func() bool {
		_, err := os.Stat(n.facts)
		return err == nil
	})
	return n
}

// addPod adds a warp-veth pod on n with an echo server, a server that
// answers with the client address it sees, and a line server. veth holds
// warp-veth keys beyond the defaults ("redirect": "tc", "xdp": true).
func (c *cluster) addPod(t *testing.T, name string, n *node, veth map[string]any) *pod {
	p := &pod{name: name, node: n, ns: c.env.NetNS(name)}
	fields := map[string]any{"cniVersion": "1.1.0", "nodeFacts": n.facts, "bpffsRoot": n.bpffs,
		"ipam": map[string]any{"type": "warp-ipam", "ranges": [][]map[string]any{{{"subnet": "podCIDR"}}},
			"nodeFacts": n.facts, "dataDir": filepath.Join(c.env.TempDir, n.name, "ipam"), "detectConflicts": false}}
	for k, v := range veth {
		fields[k] = v
	}
	conf := harness.ConfigJSON(t, harness.NetConf("cluster", "warp-veth", fields))
	plugin := c.env.Plugin(t, "warp-veth").In(n.ns)
	res := harness.ParseResult(t, plugin.MustSucceed(t, harness.Call{Command: "ADD", ContainerID: name, Netns: p.ns.Path, IfName: "eth0", Config: conf}))
	for _, ip := range res.IPs {
		if ip.Address.IP.To4() != nil {
			p.v4 = ip.Address.IP.String()
		} else {
			p.v6 = ip.Address.IP.String()
		}
	}
	c.env.EchoServer(p.ns, name, echoPort)
	peerServer(t, c.env, p.ns, name)
	c.env.LineServer(p.ns, name, linePort)
	return p
}

// peerServer answers every TCP connection and every UDP datagram on
// peerPort with "<name> <the client address it sees>" (and closes the
// connection).
func peerServer(t *testing.T, env *harness.Env, ns *harness.NetNS, name string) {
	var l net.Listener
	var u net.PacketConn
	if err := ns.Do(func() (err error) {
		if l, err = net.Listen("tcp", fmt.Sprintf(":%d", peerPort)); err != nil {
			return err
		}
		u, err = net.ListenPacket("udp", fmt.Sprintf(":%d", peerPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	env.Defer("stop the client-address server in "+ns.Name, func() error { return errors.Join(l.Close(), u.Close()) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			u.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from.(*net.UDPAddr).AddrPort().Addr().Unmap()), from)
		}
	}()
}

// svcSpec describes a dual-stack Service whose ports lead to the pods'
// servers: tcp (80) and udp (53) to the echo servers, peer (TCP 90) and
// peer-udp (UDP 91) to the client-address servers, line (TCP 70) to the
// line servers.
type svcSpec struct {
	name        string
	typ         string // NodePort or LoadBalancer
	local       bool   // externalTrafficPolicy: Local
	mode        string // the warpnet.io/lb-mode annotation ("": none)
	externalIPs []netip.Addr
	pods        []*pod // the endpoints, all ready
}

// apply makes the API server hold exactly the Services of specs (and
// their EndpointSlices): those of an earlier apply that specs lack are
// deleted. It returns the Services as the API server filled them in.
func (c *cluster) apply(t *testing.T, specs ...svcSpec) []*corev1.Service {
	var doc strings.Builder
	for _, s := range specs {
		doc.WriteString(serviceYAML(s))
	}
	c.api.Apply(t, doc.String())
	var out []*corev1.Service
	for _, s := range specs {
		svc, err := c.client.CoreV1().Services("default").Get(t.Context(), s.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, svc)
	}
	return out
}

// serviceYAML is the Service of s with its EndpointSlices.
func serviceYAML(s svcSpec) string {
	policy := "Cluster"
	if s.local {
		policy = "Local"
	}
	var v4, v6 strings.Builder
	for _, p := range s.pods {
		fmt.Fprintf(&v4, "\n- {addresses: [%q], nodeName: %s, conditions: {ready: true}}", p.v4, p.node.name)
		fmt.Fprintf(&v6, "\n- {addresses: [%q], nodeName: %s, conditions: {ready: true}}", p.v6, p.node.name)
	}
	ports := fmt.Sprintf("[{name: tcp, port: %[1]d, protocol: TCP}, {name: udp, port: %[1]d, protocol: UDP}, {name: peer, port: %[2]d, protocol: TCP}, {name: peer-udp, port: %[2]d, protocol: UDP}, {name: line, port: %[3]d, protocol: TCP}]",
		echoPort, peerPort, linePort)
	annotations := "{}"
	if s.mode != "" {
		annotations = fmt.Sprintf("{warpnet.io/lb-mode: %s}", s.mode)
	}
	externalIPs := []string{}
	for _, a := range s.externalIPs {
		externalIPs = append(externalIPs, a.String())
	}
	extIPs, _ := json.Marshal(externalIPs)
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default, annotations: %[9]s}
spec:
  type: %[2]s
  externalTrafficPolicy: %[3]s
  externalIPs: %[11]s
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports: [{name: tcp, port: 80, protocol: TCP, targetPort: %[4]d}, {name: udp, port: 53, protocol: UDP, targetPort: %[4]d}, {name: peer, port: 90, protocol: TCP, targetPort: %[5]d}, {name: peer-udp, port: 91, protocol: UDP, targetPort: %[5]d}, {name: line, port: 70, protocol: TCP, targetPort: %[10]d}]
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
`, s.name, s.typ, policy, echoPort, peerPort, ports, v4.String(), v6.String(), annotations, linePort, extIPs)
}

// servicePort is the port of the Service's port name, and nodePort its
// NodePort.
func servicePort(svc *corev1.Service, name string) uint16 { return portOf(svc, name, false) }
func nodePort(svc *corev1.Service, name string) uint16    { return portOf(svc, name, true) }

func portOf(svc *corev1.Service, name string, node bool) uint16 {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			if node {
				return uint16(p.NodePort)
			}
			return uint16(p.Port)
		}
	}
	return 0
}

// protocols are the networks with their echo and client-address ports.
var protocols = []struct{ network, echo, peer string }{{"tcp", "tcp", "peer"}, {"udp", "udp", "peer-udp"}}

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

// waitAnswered waits until requests from the client to fe (each a new
// connection or socket) have been answered by each of pods and by no
// other.
func (c *cluster) waitAnswered(t *testing.T, network string, fe netip.AddrPort, pods ...*pod) {
	t.Helper()
	var names []string
	for _, p := range pods {
		names = append(names, p.name)
	}
	var seen map[string]int
	var err error
	start, failed := time.Now(), 0
	if !harness.Until(90*time.Second, 20*time.Millisecond, func() bool {
		if seen, err = c.answers(network, fe, 10*len(pods), names...); err != nil {
			failed++
		}
		for s := range seen {
			if !slices.Contains(names, s) {
				return false
			}
		}
		return len(seen) == len(names)
	}) {
		t.Fatalf("%s %s: want answers from %v, answered by %v (%d rounds with failures, the last: %v)", network, fe, names, seen, failed, err)
	}
	// (failures before warpd programs the service are expected: the
	// node refuses)
	t.Logf("%s %s: answered by %v after %v (%d rounds with failures, the last: %v)", network, fe, seen,
		time.Since(start).Round(time.Millisecond), failed, err)
}

// peerSeen asks the client-address server behind addr (a TCP connection
// or a UDP datagram) who answered and which client address it saw.
func (c *cluster) peerSeen(network string, addr netip.AddrPort) (server, seen string, err error) {
	var out string
	if network == "udp" {
		out, err = c.ext.Exchange(network, addr.String(), "who", 3*time.Second)
	} else {
		err = c.ext.Do(func() error {
			conn, err := net.DialTimeout("tcp", addr.String(), 3*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			out, err = bufio.NewReader(conn).ReadString('\n')
			return err
		})
	}
	server, seen, _ = strings.Cut(strings.TrimSpace(out), " ")
	return server, seen, err
}

// waitSeen waits until requests from the client to fe have reached each
// pod of want and no other, and each saw the client address want gives
// it (the client's own, or a node's under SNAT).
func (c *cluster) waitSeen(t *testing.T, network string, fe netip.AddrPort, want map[string]string) {
	t.Helper()
	var seen map[string]string
	var lastErr error
	if !harness.Until(60*time.Second, 20*time.Millisecond, func() bool {
		seen = map[string]string{}
		for range 10 * len(want) {
			server, addr, err := c.peerSeen(network, fe)
			if err != nil {
				lastErr = err
				continue
			}
			if w, ok := want[server]; !ok || w != addr {
				seen[server] = addr
				return false // not (yet) as it should be
			}
			seen[server] = addr
			if len(seen) == len(want) {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("%s %s: want backends seeing %v, saw %v (last error %v)", network, fe, want, seen, lastErr)
	}
}

// health fetches the healthCheckNodePort of a node from the client.
func (c *cluster) health(addr netip.AddrPort) (int, map[string]any, error) {
	return harness.HTTPGetJSON(c.ext.Do, addr.String(), 5*time.Second)
}

// warpctl runs warpctl in n's namespace on n's pins.
func (c *cluster) warpctl(t *testing.T, n *node, args ...string) string {
	t.Helper()
	return n.ns.Exec(t, append([]string{filepath.Join(harness.BinDir(), "warpctl")}, append(args, "--bpffs-root", n.bpffs)...)...)
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
