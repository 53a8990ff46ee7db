package sriov_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/tests/harness"
)

// The crash points warp-sriov itself marks, in order, per verb and mode (a
// delegate such as warp-ipam may add its own between them).
var ownPoints = map[string][]string{
	"ADD netdev": {"warp-sriov.add.after-cache", "warp-sriov.add.after-claim", "warp-sriov.add.after-pf", "warp-sriov.add.after-move", "warp-sriov.add.after-ipam", "warp-sriov.add.after-addrs"},
	"ADD dpdk":   {"warp-sriov.add.after-cache", "warp-sriov.add.after-claim", "warp-sriov.add.after-pf", "warp-sriov.add.after-ipam"},
	"DEL netdev": {"warp-sriov.del.after-restore-pf", "warp-sriov.del.after-restore-netdev", "warp-sriov.del.after-release", "warp-sriov.del.after-ipam"},
	"DEL dpdk":   {"warp-sriov.del.after-restore-pf", "warp-sriov.del.after-release", "warp-sriov.del.after-ipam"},
	"GC netdev":  {"warp-sriov.gc.after-restore-pf", "warp-sriov.gc.after-restore-netdev", "warp-sriov.gc.after-release"},
	"GC dpdk":    {"warp-sriov.gc.after-restore-pf", "warp-sriov.gc.after-release"},
}

// points learns the crash points of a clean call and checks that
// warp-sriov's own are among them, in order.
func points(t *testing.T, fp *harness.Plugin, call harness.Call, want []string) []string {
	t.Helper()
	got := fp.FaultPoints(t, call)
	var own []string
	for _, p := range got {
		if strings.HasPrefix(p, "warp-sriov.") {
			own = append(own, p)
		}
	}
	if !slices.Equal(own, want) {
		t.Fatalf("%s passed warp-sriov crash points %v, want %v", call.Command, own, want)
	}
	return got
}

// gcCall is GC keeping only the given containers' net1 attachments.
func (n *node) gcCall(keep ...string) harness.Call {
	valid := []map[string]string{}
	for _, id := range keep {
		valid = append(valid, map[string]string{"containerID": id, "ifname": "net1"})
	}
	return n.call("GC", "", nil, n.conf(map[string]any{"cni.dev/valid-attachments": valid}))
}

// rig is what a crash test of VF 0 needs: the crash-point build of
// warp-sriov, the VF as it was, and a configuration that changes every
// setting, so that a half-done step shows.
type rig struct {
	fp       *harness.Plugin
	origLink string
	origPF   pf.VFState
	conf     []byte
}

func (n *node) rig(t *testing.T) rig {
	return rig{
		fp:       n.env.FaultPlugin(t, "warp-sriov").In(n.ns),
		origLink: n.hostVF(0), origPF: n.pfState(0),
		conf: n.conf(map[string]any{"deviceID": n.pf.VFs[0].PCI, "vlan": 7, "mac": "0a:00:00:00:00:07", "trust": "on",
			"spoofchk": "off", "max_tx_rate": 100, "mtu": 1400}),
	}
}

// A crash at each step of ADD, then one of the three ways the node learns
// of it, ends with VF 0 as it was: name, MAC and MTU in the node, PF side
// pristine, no record, no address reserved:
//   - del: the runtime's DEL of the failed ADD;
//   - gc: a GC that does not list the attachment;
//   - takeover: the pod vanishes, another pod takes the VF over (getting
//     the VF's own settings, not the crashed ADD's), then the late DEL of
//     the crashed attachment and the DEL of the new one.
func TestCrashAtEveryAddStep(t *testing.T) {
	modes(t, 1, func(t *testing.T, n *node, mode string) {
		r := n.rig(t)
		fp, origLink, origPF, conf := r.fp, r.origLink, r.origPF, r.conf
		probe := n.env.NetNS("probe")
		all := points(t, fp, n.call("ADD", "probe", probe, conf), ownPoints["ADD "+mode])
		n.sriov.MustSucceed(t, n.call("DEL", "probe", probe, conf))
		n.assertRestored(0, origLink, origPF)

		for k, point := range all {
			for _, repair := range []string{"del", "gc", "takeover"} {
				t.Run(point+"/"+repair, func(t *testing.T) {
					n := n.with(t)
					id := fmt.Sprintf("p%d-%s", k, repair)
					pod := n.env.NetNS(id)
					fp.CrashAt(t, point, n.call("ADD", id, pod, conf))
					switch repair {
					case "del":
						n.sriov.MustSucceed(t, n.call("DEL", id, pod, conf))
					case "gc":
						n.sriov.MustSucceed(t, n.gcCall())
					case "takeover":
						n.gone(pod)
						other := n.env.NetNS(id + "-new")
						n.add(id+"-new", other, n.conf(map[string]any{"deviceID": n.pf.VFs[0].PCI, "vlan": 42}))
						want := origPF
						want.VLAN, want.QoS, want.Proto = 42, 0, pf.ProtoDot1Q
						if got := n.pfState(0); got != want {
							t.Errorf("the new pod got PF side %+v, want the VF's own plus VLAN 42: %+v", got, want)
						}
						if mode == "netdev" {
							if got := link(t, other, "net1"); got != inPod(origLink) {
								t.Errorf("the new pod's netdev is %q, want %q", got, inPod(origLink))
							}
						}
						n.sriov.MustSucceed(t, n.call("DEL", id, pod, conf))
						n.sriov.MustSucceed(t, n.call("DEL", id+"-new", other, conf))
					}
					n.assertRestored(0, origLink, origPF)
				})
			}
		}
	})
}

// A crash at each step of DEL (and of GC) is repaired by the retried DEL
// (or GC), or by a GC.
func TestCrashAtEveryReleaseStep(t *testing.T) {
	modes(t, 1, func(t *testing.T, n *node, mode string) {
		r := n.rig(t)
		fp, origLink, origPF, conf := r.fp, r.origLink, r.origPF, r.conf
		del := func(id string, pod *harness.NetNS) harness.Call { return n.call("DEL", id, pod, conf) }
		probe := n.env.NetNS("probe")
		n.add("probe", probe, conf)
		delPoints := points(t, fp, del("probe", probe), ownPoints["DEL "+mode])
		n.assertRestored(0, origLink, origPF)
		n.add("probe", probe, conf)
		gcPoints := points(t, fp, n.gcCall(), ownPoints["GC "+mode])
		n.assertRestored(0, origLink, origPF)

		for _, verb := range []string{"DEL", "GC"} {
			list := map[string][]string{"DEL": delPoints, "GC": gcPoints}[verb]
			for k, point := range list {
				for _, repair := range []string{"again", "gc"} {
					t.Run(point+"/"+repair, func(t *testing.T) {
						n := n.with(t)
						id := fmt.Sprintf("%s%d-%s", strings.ToLower(verb), k, repair)
						pod := n.env.NetNS(id)
						n.add(id, pod, conf)
						crash := map[string]harness.Call{"DEL": del(id, pod), "GC": n.gcCall()}[verb]
						fp.CrashAt(t, point, crash)
						if repair == "again" {
							n.sriov.MustSucceed(t, crash)
						} else {
							n.sriov.MustSucceed(t, n.gcCall())
						}
						// The runtime's DEL after a GC finds nothing left to do.
						n.sriov.MustSucceed(t, del(id, pod))
						n.assertRestored(0, origLink, origPF)
					})
				}
			}
		}
	})
}
