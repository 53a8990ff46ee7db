package ipamk8s_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

// Pods on two nodes draw from one pool: every address is unique, inside
// the pool's ranges, never excluded or the gateway; the result carries the
// pool's gateway, routes and DNS; each address is one IPAllocation naming
// the pod and the node; CHECK confirms, DEL frees.
func TestPoolAcrossNodes(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	c.pool("storage", kube.IPPoolSpec{Subnet: "10.60.0.0/24", Gateway: "10.60.0.254",
		Ranges:  []kube.PoolRange{{Start: "10.60.0.10", End: "10.60.0.29"}, {Start: "10.60.0.100", End: "10.60.0.109"}},
		Exclude: []string{"10.60.0.12", "10.60.0.20/30"}, VLAN: ptrInt(300),
		Routes: []kube.PoolRoute{{Dst: "10.61.0.0/16", GW: "10.60.0.254"}},
		DNS:    &kube.PoolDNS{Nameservers: []string{"10.60.0.53"}, Search: []string{"storage.local"}}})
	allowed := map[string]bool{}
	for _, r := range [][2]string{{"10.60.0.10", "10.60.0.29"}, {"10.60.0.100", "10.60.0.109"}} {
		for a := netip.MustParseAddr(r[0]); a.Compare(netip.MustParseAddr(r[1])) <= 0; a = a.Next() {
			allowed[a.String()] = true
		}
	}
	for _, x := range []string{"10.60.0.12", "10.60.0.20", "10.60.0.21", "10.60.0.22", "10.60.0.23"} {
		delete(allowed, x)
	}

	type held struct {
		pod  *corev1.Pod
		node *node
		id   string
		ip   string
	}
	var all []held
	seen := map[string]string{}
	for i := 0; i < 16; i++ {
		n := c.nodes[fmt.Sprintf("node%d", i%2+1)]
		p := c.createPod("default", fmt.Sprintf("app-%d", i), n.name, nil)
		id := fmt.Sprintf("sandbox-%d", i)
		conf := n.conf(map[string]any{"pool": "storage"})
		res := n.add(id, "net1", p, conf)
		if len(res.IPs) != 1 {
			t.Fatalf("%s: %d addresses, want 1: %s", p.Name, len(res.IPs), jsonString(res))
		}
		ip := res.IPs[0]
		a := ip.Address.IP.String()
		if !allowed[a] {
			t.Errorf("%s got %s, outside the pool's ranges or excluded", p.Name, a)
		}
		if prev, dup := seen[a]; dup {
			t.Fatalf("%s got %s, which %s holds", p.Name, a, prev)
		}
		seen[a] = p.Name
		if ip.Address.String() != a+"/24" || ip.Gateway.String() != "10.60.0.254" {
			t.Errorf("%s: address %s gateway %s, want /24 via 10.60.0.254", p.Name, ip.Address.String(), ip.Gateway)
		}
		if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "10.61.0.0/16" || res.DNS.Nameservers[0] != "10.60.0.53" {
			t.Errorf("%s: routes %v dns %+v, want the pool's", p.Name, res.Routes, res.DNS)
		}
		n.ipam.MustSucceed(t, n.call("CHECK", id, "net1", p, harnessWithPrev(t, conf, res)))
		all = append(all, held{p, n, id, a})
	}
	objs := c.allocations()
	if len(objs) != len(all) {
		t.Fatalf("%d IPAllocations, want %d", len(objs), len(all))
	}
	for _, h := range all {
		o, ok := objs[h.ip]
		switch {
		case !ok:
			t.Errorf("no IPAllocation for %s", h.ip)
		case o.Name != h.ip || o.Spec.Pool != "storage" || o.Spec.Pod.Name != h.pod.Name || o.Spec.Pod.UID != string(h.pod.UID) ||
			o.Spec.Attachment == nil || o.Spec.Attachment.Node != h.node.name || o.Spec.Attachment.ContainerID != h.id || o.Spec.StatefulSet != nil:
			t.Errorf("IPAllocation %s = %s, want pool storage, pod %s, node %s, container %s", h.ip, jsonString(o), h.pod.Name, h.node.name, h.id)
		case o.Labels[kube.LabelNode] != h.node.name || o.Labels[kube.LabelPool] != "storage":
			t.Errorf("IPAllocation %s labels %v", h.ip, o.Labels)
		}
	}
	// Both nodes started in different parts of the pool (node-derived
	// cursors), yet neither refused an address the other holds.
	for _, h := range all {
		h.node.del(h.id, "net1", h.pod, h.node.conf(nil))
		h.node.del(h.id, "net1", h.pod, h.node.conf(nil)) // repeated: harmless
	}
	if left := c.addresses(); len(left) != 0 {
		t.Fatalf("after DEL, still allocated: %v", left)
	}
	for _, n := range c.nodes {
		if idx := n.index(); len(idx) != 0 {
			t.Errorf("%s: node-local index left: %v", n.name, idx)
		}
	}
}

func ptrInt(i int) *int { return &i }

// Bad input is a clear error naming what to fix, and leaves nothing.
func TestBadInput(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	c.pool("a", kube.IPPoolSpec{Subnet: "10.62.0.0/28"})
	p := c.createPod("default", "p", "node1", nil)
	for _, tc := range []struct {
		name  string
		ipam  map[string]any
		pod   *corev1.Pod
		args  string
		code  uint
		parts []string
	}{
		{"no pool", nil, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.pools", "missing"}},
		{"unknown pool", map[string]any{"pool": "nope"}, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.pools", `IPPool "nope" does not exist`}},
		{"ranges with kubernetes", map[string]any{"pool": "a", "ranges": [][]map[string]any{{{"subnet": "10.0.0.0/24"}}}}, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.ranges", "IPPools"}},
		{"bad store", map[string]any{"store": "etcd"}, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.store", `"etcd"`}},
		{"bad timeout", map[string]any{"pool": "a", "timeout": "forever"}, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.timeout"}},
		{"no pod in CNI_ARGS", map[string]any{"pool": "a"}, nil, "IgnoreUnknown=1", types.ErrInvalidEnvironmentVariables, []string{"K8S_POD_NAMESPACE"}},
		{"fixed outside the pool", map[string]any{"pool": "a"}, p, "IP=10.99.0.1", types.ErrInvalidNetworkConfig, []string{"CNI_ARGS IP", "10.99.0.1"}},
		{"fixed is the gateway", map[string]any{"pool": "a"}, p, "IP=10.62.0.1", types.ErrInvalidNetworkConfig, []string{"CNI_ARGS IP", "gateway"}},
		{"relative kubeconfig", map[string]any{"pool": "a", "kubeconfig": "kc"}, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.kubeconfig", "absolute"}},
		{"relative podFacts", map[string]any{"pool": "a", "podFacts": "pods"}, p, "", types.ErrInvalidNetworkConfig, []string{"ipam.podFacts", "absolute"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			call := n.call("ADD", "bad", "net1", tc.pod, n.conf(tc.ipam))
			if tc.pod != nil && tc.args != "" {
				call.Args += ";" + tc.args
			} else if tc.args != "" {
				call.Args = tc.args
			}
			e := n.ipam.MustFail(t, call, tc.code)
			if !contains(e.Msg, tc.parts...) {
				t.Errorf("message %q, want it to say %q", e.Msg, tc.parts)
			}
		})
	}
	if left := c.addresses(); len(left) != 0 {
		t.Fatalf("failed ADDs left allocations: %v", left)
	}
	if idx := n.index(); len(idx) != 0 {
		t.Fatalf("failed ADDs left index entries: %v", idx)
	}
	// DEL cleans up even when the configuration has since become invalid.
	res := n.add("ok", "net1", p, n.conf(map[string]any{"pool": "a"}))
	n.del("ok", "net1", p, n.conf(map[string]any{"pool": "does-not-exist", "probeTimeout": "forever"}))
	if left := c.addresses(); len(left) != 0 {
		t.Fatalf("DEL with an invalid configuration left %v (had %v)", left, ips(res))
	}
	// DEL whose kubeconfig is gone cannot reach the API server at all: it
	// succeeds, queueing the release, which the next call that can reach
	// the API server performs.
	held := ips(n.add("kc", "net1", p, n.conf(map[string]any{"pool": "a"})))
	n.del("kc", "net1", p, n.conf(map[string]any{"pool": "a", "kubeconfig": "/nonexistent/kubeconfig"}))
	if j := n.journal(); len(j) != 1 {
		t.Fatalf("journal %v, want the release of kc/net1 queued", j)
	}
	n.ipam.MustSucceed(t, harness.Call{Command: "STATUS", Config: n.conf(map[string]any{"pool": "a"})})
	if left := c.addresses(); len(left) != 0 || len(n.journal()) != 0 {
		t.Fatalf("after the queued release: allocated %v (had %v), journal %v", left, held, n.journal())
	}
	_ = cnierr.PluginNotAvailable
	_ = slices.Contains[[]string]
}

// A burst of concurrent ADDs on two nodes fills a pool exactly: the node
// lock covers only the pick of a candidate and the create runs outside it,
// so a node's processes claim at the same time, lose races to the other
// node and to each other's wrap-around, and still every pod gets its own
// address, every address of the pool is used once, and DEL frees them all.
func TestConcurrentADDsFillAPool(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	const size = 24 // the pool's addresses, and the ADDs
	c.pool("burst", kube.IPPoolSpec{Subnet: "10.62.0.0/24", Ranges: []kube.PoolRange{{Start: "10.62.0.10", End: fmt.Sprintf("10.62.0.%d", 10+size-1)}}})
	type add struct {
		n   *node
		pod *corev1.Pod
		o   *harness.Outcome
		err error
	}
	adds := make([]*add, size)
	for i := range adds {
		n := c.nodes[fmt.Sprintf("node%d", i%2+1)]
		adds[i] = &add{n: n, pod: c.createPod("default", fmt.Sprintf("burst-%d", i), n.name, nil)}
	}
	var wg sync.WaitGroup
	for _, a := range adds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			a.o, a.err = a.n.ipam.Exec(ctx, a.n.call("ADD", a.pod.Name, "net1", a.pod, a.n.conf(map[string]any{"pool": "burst"})))
		}()
	}
	wg.Wait()
	got := map[string]string{}
	for _, a := range adds {
		if a.err != nil || a.o.ExitCode != 0 {
			t.Fatalf("%s on %s: %v %v", a.pod.Name, a.n.name, a.err, a.o)
		}
		res := harness.ParseResult(t, a.o.Stdout)
		ip := res.IPs[0].Address.IP.String()
		if prev, dup := got[ip]; dup {
			t.Fatalf("%s got %s, which %s got too", a.pod.Name, ip, prev)
		}
		got[ip] = a.pod.Name
	}
	objs := c.allocations()
	if len(got) != size || len(objs) != size {
		t.Fatalf("%d addresses handed out, %d IPAllocations; want %d of each", len(got), len(objs), size)
	}
	for ip, pod := range got {
		if o := objs[ip]; o.Spec.Pod.Name != pod {
			t.Errorf("IPAllocation %s names pod %s, want %s", ip, o.Spec.Pod.Name, pod)
		}
	}
	for _, a := range adds {
		a.n.del(a.pod.Name, "net1", a.pod, a.n.conf(nil))
	}
	if left := c.addresses(); len(left) != 0 {
		t.Fatalf("after DEL, still allocated: %v", left)
	}
	for _, n := range c.nodes {
		if idx, j := n.index(), n.journal(); len(idx) != 0 || len(j) != 0 {
			t.Errorf("%s: index %v, journal %v left", n.name, idx, j)
		}
	}
}
