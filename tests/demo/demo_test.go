// Package demo is `make demo`: a two-node cluster simulated in network
// namespaces, with warpd on each node in file mode, veth and SR-IOV pods
// (simulated VFs) as backends of a TCP and a UDP ClusterIP Service, and a
// client of each pod kind calling them. It prints what happened and tears
// everything down, also on Ctrl-C (the harness's signal cleanup). It is a
// test so that `make test` keeps the demo working.
package demo

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

const (
	webIP, dnsIP = "10.96.0.10", "10.96.0.53"
	backendPort  = 8080
	requests     = 6
)

// Clients are the test binary re-executed in a node's pod cgroup (see
// harness.Main): warpd's hooks act on sockets of processes there.
func TestMain(m *testing.M) { harness.Main(m) }

type node struct {
	name    string
	ip      string // on the node-to-node underlay
	ns      *harness.NetNS
	pods    *harness.Cgroup
	bpffs   string
	facts   string // where warpd publishes the node's pod CIDRs and MTU
	pf      *sim.PF
	podCIDR string // veth pods: the Node's spec.podCIDRs
	vfGW    string // SR-IOV pods: the node's own port on the VF VLAN, their gateway
	vfFirst int    // and the first of the addresses its SR-IOV pods get
}

type pod struct {
	name, kind, ip string
	node           *node
	ns             *harness.NetNS
}

func say(format string, a ...any) { fmt.Printf("demo: "+format+"\n", a...) }

func TestDemo(t *testing.T) { runTwoNodes(t, "file") }

// TestTwoNodesFromAPIServer is the demo's cluster with each warpd watching a
// real kube-apiserver instead of a file.
func TestTwoNodesFromAPIServer(t *testing.T) { runTwoNodes(t, "api") }

func runTwoNodes(t *testing.T, mode string) {
	harness.RequireTools(t, filepath.Join(harness.BinDir(), "warpd"), filepath.Join(harness.BinDir(), "warp-veth"),
		filepath.Join(harness.BinDir(), "warp-sriov"), filepath.Join(harness.BinDir(), "warpctl"))
	env := harness.New(t)
	say("building a two-node cluster in network namespaces (no link to this machine's network)")
	nodes := []*node{
		{name: "node1", podCIDR: "10.244.1.0/24", vfGW: "192.168.50.1", vfFirst: 10},
		{name: "node2", podCIDR: "10.244.2.0/24", vfGW: "192.168.50.2", vfFirst: 50},
	}
	// Two networks join the nodes, as in a rack: the node-to-node underlay,
	// and the VLAN the SR-IOV NICs' ports are on. warpd routes between the
	// nodes' pod CIDRs by itself; nothing else is wired.
	underlay := env.Segment("underlay", "10.0.0.0/24", "")
	vlan := env.Segment("vf-vlan", "192.168.50.0/24", "")
	for i, n := range nodes {
		n.ns, n.pods, n.bpffs = env.NetNS(n.name), env.Cgroup(n.name+"-pods"), env.BPFFS()
		n.facts = filepath.Join(env.TempDir, n.name, "node.json")
		ip, _ := underlay.Attach(n.ns, "eth0", 10+i+1, true)
		n.ip = ip.String()
		p, err := sim.Create(sim.Spec{NodeNetns: n.ns.Path, Dir: filepath.Join(env.TempDir, n.name+"-sriov"), NumVFs: 2})
		if err != nil {
			t.Fatal(err)
		}
		env.Defer("destroy "+n.name+"'s simulated PF", p.Destroy)
		n.pf = p
		vlan.Plug(p.UnderlayNetns, p.UnderlayPort) // the PF's cable to the VLAN's switch
		// The node's own port on the VLAN (through the PF, as a host's
		// port on a NIC's embedded switch): the SR-IOV pods' gateway.
		n.ns.Exec(t, "ip", "link", "add", "host0", "link", p.PFName, "type", "macvlan", "mode", "bridge")
		n.ns.Exec(t, "ip", "addr", "add", n.vfGW+"/24", "dev", "host0")
		n.ns.Exec(t, "ip", "link", "set", "host0", "up")
		n.ns.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}

	// warpd on each node: from the Nodes it routes between the nodes' pod
	// CIDRs and publishes each node's pod CIDRs for warp-ipam.
	say("starting warpd on each node (%s mode)", mode)
	var apply func(doc string)
	source := func(*node) []string { return nil }
	if mode == "file" {
		file := filepath.Join(env.TempDir, "services.yaml")
		apply = func(doc string) {
			if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		source = func(*node) []string { return []string{"--services-file", file} }
	} else {
		api := apiserver.Start(t)
		ensureNamespace(t, api, "demo")
		apply = func(doc string) { api.Apply(t, doc) }
		source = func(n *node) []string { return []string{"--kubeconfig", api.BridgeInto(t, n.ns)} }
	}
	apply(nodesDoc(nodes))
	for _, n := range nodes {
		argv := append([]string{filepath.Join(harness.BinDir(), "warpd")}, source(n)...)
		n.ns.Start(t, append(argv, "--cgroup-root", n.pods.Path, "--bpffs-root", n.bpffs, "--node-name", n.name,
			"--node-facts", n.facts, "--listen", "", "--poll", "200ms")...)
	}
	for _, n := range nodes {
		harness.WaitFor(t, "warpd on "+n.name+" to publish the node's pod CIDRs", 20*time.Second, func() bool {
			_, err := os.Stat(n.facts)
			return err == nil
		})
		routes := strings.TrimSpace(n.ns.Exec(t, "ip", "route", "show", "proto", "119"))
		say("%s (%s): pods %s; warpd's route: %s", n.name, n.ip, n.podCIDR, routes)
	}

	var pods []*pod
	vfUsed := map[*node]int{}
	addPod := func(name, kind string, n *node) *pod {
		p := &pod{name: name, kind: kind, node: n, ns: env.NetNS(name)}
		var plugin *harness.Plugin
		var conf map[string]any
		ipam := map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(env.TempDir, n.name+"-ipam"), "detectConflicts": false}
		call := harness.Call{Command: "ADD", ContainerID: name, Netns: p.ns.Path, IfName: "eth0"}
		if kind == "veth" {
			// The same configuration on every node, as the shipped
			// conflist: addresses from the node's pod CIDRs, the MTU and
			// the cluster's pod CIDRs warpd publishes, the tc datapath.
			plugin = env.Plugin(t, "warp-veth").In(n.ns)
			ipam["ranges"] = [][]map[string]any{{{"subnet": "podCIDR"}}}
			ipam["nodeFacts"] = n.facts
			conf = map[string]any{"ipam": ipam, "nodeFacts": n.facts, "redirect": "tc", "bpffsRoot": n.bpffs}
		} else {
			plugin = env.Plugin(t, "warp-sriov").In(n.ns)
			ipam["ranges"] = [][]map[string]any{{{"subnet": "192.168.50.0/24", "gateway": n.vfGW,
				"rangeStart": fmt.Sprintf("192.168.50.%d", n.vfFirst), "rangeEnd": fmt.Sprintf("192.168.50.%d", n.vfFirst+39)}}}
			ipam["routes"] = []map[string]any{{"dst": "0.0.0.0/0"}}
			conf = map[string]any{"ipam": ipam, "deviceID": n.pf.VFs[vfUsed[n]].PCI, "vlan": 0, "dataDir": filepath.Join(env.TempDir, n.name+"-sriov-data")}
			vfUsed[n]++
			call.Env = n.pf.Env()
		}
		conf["cniVersion"] = "1.1.0"
		call.Config = harness.ConfigJSON(t, harness.NetConf("demo-"+kind, "warp-"+kind, conf))
		res := harness.ParseResult(t, plugin.MustSucceed(t, call))
		p.ip = res.IPs[0].Address.IP.String()
		pods = append(pods, p)
		say("%-10s %-6s pod on %s: %s", name, kind, n.name, p.ip)
		return p
	}
	backends := []*pod{
		addPod("web-v1", "veth", nodes[0]),
		addPod("web-v2", "veth", nodes[1]),
		addPod("web-s2", "sriov", nodes[1]),
	}
	for _, b := range backends {
		env.EchoServer(b.ns, b.name, backendPort)
	}
	clients := []*pod{addPod("client-v", "veth", nodes[0]), addPod("client-s", "sriov", nodes[0])}

	say("services: a TCP service %s:80 and a UDP service %s:53 with every backend", webIP, dnsIP)
	apply(nodesDoc(nodes) + servicesDoc(backends))
	for _, n := range nodes {
		waitProgrammed(t, n, len(backends))
	}

	type row struct{ service, proto, backend, peer string }
	var rows []row
	for _, c := range clients {
		for _, target := range []struct{ proto, addr string }{{"tcp", webIP + ":80"}, {"udp", dnsIP + ":53"}} {
			// Each request a new connection, or a new connected UDP socket.
			r := c.node.pods.RunClient(t, harness.Dials{Netns: c.ns.Path, Network: target.proto, Addr: target.addr, Count: requests})
			for _, a := range r.Dials {
				if a.Err != "" {
					t.Errorf("%s %s %s: %s", c.name, target.proto, target.addr, a.Err)
				}
				if a.Peer != target.addr {
					t.Errorf("%s: getpeername shows %s, want the service address %s", c.name, a.Peer, target.addr)
				}
				rows = append(rows, row{c.name + " -> " + target.addr, target.proto, a.Server, a.Peer})
			}
		}
	}

	fmt.Println()
	fmt.Println("Requests (each a new connection, or a new connected UDP socket):")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT -> SERVICE\tPROTO\tANSWERED BY\tGETPEERNAME SEEN BY CLIENT")
	seen := map[string]int{}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.service, r.proto, r.backend, r.peer)
		seen[r.backend]++
	}
	tw.Flush()
	fmt.Println()
	fmt.Println("Answers per backend:")
	for _, b := range backends {
		fmt.Printf("  %-8s (%s pod on %s, %s): %d\n", b.name, b.kind, b.node.name, b.ip, seen[b.name])
	}
	for _, n := range nodes {
		out, err := exec.Command(filepath.Join(harness.BinDir(), "warpctl"), "lb", "services", "--bpffs-root", n.bpffs).CombinedOutput()
		if err != nil {
			t.Fatalf("warpctl: %v %s", err, out)
		}
		fmt.Printf("\nwarpctl lb services on %s:\n%s", n.name, out)
	}
	say("done; tearing everything down")
}

// nodesDoc is the cluster's Node objects: name, pod CIDRs, InternalIP.
func nodesDoc(nodes []*node) string {
	var b strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Node\nmetadata: {name: %s}\nspec: {podCIDR: %s, podCIDRs: [%s]}\n"+
			"status: {addresses: [{type: InternalIP, address: %s}]}\n---\n", n.name, n.podCIDR, n.podCIDR, n.ip)
	}
	return b.String()
}

func servicesDoc(backends []*pod) string {
	var ips []string
	for _, b := range backends {
		ips = append(ips, b.ip)
	}
	return harness.ServiceYAML("demo", "web", webIP, "TCP", 80, backendPort, ips...) +
		harness.ServiceYAML("demo", "dns", dnsIP, "UDP", 53, backendPort, ips...)
}

func ensureNamespace(t *testing.T, api *apiserver.Server, name string) {
	_, err := api.Client(t).CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func waitProgrammed(t *testing.T, n *node, backends int) {
	harness.WaitFor(t, "warpd on "+n.name+" to program the services", 20*time.Second, func() bool {
		svcs, _ := servicelb.PinnedServices(n.bpffs)
		// Our two frontends, each with every backend (an API server
		// also serves default/kubernetes, which has no endpoints here).
		ready := 0
		for _, s := range svcs {
			if (s.Addr.String() == webIP || s.Addr.String() == dnsIP) && len(s.Backends) == backends {
				ready++
			}
		}
		return ready == 2
	})
}
