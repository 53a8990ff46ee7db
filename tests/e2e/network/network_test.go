// Package network_test runs warpnet as a cluster's primary network: four
// simulated nodes against a real API server, each with its own warpd, and
// nothing wired by hand between them. Three nodes share an underlay L2
// segment (native routes), the fourth sits on another subnet behind a router
// (VXLAN). Pods get their addresses from their node's spec.podCIDRs through
// warp-ipam's "podCIDR" range and their MTU from warpd's node facts.
package network_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/internal/nodefacts"
	"github.com/warpnet/warpnet/plugins/veth/plugin"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

const (
	echoPort   = 8080 // harness.EchoServer: one exchange per connection, answers "<pod>:<msg>"
	streamPort = 7000 // harness.LineServer: answers lines until the client closes
)

type node struct {
	name  string
	ns    *harness.NetNS
	v4    netip.Addr
	v6    netip.Addr
	cidrs []string
	pods  *harness.Cgroup
	bpffs string
	facts string
	warpd []string // argv
	proc  *os.Process
	cmd   *exec.Cmd // the running warpd
}

type pod struct {
	name string
	node *node
	ns   *harness.NetNS
	v4   string
	v6   string
}

type cluster struct {
	t      *testing.T
	env    *harness.Env
	api    *apiserver.Server
	client kubernetes.Interface
	l2     *harness.Segment
	far    *harness.Segment
	router *harness.NetNS
	ext    *harness.NetNS
	nodes  map[string]*node
	pods   map[string]*pod
}

func newCluster(t *testing.T) *cluster {
	harness.RequireTools(t, "socat", filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"))
	env := harness.New(t)
	c := &cluster{t: t, env: env, nodes: map[string]*node{}, pods: map[string]*pod{}}
	c.api = apiserver.Start(t)
	c.client = c.api.Client(t)
	c.l2 = env.Segment("l2", "10.200.0.0/24", "fd00:200::/64")
	c.far = env.Segment("far", "10.201.0.0/24", "fd00:201::/64")
	c.router = env.Router("router", c.l2, c.far)
	// A host outside every cluster CIDR; it has no route to any pod.
	c.ext = env.NetNS("ext")
	c.far.Attach(c.ext, "eth0", 50)
	c.ext.Start(t, "socat", "TCP-LISTEN:9000,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR")
	return c
}

// addNode creates node i on seg (host number 10+i), its Node object with
// both pod CIDRs and InternalIPs, and starts its warpd.
func (c *cluster) addNode(i int, seg *harness.Segment, extraWarpd ...string) *node {
	return c.addNodeCIDRs(i, seg, true, extraWarpd...)
}

// addNodeCIDRs is addNode; withCIDRs false creates the Node without pod
// CIDRs (assignCIDRs gives them later, as the node IPAM controller does).
func (c *cluster) addNodeCIDRs(i int, seg *harness.Segment, withCIDRs bool, extraWarpd ...string) *node {
	t := c.t
	n := &node{name: fmt.Sprintf("n%d", i), cidrs: []string{fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("fd00:10:244:%d::/64", i)}}
	n.ns = c.env.NetNS(n.name)
	n.v4, n.v6 = seg.Attach(n.ns, "eth0", 10+i)
	n.pods, n.bpffs = c.env.Cgroup(n.name+"-pods"), c.env.BPFFS()
	n.facts = filepath.Join(c.env.TempDir, n.name, "node.json")
	c.createNode(n, withCIDRs)
	n.warpd = append([]string{filepath.Join(harness.BinDir(), "warpd"),
		"--kubeconfig", c.api.BridgeInto(t, n.ns), "--node-name", n.name,
		"--cgroup-root", n.pods.Path, "--bpffs-root", n.bpffs, "--node-facts", n.facts, "--listen", "127.0.0.1:9090",
		"--routing", "auto", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56",
		"--service-cidr", "10.96.0.0/16,fd00:96::/112"}, extraWarpd...)
	c.startWarpd(n)
	c.nodes[n.name] = n
	return n
}

func (c *cluster) createNode(n *node, withCIDRs bool) {
	t := c.t
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}
	if withCIDRs {
		obj.Spec = corev1.NodeSpec{PodCIDR: n.cidrs[0], PodCIDRs: n.cidrs}
	}
	created, err := c.client.CoreV1().Nodes().Create(t.Context(), obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.v4.String()}, {Type: corev1.NodeInternalIP, Address: n.v6.String()},
		{Type: corev1.NodeHostName, Address: n.name}}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(t.Context(), created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// assignCIDRs gives n's Node object its pod CIDRs.
func (c *cluster) assignCIDRs(n *node) {
	obj, err := c.client.CoreV1().Nodes().Get(c.t.Context(), n.name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	obj.Spec.PodCIDR, obj.Spec.PodCIDRs = n.cidrs[0], n.cidrs
	if _, err := c.client.CoreV1().Nodes().Update(c.t.Context(), obj, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) startWarpd(n *node) {
	cmd := n.ns.Start(c.t, n.warpd...)
	n.proc, n.cmd = cmd.Process, cmd
}

// waitFacts waits until n's warpd has published its facts.
func (c *cluster) waitFacts(n *node) nodefacts.Facts {
	var f nodefacts.Facts
	harness.WaitFor(c.t, "warpd on "+n.name+" to publish the node's facts", 30*time.Second, func() bool {
		var err error
		f, err = nodefacts.Read(n.facts)
		return err == nil && len(f.PodCIDRs) == 2
	})
	return f
}

// addPod adds a warp-veth pod on n with the one configuration every node
// shares (only the per-test paths differ, and extra fields), and starts its
// echo servers.
func (c *cluster) addPod(name string, n *node, args string, extra ...map[string]any) *pod {
	t := c.t
	p := &pod{name: name, node: n, ns: c.env.NetNS(name)}
	veth := c.env.Plugin(t, "warp-veth").In(n.ns)
	res := harness.ParseResult(t, veth.MustSucceed(t, harness.Call{Command: "ADD", ContainerID: name, Netns: p.ns.Path, IfName: "eth0", Config: c.podConf(n, extra...), Args: args}))
	for _, ip := range res.IPs {
		if ip.Address.IP.To4() != nil {
			p.v4 = ip.Address.IP.String()
		} else {
			p.v6 = ip.Address.IP.String()
		}
	}
	if p.v4 == "" || p.v6 == "" {
		t.Fatalf("pod %s on %s got %v, want an IPv4 and an IPv6 address from %v", name, n.name, res.IPs, n.cidrs)
	}
	c.env.EchoServer(p.ns, name, echoPort)
	c.env.LineServer(p.ns, name, streamPort)
	c.pods[name] = p
	return p
}

// podConf is the network configuration every node shares (only the test's
// per-node paths differ): addresses from the node's pod CIDRs, the MTU
// warpd publishes.
func (c *cluster) podConf(n *node, extra ...map[string]any) []byte {
	fields := map[string]any{"cniVersion": "1.1.0",
		"nodeFacts": n.facts, "bpffsRoot": n.bpffs,
		"ipam": map[string]any{"type": "warp-ipam", "ranges": [][]map[string]any{{{"subnet": "podCIDR"}}},
			"nodeFacts": n.facts, "dataDir": filepath.Join(c.env.TempDir, n.name, "ipam"), "detectConflicts": false}}
	for _, e := range extra {
		maps.Copy(fields, e)
	}
	return harness.ConfigJSON(c.t, harness.NetConf("cluster", "warp-veth", fields))
}

// redirected is how many packets pod p's tc program forwarded itself.
func (c *cluster) redirected(p *pod) uint64 {
	c.t.Helper()
	var n uint64
	if err := p.node.ns.Do(func() error {
		dp, err := podpath.OpenReadOnly(p.node.bpffs)
		if err != nil {
			return err
		}
		defer dp.Close()
		ep, ok, err := dp.Endpoint(plugin.Derive(p.name, "eth0").Owner)
		if err != nil || !ok {
			return fmt.Errorf("no endpoint for %s: %v", p.name, err)
		}
		cnt, err := dp.Counters(ep.HostIfIndex)
		n = cnt.RedirectPackets
		return err
	}); err != nil {
		c.t.Fatal(err)
	}
	return n
}

// exchange checks one request from pod a to pod b over network and family.
func (c *cluster) exchange(a, b *pod, network string, v6 bool) error {
	ip := b.v4
	if v6 {
		ip = b.v6
	}
	reply, err := a.ns.Exchange(network, net.JoinHostPort(ip, fmt.Sprint(echoPort)), "hi", 5*time.Second)
	if err != nil {
		return err
	}
	if reply != b.name+":hi" {
		return fmt.Errorf("%s -> %s (%s %s): reply %q", a.name, b.name, network, ip, reply)
	}
	return nil
}

// prober keeps exchanging between two pods (a new connection each time)
// and over one long-lived connection until stopped; it counts failures.
type prober struct {
	stop     chan struct{}
	done     sync.WaitGroup
	ok, fail atomic.Int64
	errs     sync.Map
}

func (c *cluster) probe(pairs ...[2]*pod) *prober {
	p := &prober{stop: make(chan struct{})}
	for _, pair := range pairs {
		a, b := pair[0], pair[1]
		var conn net.Conn
		if err := a.ns.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp", net.JoinHostPort(b.v4, fmt.Sprint(streamPort)), 5*time.Second)
			return err
		}); err != nil {
			c.t.Fatalf("long-lived connection %s -> %s: %v", a.name, b.name, err)
		}
		p.done.Add(2)
		go func() { // short connections
			defer p.done.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-p.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if err := c.exchange(a, b, "tcp", i%2 == 1); err != nil {
					p.fail.Add(1)
					p.errs.Store(err.Error(), true)
				} else {
					p.ok.Add(1)
				}
			}
		}()
		go func() { // one long-lived connection
			defer p.done.Done()
			defer conn.Close()
			r := bufio.NewReader(conn)
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := r.ReadString('\n'); err != nil { // the greeting
				p.fail.Add(1)
				p.errs.Store(fmt.Sprintf("long-lived %s -> %s: greeting: %v", a.name, b.name, err), true)
				return
			}
			for i := 0; i < 100000; i++ {
				select {
				case <-p.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				_, err := conn.Write([]byte("ping\n"))
				if err == nil {
					_, err = r.ReadString('\n')
				}
				if err != nil {
					p.fail.Add(1)
					p.errs.Store(fmt.Sprintf("long-lived %s -> %s: %v", a.name, b.name, err), true)
					return
				}
				p.ok.Add(1)
			}
		}()
	}
	return p
}

// finish stops the prober and fails the test if any exchange failed.
func (p *prober) finish(t *testing.T, during string) {
	t.Helper()
	close(p.stop)
	p.done.Wait()
	if p.fail.Load() > 0 || p.ok.Load() == 0 {
		var errs []string
		p.errs.Range(func(k, _ any) bool { errs = append(errs, k.(string)); return true })
		t.Errorf("%s: %d of %d exchanges failed: %s", during, p.fail.Load(), p.fail.Load()+p.ok.Load(), strings.Join(errs, "; "))
	}
	t.Logf("%s: %d exchanges, none failed", during, p.ok.Load())
}

// routesOn returns node n's warpnet routes (proto 119), one per line.
func routesOn(t *testing.T, n *node) string {
	out, _ := n.ns.Run(t.Context(), "ip", "-4", "route", "show", "proto", "119")
	out6, _ := n.ns.Run(t.Context(), "ip", "-6", "route", "show", "proto", "119")
	return out + out6
}

// extSees returns the source address the external host saw for a
// connection from pod p.
func (c *cluster) extSees(p *pod) string {
	var out string
	harness.WaitFor(c.t, "an answer from the external host to "+p.name, 20*time.Second, func() bool {
		o, err := p.ns.Run(c.t.Context(), "socat", "-T5", "-", "TCP:10.201.0.50:9000")
		out = strings.TrimSpace(o)
		return err == nil && out != ""
	})
	return out
}

func TestClusterNetwork(t *testing.T) {
	c := newCluster(t)
	for i := 1; i <= 3; i++ {
		c.addNode(i, c.l2, "--no-masquerade-cidrs", "10.244.1.192/26")
	}
	c.addNode(4, c.far)
	for _, n := range c.nodes {
		f := c.waitFacts(n)
		if f.MTU != 1450 || f.Routing != "auto" {
			t.Errorf("%s facts %+v: want MTU 1450 (auto: VXLAN overhead) and routing auto", n.name, f)
		}
	}
	// The router knows where the never-masquerade pod network lives, as an
	// underlay router would.
	c.router.Exec(t, "ip", "route", "add", "10.244.1.192/26", "via", "10.200.0.11")
	var pods []*pod
	for i := 1; i <= 4; i++ {
		n := c.nodes[fmt.Sprintf("n%d", i)]
		pods = append(pods, c.addPod(fmt.Sprintf("p%d", i), n, ""))
		// (ip, not /sys: nsenter keeps the machine's sysfs mount.)
		if link := pods[i-1].ns.Exec(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(link, " mtu 1450 ") {
			t.Errorf("pod on %s: %s, want the published MTU 1450", n.name, link)
		}
	}
	harness.WaitFor(t, "every node to route every other node's pods", 30*time.Second, func() bool {
		for _, n := range c.nodes {
			if strings.Count(routesOn(t, n), "\n") < 6 {
				return false
			}
		}
		return true
	})

	t.Run("every pair, TCP and UDP, IPv4 and IPv6", func(t *testing.T) {
		for _, a := range pods {
			for _, b := range pods {
				for _, network := range []string{"tcp", "udp"} {
					for _, v6 := range []bool{false, true} {
						if err := c.exchange(a, b, network, v6); err != nil {
							t.Error(err)
						}
					}
				}
			}
		}
	})

	t.Run("tc pods: the sending node's forwarding path skipped", func(t *testing.T) {
		// warp-veth's tc datapath beside plain pods: a second pod on n1,
		// and one on n2 (native) and n4 (tunnel).
		tcPods := []*pod{
			c.addPod("t1", c.nodes["n1"], "", map[string]any{"redirect": "tc"}),
			c.addPod("t1b", c.nodes["n1"], "", map[string]any{"redirect": "tc"}),
			c.addPod("t2", c.nodes["n2"], "", map[string]any{"redirect": "tc"}),
			c.addPod("t4", c.nodes["n4"], "", map[string]any{"redirect": "tc"}),
		}
		f := c.waitFacts(c.nodes["n1"])
		for _, want := range []string{"10.244.0.0/16", "fd00:10:244::/56", "10.244.4.0/24", "fd00:10:244:2::/64"} {
			if !slices.Contains(f.ClusterPodCIDRs, netip.MustParsePrefix(want)) {
				t.Errorf("n1's facts list the cluster's pod CIDRs %v, without %s", f.ClusterPodCIDRs, want)
			}
		}
		hops := c.nodes["n1"].ns.Exec(t, filepath.Join(harness.BinDir(), "warpctl"), "podpath", "nexthops", "--bpffs-root", c.nodes["n1"].bpffs)
		for _, want := range []string{"10.244.0.0/16", "fd00:10:244::/56", "fd00:10:244:4::/64"} {
			if !strings.Contains(hops, want) {
				t.Errorf("warpctl podpath nexthops on n1 lacks %s:\n%s", want, hops)
			}
		}
		for _, a := range append(tcPods, pods...) {
			for _, b := range append(tcPods, pods...) {
				for _, network := range []string{"tcp", "udp"} {
					for _, v6 := range []bool{false, true} {
						if err := c.exchange(a, b, network, v6); err != nil {
							t.Error(err)
						}
					}
				}
			}
		}
		// t1's packets to the pods on n1, n2 (native) and n4 (tunnel)
		// were forwarded by its program: to t1b with bpf_redirect_peer,
		// to the others' nodes with bpf_redirect_neigh.
		for _, to := range tcPods[1:] {
			for _, v6 := range []bool{false, true} {
				before := c.redirected(tcPods[0])
				for range 5 {
					if err := c.exchange(tcPods[0], to, "udp", v6); err != nil {
						t.Fatal(err)
					}
				}
				if after := c.redirected(tcPods[0]); after < before+5 {
					t.Errorf("t1 -> %s (v6=%v): %d packets redirected, want at least 5", to.name, v6, after-before)
				}
			}
		}
		// Traffic leaving the cluster takes the stack, and its masquerade.
		if got := c.extSees(tcPods[0]); !strings.Contains(got, "10.200.0.11") {
			t.Errorf("the external host saw %s from a tc pod on n1, want n1's address 10.200.0.11", got)
		}
	})

	t.Run("native where on-link, tunnel to the far node", func(t *testing.T) {
		r := routesOn(t, c.nodes["n1"])
		for _, want := range []string{"10.244.2.0/24 via 10.200.0.12 dev eth0", "10.244.4.0/24 via 10.244.4.0 dev warp-vxlan",
			"fd00:10:244:3::/64 via fd00:200::13 dev eth0"} {
			if !strings.Contains(r, want) {
				t.Errorf("n1 lacks %q:\n%s", want, r)
			}
		}
	})

	t.Run("warpctl shows how each peer is reached", func(t *testing.T) {
		out := c.nodes["n1"].ns.Exec(t, filepath.Join(harness.BinDir(), "warpctl"), "warpd", "status")
		for _, want := range []string{"routing:", "auto (masquerade true)", "pod MTU 1450", "10.244.1.0/24",
			"n2    native  10.200.0.12", "n4    tunnel  10.201.0.14"} {
			if !strings.Contains(out, want) {
				t.Errorf("warpctl warpd status on n1 lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("egress masquerade", func(t *testing.T) {
		if got := c.extSees(pods[0]); !strings.Contains(got, "10.200.0.11") {
			t.Errorf("the external host saw %s from a pod on n1, want n1's address 10.200.0.11", got)
		}
		if got := c.extSees(pods[3]); !strings.Contains(got, "10.201.0.14") {
			t.Errorf("the external host saw %s from a pod on n4, want n4's address 10.201.0.14", got)
		}
		keeper := c.addPod("keeps-ip", c.nodes["n1"], "IgnoreUnknown=1;IP=10.244.1.200,fd00:10:244:1::200")
		if got := c.extSees(keeper); !strings.Contains(got, "10.244.1.200") {
			t.Errorf("the external host saw %s from a never-masquerade pod, want its own 10.244.1.200", got)
		}
	})

	t.Run("ClusterIP with backends on other nodes", func(t *testing.T) {
		c.api.Apply(t, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: echo, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: echo, port: %d, protocol: TCP}]
endpoints:
- {addresses: [%s], nodeName: n2, conditions: {ready: true}}
- {addresses: [%s], nodeName: n4, conditions: {ready: true}}
`, echoPort, pods[1].v4, pods[3].v4))
		seen := map[string]int{}
		harness.WaitFor(t, "both remote backends to answer through the ClusterIP", 30*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			out, err := c.nodes["n1"].pods.Run(ctx, pods[0].ns, "hi", "socat", "-T3", "-", "TCP:10.96.0.10:80")
			if err == nil {
				seen[strings.TrimSuffix(strings.TrimSpace(out), ":hi")]++
			}
			return seen["p2"] > 0 && seen["p4"] > 0
		})
	})

	t.Run("nodes join, move and leave while traffic flows", func(t *testing.T) {
		p := c.probe([2]*pod{pods[0], pods[1]}, [2]*pod{pods[0], pods[3]})
		// n5 joins before the node IPAM controller gave it pod CIDRs: no
		// routes to it, no facts, and a pod ADD there must try again later.
		n5 := c.addNodeCIDRs(5, c.l2, false)
		harness.WaitFor(t, "n5's warpd to list the nodes", 30*time.Second, func() bool {
			return strings.Count(routesOn(t, n5), "\n") == 8 // 4 peers, 2 families
		})
		if _, err := nodefacts.Read(n5.facts); err == nil {
			t.Error("n5 published facts before it had pod CIDRs")
		}
		early := c.env.Plugin(t, "warp-veth").In(n5.ns)
		earlyPod := c.env.NetNS("early")
		out := early.MustFail(t, harness.Call{Command: "ADD", ContainerID: "early", Netns: earlyPod.Path, IfName: "eth0",
			Config: c.podConf(n5)}, 11)
		if !strings.Contains(out.Msg, "podCIDR") {
			t.Errorf("ADD before the pod CIDRs: %s, want a message about podCIDR", out.Msg)
		}
		c.assignCIDRs(n5)
		start := time.Now()
		harness.WaitFor(t, "n1 to route n5's pods", 10*time.Second, func() bool {
			return strings.Contains(routesOn(t, c.nodes["n1"]), "10.244.5.0/24 via 10.200.0.15")
		})
		t.Logf("n1 routed the new node's pods %v after the node got its pod CIDRs", time.Since(start).Round(time.Millisecond))
		c.waitFacts(n5)
		p5 := c.addPod("p5", n5, "")
		if err := c.exchange(pods[0], p5, "tcp", false); err != nil {
			t.Error(err)
		}
		// n5 moves to another address.
		n5.ns.Exec(t, "ip", "addr", "add", "10.200.0.25/24", "dev", "eth0")
		obj, err := c.client.CoreV1().Nodes().Get(t.Context(), "n5", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Status.Addresses[0].Address = "10.200.0.25"
		if _, err := c.client.CoreV1().Nodes().UpdateStatus(t.Context(), obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		harness.WaitFor(t, "n1 to follow n5's new address", 10*time.Second, func() bool {
			return strings.Contains(routesOn(t, c.nodes["n1"]), "10.244.5.0/24 via 10.200.0.25")
		})
		t.Logf("routes followed the address change after %v", time.Since(start).Round(time.Millisecond))
		if err := c.exchange(pods[0], p5, "tcp", false); err != nil {
			t.Error(err)
		}
		// n5 leaves.
		if err := c.client.CoreV1().Nodes().Delete(t.Context(), "n5", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		harness.WaitFor(t, "n1 to drop n5's routes", 10*time.Second, func() bool {
			return !strings.Contains(routesOn(t, c.nodes["n1"]), "10.244.5.")
		})
		p.finish(t, "pods on n1 -> n2 (native) and n1 -> n4 (tunnel) while n5 joined, moved and left")
	})

	t.Run("warpd restarts keep cross-node connections", func(t *testing.T) {
		p := c.probe([2]*pod{pods[0], pods[1]}, [2]*pod{pods[0], pods[3]})
		for _, name := range []string{"n1", "n4"} {
			n := c.nodes[name]
			n.proc.Kill()
			n.proc.Wait()
			c.startWarpd(n)
			// The facts are unchanged, so the file is not rewritten: the
			// new warpd's log says when it has synced.
			harness.WaitFor(t, "the restarted warpd on "+name+" to sync", 30*time.Second, func() bool {
				return strings.Contains(harness.Output(n.cmd), `"msg":"node networking synced"`)
			})
		}
		p.finish(t, "pods on n1 -> n2 and n1 -> n4 while warpd on n1 and n4 was killed and restarted")
		var f nodefacts.Facts
		data, _ := os.ReadFile(c.nodes["n1"].facts)
		json.Unmarshal(data, &f)
		if f.MTU != 1450 {
			t.Errorf("facts after restart: %+v", f)
		}
	})
}
