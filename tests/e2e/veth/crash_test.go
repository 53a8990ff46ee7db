package veth_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/tests/harness"
)

// The steps of warp-veth's ADD (with the XDP or the tc datapath) and DEL,
// in order, as its crash points name them. warp-ipam's points come in
// between (its own tests list them): the delegate is the crash-point build
// too.
var (
	addPoints = map[string][]string{
		"xdp": {"warp-veth.add.after-ipam", "warp-veth.add.after-pair", "warp-veth.add.after-pod-config", "warp-veth.add.after-host-config",
			"warp-veth.add.after-xdp-pod", "warp-veth.add.after-xdp-endpoint", "warp-veth.add.after-xdp-host", "warp-veth.add.after-result"},
		"tc": {"warp-veth.add.after-ipam", "warp-veth.add.after-pair", "warp-veth.add.after-pod-config", "warp-veth.add.after-host-config",
			"warp-veth.add.after-tc-endpoint", "warp-veth.add.after-tc-link", "warp-veth.add.after-result"},
	}
	delPoints = []string{"warp-veth.del.after-tc-link", "warp-veth.del.after-endpoint", "warp-veth.del.after-pod-link",
		"warp-veth.del.after-host-link", "warp-veth.del.after-ipam"}
	// datapaths are the configurations of the two datapaths.
	datapaths = map[string]map[string]any{"xdp": {"xdp": true}, "tc": tcOn}
)

// ipamPoints are the delegate's crash points among points.
func ipamPoints(points []string) []string {
	var out []string
	for _, p := range points {
		if strings.HasPrefix(p, "warp-ipam.") {
			out = append(out, p)
		}
	}
	return out
}

// nodeState is everything an attachment can leave on a node.
type nodeState struct {
	hostLinks, hostRoutes []string
	ipam                  map[string]string // warp-ipam's files and their content
	endpoints             []uint64          // pod datapath endpoint owners
	linkPins              []string          // tc links
}

func (n *node) state(t *testing.T, dp *podpath.Datapath) nodeState {
	t.Helper()
	eps, err := dp.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	owners := make([]uint64, len(eps))
	for i, ep := range eps {
		owners[i] = ep.Owner
	}
	slices.Sort(owners)
	return nodeState{n.hostLinks(), n.hostRoutes(), harness.IPAMFiles(n.dataDir, network), owners, n.linkPins()}
}

func (s nodeState) equal(o nodeState) bool {
	return slices.Equal(s.hostLinks, o.hostLinks) && slices.Equal(s.hostRoutes, o.hostRoutes) &&
		maps.Equal(s.ipam, o.ipam) && slices.Equal(s.endpoints, o.endpoints) && slices.Equal(s.linkPins, o.linkPins)
}

// warp-veth (and its warp-ipam) SIGKILLed at every step of ADD, with either
// datapath: DEL repairs everything (host and pod links, host routes,
// warp-ipam's files, map entries, tc link pins), and separately GC, with
// the crashed attachment not in valid-attachments, repairs what it owns
// (the reservations) without touching a live pod. Killed at every step of
// DEL, a repeated DEL finishes the job. "Repaired" means the node is
// exactly as it was with only the live pod on it.
func TestCrashPoints(t *testing.T) {
	for _, mode := range []string{"xdp", "tc"} {
		t.Run(mode, func(t *testing.T) { testCrashPoints(t, mode) })
	}
}

func testCrashPoints(t *testing.T, mode string) {
	n := newNode(t)
	fveth := n.env.FaultPlugin(t, "warp-veth").In(n.ns)
	conf := n.conf(datapaths[mode])
	n.add("keeper", n.env.NetNS("keeper"), conf)
	dp := n.datapath()
	clean := n.state(t, dp)
	wantPins := map[string]int{"xdp": 0, "tc": 1}[mode]
	if len(clean.hostLinks) != 1 || len(clean.hostRoutes) != 2 || len(clean.endpoints) != 1 || len(clean.linkPins) != wantPins {
		t.Fatalf("the keeper's state: %+v", clean)
	}
	assertRepaired := func(t *testing.T, what string, pod *harness.NetNS) {
		t.Helper()
		if got := n.state(t, dp); !got.equal(clean) {
			t.Fatalf("after %s: node state %+v, want the keeper's only %+v", what, got, clean)
		}
		if l := podLinks(t, pod); len(l) != 0 {
			t.Fatalf("after %s: pod links left: %v", what, l)
		}
	}

	enum := n.env.NetNS("enumerate")
	gotAdd := fveth.FaultPoints(t, n.call("ADD", "enumerate", enum, conf))
	gotDel := fveth.FaultPoints(t, n.call("DEL", "enumerate", enum, conf))
	// IPAM runs first in ADD, and after the links in DEL.
	ipamAdd, ipamDel := ipamPoints(gotAdd), ipamPoints(gotDel)
	wantAdd := slices.Concat(ipamAdd, addPoints[mode])
	wantDel := slices.Concat(delPoints[:4], ipamDel, delPoints[4:])
	if len(ipamAdd) < 4 || len(ipamDel) < 2 || !slices.Equal(gotAdd, wantAdd) || !slices.Equal(gotDel, wantDel) {
		t.Fatalf("crash points: ADD %q, DEL %q; want ADD %q, DEL %q", gotAdd, gotDel, wantAdd, wantDel)
	}
	assertRepaired(t, "the enumerating ADD and DEL", enum)

	gcFields := map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "keeper", "ifname": "eth0"}}}
	maps.Copy(gcFields, datapaths[mode])
	gc := n.conf(gcFields)
	seq := 0
	for _, point := range gotAdd {
		for _, repair := range []string{"DEL", "GC"} {
			t.Run(fmt.Sprintf("ADD killed at %s, %s repairs", point, repair), func(t *testing.T) {
				seq++
				pod := n.env.NetNS(fmt.Sprintf("victim%d", seq))
				fveth.CrashAt(t, point, n.call("ADD", "victim", pod, conf))
				if repair == "GC" {
					n.veth.MustSucceed(t, harness.Call{Command: "GC", Config: gc})
					if got := harness.IPAMFiles(n.dataDir, network); !maps.Equal(got, clean.ipam) {
						t.Fatalf("after GC: warp-ipam files %q, want the keeper's only %q", got, clean.ipam)
					}
				}
				n.veth.MustSucceed(t, n.call("DEL", "victim", pod, conf))
				assertRepaired(t, repair, pod)
			})
		}
	}
	for _, point := range gotDel {
		t.Run("DEL killed at "+point, func(t *testing.T) {
			seq++
			pod := n.env.NetNS(fmt.Sprintf("victim%d", seq))
			n.add("victim", pod, conf)
			fveth.CrashAt(t, point, n.call("DEL", "victim", pod, conf))
			n.veth.MustSucceed(t, n.call("DEL", "victim", pod, conf))
			assertRepaired(t, "the repeated DEL", pod)
		})
	}
}
