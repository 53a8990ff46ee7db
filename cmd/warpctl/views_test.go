package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/pin"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// pinState describes every pin under dir: the kernel object's ID, for a
// link also the program it runs, and the metadata maps' values. Any load,
// re-pin, link update or metadata write shows as a difference.
func pinState(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for p, err := range pin.WalkDir(dir, nil) {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p.Path)
		switch o := p.Object.(type) {
		case *ebpf.Map:
			s := fmt.Sprintf("map %d", pinset.MapID(o))
			if strings.HasSuffix(rel, "_meta") {
				m, err := pinset.ReadMeta(o)
				s += fmt.Sprintf(" %+v %v", m, err)
			}
			out[rel] = s
		case *ebpf.Program:
			id, _ := pinset.ProgID(o)
			out[rel] = fmt.Sprintf("prog %d", id)
		case link.Link:
			info, err := o.Info()
			if err != nil {
				t.Fatal(err)
			}
			out[rel] = fmt.Sprintf("link %d prog %d", info.ID, info.Program)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no pins under %s", dir)
	}
	return out
}

// otherBuild makes the pins look like another build's: its metadata names
// another build ID, so a loader would upgrade them.
func otherBuild(t *testing.T, metaPin string) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(metaPin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v, err := pinset.ReadMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	v.Build = [32]byte{'o', 't', 'h', 'e', 'r'}
	if err := pinset.WriteMeta(m, v); err != nil {
		t.Fatal(err)
	}
}

// TestLBViewsChangeNothing: the lb views of bin/warpctl on pins of another
// build show what the maps hold, and load, pin, attach and write nothing
// (they used to upgrade the pins, swapping warpd's programs for warpctl's).
func TestLBViewsChangeNothing(t *testing.T) {
	e := harness.New(t)
	warpctl := filepath.Join(harness.BinDir(), "warpctl")
	harness.RequireTools(t, warpctl)
	root := filepath.Join(e.BPFFS(), "warpnet")
	cg := e.Cgroup("pods")
	lb, err := servicelb.Open(root, servicelb.Sizes{})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	if err := lb.Attach(cg.Path); err != nil {
		t.Fatal(err)
	}
	svc := servicelb.Service{
		Frontend: servicelb.Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: l4.TCP},
		ID:       7, Backends: []servicelb.Backend{{Addr: netip.MustParseAddr("10.244.0.5"), Port: 8080}},
	}
	if err := lb.Upsert(svc); err != nil {
		t.Fatal(err)
	}
	otherBuild(t, filepath.Join(servicelb.Dir(root), "maps", "lb_meta"))
	before := pinState(t, servicelb.Dir(root))

	for _, view := range []string{"services", "affinity", "revnat", "hooks"} {
		cmd := exec.Command(warpctl, "lb", view, "--bpffs-root", root)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("warpctl lb %s: %v\n%s%s", view, err, out, stderr.String())
		}
		switch view {
		case "services":
			if !strings.Contains(string(out), "10.96.0.10:80") || !strings.Contains(string(out), "10.244.0.5:8080") {
				t.Errorf("warpctl lb services does not show the service:\n%s", out)
			}
		case "hooks":
			if !strings.Contains(string(out), cg.Path) {
				t.Errorf("warpctl lb hooks does not show %s:\n%s", cg.Path, out)
			}
		}
		if after := pinState(t, servicelb.Dir(root)); !reflect.DeepEqual(after, before) {
			t.Fatalf("warpctl lb %s changed the pins:\nbefore %v\nafter  %v", view, before, after)
		}
	}
	// Nothing pinned: an error that says what to check, nothing created.
	empty := filepath.Join(e.BPFFS(), "warpnet")
	code, _, errOut := run("lb", "services", "--bpffs-root", empty)
	if code != 1 || !strings.Contains(errOut, "no load balancer is pinned under "+empty) || !strings.Contains(errOut, "--bpffs-root") {
		t.Errorf("on an empty root: exit %d, %s", code, errOut)
	}
}

// TestPodpathEndpoints shows the pod datapath's per-pod state with counters,
// for a pod of each program, read-only, as a table and as JSON; and the
// tc datapath's next-hop destinations.
func TestPodpathEndpoints(t *testing.T) {
	e := harness.New(t)
	root := filepath.Join(e.BPFFS(), "warpnet")
	node := e.NetNS("node")
	type pod struct {
		ns              *harness.NetNS
		hostIf          string
		hostIdx         int
		hostMAC, podMAC net.HardwareAddr
		ip              string
		owner           uint64
		features        podpath.Features
	}
	pods := []*pod{
		{hostIf: "warp0000000abc", hostMAC: net.HardwareAddr{2, 0xaa, 0, 0, 0, 1}, podMAC: net.HardwareAddr{2, 0xaa, 0, 0, 0, 2},
			ip: "10.1.0.2", owner: 0xabc, features: podpath.Features{AntiSpoof: true}},
		{hostIf: "warp0000000def", hostMAC: net.HardwareAddr{2, 0xaa, 0, 0, 1, 1}, podMAC: net.HardwareAddr{2, 0xaa, 0, 0, 1, 2},
			ip: "10.1.1.2", owner: 0xdef, features: podpath.Features{Hook: podpath.TC, Redirect: true, AntiSpoof: true}},
	}
	var dp *podpath.Datapath
	if err := node.Do(func() (err error) { dp, err = podpath.Open(root); return err }); err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	for i, p := range pods {
		p.ns = e.NetNS(fmt.Sprintf("pod%d", i))
		e.Veth(node, p.hostIf, p.ns, "eth0")
		node.Exec(t, "ip", "link", "set", p.hostIf, "address", p.hostMAC.String())
		p.ns.Exec(t, "ip", "link", "set", "eth0", "address", p.podMAC.String())
		e.Addr(node, p.hostIf, fmt.Sprintf("10.1.%d.1/24", i))
		e.Addr(p.ns, "eth0", p.ip+"/24")
		if err := node.Do(func() error {
			ifi, err := net.InterfaceByName(p.hostIf)
			if err != nil {
				return err
			}
			p.hostIdx = ifi.Index
			if err := dp.AddEndpoint(podpath.Endpoint{Owner: p.owner, HostIfIndex: p.hostIdx, PodMAC: p.podMAC, HostMAC: p.hostMAC,
				IPs: []netip.Addr{netip.MustParseAddr(p.ip)}, Features: p.features}); err != nil {
				return err
			}
			if p.features.Hook == podpath.TC {
				return dp.AttachTC(p.owner, p.hostIdx)
			}
			return dp.AttachHost(p.hostIdx)
		}); err != nil {
			t.Fatal(err)
		}
		p.ns.Exec(t, "ping", "-n", "-c", "3", "-i", "0.1", "-W", "2", fmt.Sprintf("10.1.%d.1", i))
	}
	if err := dp.SetNeighDsts([]netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}); err != nil {
		t.Fatal(err)
	}
	counters := map[uint64]podpath.Counters{}
	for _, p := range pods {
		c, err := dp.Counters(p.hostIdx)
		if err != nil || c.PassPackets < 3 {
			t.Fatalf("counters after a ping: %+v %v", c, err)
		}
		counters[p.owner] = c
	}
	otherBuild(t, filepath.Join(root, "maps", "warp_meta"))
	before := pinState(t, root)

	// In the node's namespace, where the host interfaces have their names.
	var code int
	var out, errOut string
	inNode := func(args ...string) {
		t.Helper()
		if err := node.Do(func() error { code, out, errOut = run(args...); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	inNode("podpath", "endpoints", "--bpffs-root", root, "--json")
	var views []podpathEndpointView
	if code != 0 || json.Unmarshal([]byte(out), &views) != nil {
		t.Fatalf("podpath endpoints --json: exit %d\n%s%s", code, out, errOut)
	}
	if len(views) != 2 {
		t.Fatalf("podpath endpoints: %s", out)
	}
	for i, p := range pods {
		v, c := views[i], counters[p.owner]
		if v.Owner != fmt.Sprintf("%#x", p.owner) || v.HostIfIndex != p.hostIdx || v.HostIf != p.hostIf || v.PodMAC != p.podMAC.String() ||
			!reflect.DeepEqual(v.IPs, []string{p.ip}) || v.Datapath != p.features.Hook.String() || v.Redirect != p.features.Redirect ||
			!v.AntiSpoof || v.Attached == nil || !*v.Attached || v.Counters == nil ||
			v.Counters.PassPackets < c.PassPackets || v.Counters.PassBytes < c.PassBytes || v.Counters.DropPackets != c.DropPackets {
			t.Errorf("podpath endpoints --json: %+v, counters %+v; want %+v %+v", v, v.Counters, p, c)
		}
	}
	inNode("podpath", "endpoints", "--bpffs-root", root)
	for _, want := range []string{"HOST IF", "DATAPATH", "ATTACHED", "PASSED PKTS/BYTES", fmt.Sprintf("%s (%d)", pods[0].hostIf, pods[0].hostIdx),
		"0xabc", "10.1.0.2", "antispoof", "xdp", "tc", "redirect,antispoof"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("podpath endpoints: exit %d, output lacks %q:\n%s%s", code, want, out, errOut)
		}
	}
	inNode("podpath", "nexthops", "--bpffs-root", root, "--json")
	var dsts []string
	if code != 0 || json.Unmarshal([]byte(out), &dsts) != nil || !reflect.DeepEqual(dsts, []string{"10.244.0.0/16", "fd00:10:244::/56"}) {
		t.Errorf("podpath nexthops --json: exit %d, %q %s", code, out, errOut)
	}
	if after := pinState(t, root); !reflect.DeepEqual(after, before) {
		t.Errorf("warpctl podpath changed the pins:\nbefore %v\nafter  %v", before, after)
	}
	code, _, errOut = run("podpath", "endpoints", "--bpffs-root", filepath.Join(e.BPFFS(), "warpnet"))
	if code != 1 || !strings.Contains(errOut, "no pod datapath is pinned") {
		t.Errorf("on an empty root: exit %d, %s", code, errOut)
	}
}
