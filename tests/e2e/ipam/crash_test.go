package ipam_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/tests/harness"
)

// The steps of warp-ipam's protocols, in order, as its crash points name
// them.
var (
	addPoints = []string{
		"warp-ipam.add.after-index", "warp-ipam.add.after-temp", "warp-ipam.add.after-address", "warp-ipam.add.after-cursor",
		"warp-ipam.add.before-probe", "warp-ipam.add.after-probe", "warp-ipam.add.after-result",
	}
	delPoints = []string{"warp-ipam.del.after-address", "warp-ipam.del.after-index"}
)

// owned returns the addresses whose address file names containerID.
func owned(files map[string]string, containerID string) []string {
	var out []string
	for name, owner := range files {
		if !strings.Contains(name, "/") && strings.HasPrefix(owner, containerID+"\r\n") {
			out = append(out, name)
		}
	}
	return out
}

// warp-ipam killed (SIGKILL, no rollback) at every step of ADD leaves a state
// that DEL repairs, and separately one that GC repairs, without blocking or
// corrupting other attachments; killed at every step of DEL, a repeated DEL
// finishes the job. "Repaired" means the store's files are exactly those of
// the attachment that lives through it all.
func TestCrashPoints(t *testing.T) {
	f := newFixture(t)
	fipam := f.env.FaultPlugin(t, "warp-ipam")
	// An interface nobody answers on, so that conflict detection (and its
	// crash points) runs.
	f.env.Veth(f.pod, "eth0", f.env.NetNS("peer"), "p0")
	conf := f.conf(map[string]any{
		"ranges":       [][]map[string]any{{{"subnet": "10.50.0.0/24"}}, {{"subnet": "fd50::/64"}}},
		"probeTimeout": "20ms",
	}, nil)
	f.add("keeper", conf)
	clean := harness.IPAMFiles(f.dataDir, network)
	if len(owned(clean, "keeper")) != 2 {
		t.Fatalf("keeper's files: %v", clean)
	}
	assertClean := func(t *testing.T, what string) {
		t.Helper()
		if got := harness.IPAMFiles(f.dataDir, network); !maps.Equal(got, clean) {
			t.Fatalf("%s: store files %q, want only the keeper's %q", what, got, clean)
		}
	}

	gotAdd := fipam.FaultPoints(t, f.call("ADD", "enumerate", conf))
	gotDel := fipam.FaultPoints(t, f.call("DEL", "enumerate", conf))
	if !slices.Equal(gotAdd, addPoints) || !slices.Equal(gotDel, delPoints) {
		t.Fatalf("crash points: ADD %q, DEL %q; want ADD %q, DEL %q", gotAdd, gotDel, addPoints, delPoints)
	}
	assertClean(t, "after the enumerating ADD and DEL")

	keep := map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "keeper", "ifname": "eth0"}}}
	for _, point := range addPoints {
		for _, repair := range []string{"DEL", "GC"} {
			t.Run(fmt.Sprintf("ADD killed at %s, %s repairs", point, repair), func(t *testing.T) {
				fipam.CrashAt(t, point, f.call("ADD", "victim", conf))
				left := harness.IPAMFiles(f.dataDir, network)
				// The kernel dropped the victim's lock: the next ADD goes
				// through and never gets an address the victim holds.
				res := f.add("bystander", conf)
				for _, a := range addrs(res) {
					if ip, _, _ := strings.Cut(a, "/"); slices.Contains(owned(left, "victim"), ip) {
						t.Fatalf("bystander got %s, which the killed ADD holds", ip)
					}
				}
				f.ipam.MustSucceed(t, f.call("DEL", "bystander", conf))
				if repair == "DEL" {
					f.ipam.MustSucceed(t, f.call("DEL", "victim", conf))
				} else {
					f.ipam.MustSucceed(t, harness.Call{Command: "GC", Config: f.conf(nil, keep)})
				}
				assertClean(t, repair)
			})
		}
	}
	for _, point := range delPoints {
		t.Run("DEL killed at "+point, func(t *testing.T) {
			f.add("victim", conf)
			fipam.CrashAt(t, point, f.call("DEL", "victim", conf))
			f.ipam.MustSucceed(t, f.call("DEL", "victim", conf))
			assertClean(t, "repeated DEL")
		})
	}
}
