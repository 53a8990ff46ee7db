package ipamk8s_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

// An API server that accepts connections but does not answer: ADD fails
// with "try again later" once ipam.timeout has passed, not a hang, and
// DEL succeeds, queueing the release on the node; once the API server
// answers again, the next call on the node performs it, and nothing leaks.
func TestAPIServerNotAnswering(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	c.pool("p", kube.IPPoolSpec{Subnet: "10.81.0.0/24"})
	conf := n.conf(map[string]any{"pool": "p", "timeout": "2s"})
	held := c.createPod("default", "held", "node1", nil)
	addr := ips(n.add("held", "net1", held, conf))[0]
	fresh := c.createPod("default", "fresh", "node1", nil)

	c.api.Freeze(t)
	start := time.Now()
	e := n.ipam.MustFail(t, n.call("ADD", "fresh", "net1", fresh, conf), types.ErrTryAgainLater)
	took := time.Since(start)
	if !contains(e.Msg, "did not answer within ipam.timeout (2s)", c.api.URL) {
		t.Errorf("ADD against a frozen API server: %q", e.Msg)
	}
	// Generous for a loaded machine; the point is that it ends.
	if took > 30*time.Second {
		t.Errorf("ADD took %v against a frozen API server with ipam.timeout 2s", took)
	}
	start = time.Now()
	n.del("held", "net1", held, conf)
	t.Logf("ADD failed after %v; DEL succeeded after %v", took, time.Since(start))
	if j := n.journal(); len(j) != 1 {
		t.Fatalf("journal %v, want the release of held/net1 queued", j)
	}
	if idx := n.index(); len(idx) != 0 {
		t.Errorf("index %v after DEL, want empty", idx)
	}

	c.api.Thaw(t)
	// The address stays held until the queued release runs: nobody can
	// take it meanwhile.
	if _, ok := c.allocations()[addr]; !ok {
		t.Fatalf("%s was freed without the plugin (the queued release ran early?)", addr)
	}
	n.ipam.MustSucceed(t, harness.Call{Command: "STATUS", Config: conf})
	if j := n.journal(); len(j) != 0 {
		t.Fatalf("journal %v after a call with the API server answering, want empty", j)
	}
	if left := c.addresses(); len(left) != 0 {
		t.Fatalf("leaked: %v", left)
	}
	n.add("fresh", "net1", fresh, conf)
}

// An API server that is down: ADD fails at once with "try again later";
// DEL succeeds and queues; after the restart the address is still held
// (the release is pending) until the next call on the node, also a
// different verb for a different pod, performs it.
func TestAPIServerDown(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	c.pool("p", kube.IPPoolSpec{Subnet: "10.82.0.0/24"})
	conf := n.conf(map[string]any{"pool": "p"})
	a := c.createPod("default", "a", "node1", nil)
	b := c.createPod("default", "b", "node1", nil)
	addr := ips(n.add("a", "net1", a, conf))[0]

	c.api.Stop(t)
	e := n.ipam.MustFail(t, n.call("ADD", "b", "net1", b, conf), types.ErrTryAgainLater)
	if !contains(e.Msg, c.api.URL) {
		t.Errorf("ADD with the API server down: %q", e.Msg)
	}
	n.del("a", "net1", a, conf)
	n.del("a", "net1", a, conf) // repeated while still down: still fine
	j := n.journal()
	if len(j) != 1 {
		t.Fatalf("journal %v, want the release of a/net1 queued", j)
	}
	var q struct {
		ContainerID string
		Entries     []struct{ Address string }
	}
	if data := readFile(t, n, j[0]); json.Unmarshal(data, &q) != nil || q.ContainerID != "a" || len(q.Entries) != 1 || q.Entries[0].Address != addr {
		t.Errorf("journal entry %s, want the release of %s by a", readFile(t, n, j[0]), addr)
	}

	c.api.Restart(t)
	if _, ok := c.allocations()[addr]; !ok {
		t.Fatalf("%s was freed without the plugin", addr)
	}
	got := ips(n.add("b", "net1", b, conf))
	if left := c.allocations(); len(left) != 1 || left[got[0]].Spec.Pod.Name != "b" {
		t.Fatalf("after the next ADD: %s, want only b's address (a's queued release done)", jsonString(left))
	}
	if j := n.journal(); len(j) != 0 {
		t.Fatalf("journal %v, want empty", j)
	}
}

// CNI GC releases what this node's attachments hold unless the runtime
// lists them as valid; other nodes' addresses are not its business, and a
// pinned address is only detached (its pod keeps it).
func TestCNIGC(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	n1, n2 := c.nodes["node1"], c.nodes["node2"]
	c.pool("p", kube.IPPoolSpec{Subnet: "10.83.0.0/24"})
	conf := map[string]any{"pool": "p"}
	owner := c.statefulSet("default", "db", 1)
	keep := c.createPod("default", "keep", "node1", nil)
	stale := c.createPod("default", "stale", "node1", nil)
	pinned := c.createPod("default", "db-0", "node1", nil, owner)
	other := c.createPod("default", "other", "node2", nil)
	kept := ips(n1.add("keep", "net1", keep, n1.conf(conf)))[0]
	gone := ips(n1.add("stale", "net1", stale, n1.conf(conf)))[0]
	pin := ips(n1.add("db-0", "net1", pinned, n1.conf(conf)))[0]
	elsewhere := ips(n2.add("other", "net1", other, n2.conf(conf)))[0]

	gc := n1.conf(map[string]any{"pool": "p"})
	var m map[string]any
	json.Unmarshal(gc, &m)
	m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "keep", "ifname": "net1"}}
	n1.ipam.MustSucceed(t, harness.Call{Command: "GC", Config: harness.ConfigJSON(t, m)})
	got := c.allocations()
	if _, ok := got[gone]; ok {
		t.Errorf("GC kept %s of the stale attachment", gone)
	}
	for _, a := range []string{kept, elsewhere, pin} {
		if _, ok := got[a]; !ok {
			t.Errorf("GC released %s", a)
		}
	}
	if o := got[pin]; o.Spec.Attachment != nil || o.Spec.StatefulSet == nil {
		t.Errorf("the pinned address should be detached and kept for its pod: %s", jsonString(o))
	}
}
