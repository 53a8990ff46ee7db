package ipamk8s_test

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

// warpctl ipam pools and allocations show usage per pool and who holds
// each address, from the API server.
func TestWarpctlIPAMViews(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	// The shipped RBAC rules are well-formed (the tests run as admin).
	c.api.ApplyManifests(t, filepath.Join(harness.RepoRoot(), "install", "rbac", "ipam.yaml"))
	c.pool("a", kube.IPPoolSpec{Subnet: "10.88.0.0/24", VLAN: ptrInt(42), NodeSelector: &kube.LabelSelector{MatchLabels: map[string]string{"rack": "r1"}}})
	c.pool("b", kube.IPPoolSpec{Subnet: "fd00:88::/120"})
	labelNode(t, c, "node1", "rack", "r1")
	owner := c.statefulSet("default", "db", 1)
	web := c.createPod("default", "web", "node1", nil)
	db := c.createPod("default", "db-0", "node1", nil, owner)
	conf := n.conf(map[string]any{"pools": []string{"a", "b"}})
	webIPs := ips(n.add("web-sandbox", "net1", web, conf))
	n.add("db-sandbox", "net1", db, conf)
	n.del("db-sandbox", "net1", db, conf) // pinned: detached, waiting for its pod

	warpctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(harness.BinDir(), "warpctl"), append(args, "--kubeconfig", c.api.Kubeconfig)...).CombinedOutput()
		if err != nil {
			t.Fatalf("warpctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	var pools []struct {
		Name, Size, Nodes          string
		Allocated, Pinned, Waiting int
		VLAN                       *int
	}
	if err := json.Unmarshal([]byte(warpctl("ipam", "pools", "--json")), &pools); err != nil {
		t.Fatal(err)
	}
	if len(pools) != 2 || pools[0].Name != "a" || pools[0].Size != "253" || pools[0].Allocated != 2 || pools[0].Pinned != 1 ||
		pools[0].Waiting != 1 || pools[0].Nodes != "rack=r1" || pools[0].VLAN == nil || *pools[0].VLAN != 42 ||
		pools[1].Size != "254" || pools[1].Allocated != 2 {
		t.Errorf("warpctl ipam pools --json: %+v", pools)
	}
	text := warpctl("ipam", "pools")
	if !contains(text, "POOL", "SUBNET", "10.88.0.0/24", "0.8%") {
		t.Errorf("warpctl ipam pools:\n%s", text)
	}
	var allocs []struct{ Address, Pool, Pod, Node, ContainerID, StatefulSet string }
	if err := json.Unmarshal([]byte(warpctl("ipam", "allocations", "--pool", "a", "--json")), &allocs); err != nil {
		t.Fatal(err)
	}
	if len(allocs) != 2 {
		t.Fatalf("warpctl ipam allocations --pool a: %+v", allocs)
	}
	for _, a := range allocs {
		switch a.Pod {
		case "web":
			if a.Address != webIPs[0] || a.Node != "node1" || a.ContainerID != "web-sandbox" || a.StatefulSet != "" {
				t.Errorf("web's allocation: %+v", a)
			}
		case "db-0":
			if a.Node != "" || a.StatefulSet != "db/0" {
				t.Errorf("db-0's allocation: %+v", a)
			}
		default:
			t.Errorf("unexpected allocation %+v", a)
		}
	}
	text = warpctl("ipam", "allocations")
	if !contains(text, "ADDRESS", "default/web", "(waiting for its pod)", "db/0") || strings.Count(text, "\n") != 5 {
		t.Errorf("warpctl ipam allocations:\n%s", text)
	}
	if help := warpctl("ipam", "allocations", "--help"); !contains(help, "--namespace", "--pool", "--node") {
		t.Errorf("help:\n%s", help)
	}
}
