package ipamk8s_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

// A full pool: ADD is "try again later" (11) and STATUS says the plugin
// cannot serve (50) naming the pool, until an address is freed.
func TestExhaustion(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	c.pool("tiny", kube.IPPoolSpec{Subnet: "10.76.0.0/29"}) // .2-.6: five addresses (.1 is the gateway)
	conf := map[string]any{"pool": "tiny"}
	n := c.nodes["node1"]
	status := harness.Call{Command: "STATUS", Config: n.conf(conf)}
	n.ipam.MustSucceed(t, status)
	var pods []*corev1.Pod
	for i := 0; i < 5; i++ {
		n := c.nodes[fmt.Sprintf("node%d", i%2+1)]
		p := c.createPod("default", fmt.Sprintf("p%d", i), n.name, nil)
		n.add(p.Name, "net1", p, n.conf(conf))
		pods = append(pods, p)
	}
	extra := c.createPod("default", "extra", "node1", nil)
	e := n.ipam.MustFail(t, n.call("ADD", "extra", "net1", extra, n.conf(conf)), types.ErrTryAgainLater)
	if !contains(e.Msg, "no free address") {
		t.Errorf("ADD on a full pool: %q", e.Msg)
	}
	e = n.ipam.MustFail(t, status, cnierr.PluginNotAvailable)
	if !contains(e.Msg, "IPPool tiny", "no free address") {
		t.Errorf("STATUS on a full pool: %q", e.Msg)
	}
	c.nodes["node2"].del(pods[1].Name, "net1", pods[1], n.conf(conf))
	n.ipam.MustSucceed(t, status)
	n.add("extra", "net1", extra, n.conf(conf))
	if got := c.addresses(); len(got) != 5 {
		t.Fatalf("allocated %v, want 5 addresses", got)
	}
}

// Two nodes race for the last free address, round after round: exactly one
// wins, the other is told to try again, nothing is held twice and the loser
// keeps nothing.
func TestRaceForTheLastAddress(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	c.pool("last", kube.IPPoolSpec{Subnet: "10.77.0.0/29"})
	conf := map[string]any{"pool": "last"}
	for i := 0; i < 4; i++ {
		p := c.createPod("default", fmt.Sprintf("filler%d", i), "node1", nil)
		c.nodes["node1"].add(p.Name, "net1", p, c.nodes["node1"].conf(conf))
	}
	for round := 0; round < 6; round++ {
		type outcome struct {
			node *node
			pod  *corev1.Pod
			o    *harness.Outcome
		}
		var wg sync.WaitGroup
		results := make([]outcome, 2)
		for i, name := range []string{"node1", "node2"} {
			n := c.nodes[name]
			p := c.createPod("default", fmt.Sprintf("r%d-%s", round, name), name, nil)
			results[i] = outcome{node: n, pod: p}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				o, err := n.ipam.Exec(ctx, n.call("ADD", p.Name, "net1", p, n.conf(conf)))
				if err != nil {
					t.Error(err)
				}
				results[i].o = o
			}()
		}
		wg.Wait()
		var winners []outcome
		for _, r := range results {
			switch {
			case r.o == nil:
			case r.o.ExitCode == 0:
				winners = append(winners, r)
			case r.o.Err == nil || r.o.Err.Code != types.ErrTryAgainLater:
				t.Fatalf("round %d: the loser on %s failed with %s, want code 11", round, r.node.name, r.o)
			}
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d ADDs got the last address, want exactly 1", round, len(winners))
		}
		allocs := c.allocations()
		if len(allocs) != 5 {
			t.Fatalf("round %d: %d addresses allocated, want 5: %v", round, len(allocs), c.addresses())
		}
		for _, r := range results {
			if r.node != winners[0].node && len(r.node.index()) != 4*boolInt(r.node.name == "node1") {
				t.Errorf("round %d: the loser on %s kept index entries %v", round, r.node.name, r.node.index())
			}
		}
		w := winners[0]
		w.node.del(w.pod.Name, "net1", w.pod, w.node.conf(conf))
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Overlapping pools: the API server refuses a pool that overlaps another
// (the ValidatingAdmissionPolicy in install/crds); pools that got in anyway
// (created before the policy, or in the same instant) are caught by the
// plugin, which uses only the older one. The CRD's own CEL rules refuse
// malformed pools with the field named.
func TestOverlappingPoolsRejected(t *testing.T) {
	c := startCluster(t, crds[:2], "node1") // the CRDs, not the policy yet
	n := c.nodes["node1"]
	// Creation timestamps have a resolution of seconds; a tie goes to the
	// name that sorts first, so "new" is the newer one either way.
	c.pool("a-old", kube.IPPoolSpec{Subnet: "10.78.0.0/24"})
	c.pool("b-new", kube.IPPoolSpec{Subnet: "10.78.0.128/25"})
	p := c.createPod("default", "p", "node1", nil)
	e := n.ipam.MustFail(t, n.call("ADD", "c1", "net1", p, n.conf(map[string]any{"pool": "b-new"})), types.ErrInvalidNetworkConfig)
	if !contains(e.Msg, "IPPool b-new (10.78.0.128/25) overlaps the older IPPool a-old (10.78.0.0/24)") {
		t.Errorf("ADD from the newer overlapping pool: %q", e.Msg)
	}
	n.add("c2", "net1", p, n.conf(map[string]any{"pool": "a-old"}))

	c.applyManifests(crds[2])
	// The policy takes effect once the API server has loaded it.
	var err error
	harness.WaitFor(t, "the overlap policy to refuse a pool", 30*time.Second, func() bool {
		_, err = c.kc.CreatePool(c.ctx(), &kube.IPPool{ObjectMeta: kube.ObjectMeta{Name: "third"}, Spec: kube.IPPoolSpec{Subnet: "10.78.0.0/16"}})
		if err == nil {
			_ = c.kc.DeletePool(c.ctx(), "third")
		}
		return err != nil
	})
	if !contains(err.Error(), "spec.subnet: 10.78.0.0/16 overlaps IPPool") {
		t.Errorf("overlapping pool refused with %q", err)
	}
	for _, tc := range []struct {
		spec kube.IPPoolSpec
		want []string
	}{
		{kube.IPPoolSpec{Subnet: "10.79.0.5/24"}, []string{"spec.subnet", "host bits"}},
		{kube.IPPoolSpec{Subnet: "fd00:79::/127"}, []string{"spec.subnet", "too small"}},
		{kube.IPPoolSpec{Subnet: "10.79.0.0/24", Gateway: "10.80.0.1"}, []string{"spec.gateway", "inside subnet"}},
		{kube.IPPoolSpec{Subnet: "10.79.0.0/24", Ranges: []kube.PoolRange{{Start: "10.79.0.10", End: "10.79.1.10"}}}, []string{"spec.ranges", "inside subnet"}},
		{kube.IPPoolSpec{Subnet: "10.79.0.0/24", Exclude: []string{"nonsense"}}, []string{"spec.exclude[0]", "IP address or a CIDR"}},
		{kube.IPPoolSpec{Subnet: "10.79.0.0/24", VLAN: ptrInt(5000)}, []string{"spec.vlan"}},
		{kube.IPPoolSpec{Subnet: "fd00:78::/64"}, nil}, // another family overlaps nothing
		{kube.IPPoolSpec{Subnet: "10.78.1.0/24"}, nil}, // adjacent, not overlapping
	} {
		_, err := c.kc.CreatePool(c.ctx(), &kube.IPPool{ObjectMeta: kube.ObjectMeta{Name: fmt.Sprintf("x%d", time.Now().UnixNano())}, Spec: tc.spec})
		switch {
		case tc.want == nil && err != nil:
			t.Errorf("%+v refused: %v", tc.spec, err)
		case tc.want != nil && (err == nil || !contains(err.Error(), tc.want...)):
			t.Errorf("%+v: got %v, want a refusal saying %q", tc.spec, err, tc.want)
		}
	}
	// The subnet of a pool in use cannot change.
	pools, _ := c.kc.ListPools(c.ctx())
	for _, pl := range pools {
		if pl.Name == "a-old" {
			pl.Spec.Subnet = "10.78.0.0/23"
			if err := updatePool(c, &pl); err == nil || !contains(err.Error(), "immutable") {
				t.Errorf("changing a pool's subnet: %v, want refused as immutable", err)
			}
		}
	}
}
