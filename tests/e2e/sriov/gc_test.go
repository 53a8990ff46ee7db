package sriov_test

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/tests/harness"
)

// GC puts back the VFs of attachments missing from valid-attachments (also
// moving one out of a namespace that still exists), and removes their
// records, cache entries and addresses; valid attachments keep everything.
// A cache entry of an attachment whose VF was taken over goes too.
func TestGC(t *testing.T) {
	n := newNode(t, 4, 2)
	var origLink []string
	var origPF []pf.VFState
	for i := range 4 {
		origLink, origPF = append(origLink, n.hostVF(i)), append(origPF, n.pfState(i))
	}
	pods := map[string]*harness.NetNS{}
	reserved := map[string][]string{}
	for id, i := range map[string]int{"keep": 0, "drop": 1, "dropdpdk": 2, "old": 3} {
		pods[id] = n.env.NetNS(id)
		reserved[id] = addrs(n.add(id, pods[id], n.conf(map[string]any{"deviceID": n.pf.VFs[i].PCI, "vlan": 10 + i})))
	}
	// "old" vanished and "new" took VF 3 over: "old"'s cache is stale.
	n.gone(pods["old"])
	pods["new"] = n.env.NetNS("new")
	reserved["new"] = addrs(n.add("new", pods["new"], n.conf(map[string]any{"deviceID": n.pf.VFs[3].PCI, "vlan": 33})))
	want := slices.Sorted(slices.Values(append(slices.Clone(reserved["keep"]), reserved["new"]...)))

	for round := range 2 { // a second GC changes nothing
		n.sriov.MustSucceed(t, n.gcCall("keep", "new"))
		if got := n.pfState(0); got.VLAN != 10 || link(t, pods["keep"], "net1") == "" {
			t.Errorf("round %d: GC changed the valid attachment's VF: %+v, in its pod: %q", round, got, link(t, pods["keep"], "net1"))
		}
		if got := n.pfState(3); got.VLAN != 33 || link(t, pods["new"], "net1") == "" {
			t.Errorf("round %d: GC changed the VF a valid attachment took over: %+v", round, got)
		}
		for _, id := range []string{"keep", "new"} {
			if !exists(n.cacheFile(id)) {
				t.Errorf("round %d: GC removed the cache of valid attachment %s", round, id)
			}
		}
		for _, i := range []int{1, 2} { // "drop"'s pod still exists: GC moved the VF out
			if got := n.hostVF(i); got != origLink[i] {
				t.Errorf("round %d: VF %d in the host after GC: %q, want %q", round, i, got, origLink[i])
			}
			if got := n.pfState(i); got != origPF[i] {
				t.Errorf("round %d: VF %d PF side after GC: %+v, want %+v", round, i, got, origPF[i])
			}
			if exists(n.vfFile(i)) {
				t.Errorf("round %d: GC left the record of VF %d", round, i)
			}
		}
		for _, id := range []string{"drop", "dropdpdk", "old"} {
			if exists(n.cacheFile(id)) {
				t.Errorf("round %d: GC left the cache of %s", round, id)
			}
		}
		if got := n.reserved(); !slices.Equal(got, want) {
			t.Errorf("round %d: reserved after GC: %v, want %v", round, got, want)
		}
	}

	// The runtime's DELs finish the job, also for the attachments GC did.
	for _, id := range []string{"keep", "drop", "dropdpdk", "old", "new"} {
		n.sriov.MustSucceed(t, n.call("DEL", id, pods[id], n.conf(nil)))
	}
	for i := range 4 {
		n.assertRestored(i, origLink[i], origPF[i])
	}
}

// STATUS: ready when dataDir can be written and the IPAM plugin is ready.
func TestStatus(t *testing.T) {
	n := newNode(t, 1)
	status := func(fields map[string]any) harness.Call { return n.call("STATUS", "", nil, n.conf(fields)) }
	n.sriov.MustSucceed(t, status(nil))
	n.sriov.MustSucceed(t, status(map[string]any{"ipam": map[string]any{}})) // no IPAM: L2 only

	// IPAM out of addresses: warp-ipam's 50 is passed on.
	full := map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(n.env.TempDir, "ipam"),
		"ranges": [][]map[string]any{{{"subnet": "10.9.0.0/30", "rangeEnd": "10.9.0.1"}}}}
	n.sriov.MustFail(t, status(map[string]any{"ipam": full}), cnierr.PluginNotAvailable)

	// dataDir unusable: below a regular file, or relative.
	e := n.sriov.MustFail(t, status(map[string]any{"dataDir": filepath.Join(n.pf.StateFile, "sub")}), cnierr.PluginNotAvailable)
	if !containsAll(e.Msg, "dataDir") {
		t.Errorf("message %q does not name dataDir", e.Msg)
	}
	e = n.sriov.MustFail(t, status(map[string]any{"dataDir": "relative/dir"}), types.ErrInvalidNetworkConfig)
	if !containsAll(e.Msg, "dataDir") {
		t.Errorf("message %q does not name dataDir", e.Msg)
	}
}
