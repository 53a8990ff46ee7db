// Package sriov_test drives the built bin/warp-sriov against simulated VFs:
// a fake sysfs tree whose VF netdevs are real macvlan links in a node
// namespace, and a recorded PF side (see internal/sriov/sim).
package sriov_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/tests/harness"
)

const network = "e2e-sriov"

type node struct {
	t       *testing.T
	env     *harness.Env
	ns      *harness.NetNS
	pf      *sim.PF
	sriov   *harness.Plugin
	dataDir string
}

func newNode(t *testing.T, vfs int, dpdk ...int) *node {
	env := harness.New(t)
	n := &node{t: t, env: env, ns: env.NetNS("node"), dataDir: filepath.Join(env.TempDir, "data")}
	p, err := sim.Create(sim.Spec{NodeNetns: n.ns.Path, Dir: filepath.Join(env.TempDir, "sim"), NumVFs: vfs, DPDKVFs: dpdk})
	if err != nil {
		t.Fatal(err)
	}
	env.Defer("destroy the simulated PF", p.Destroy)
	n.pf = p
	n.sriov = env.Plugin(t, "warp-sriov").In(n.ns)
	return n
}

// with is the node for a subtest: failures go to t.
func (n *node) with(t *testing.T) *node {
	m := *n
	m.t = t
	return &m
}

func (n *node) conf(fields map[string]any) []byte {
	base := map[string]any{
		"cniVersion": "1.1.0",
		"dataDir":    n.dataDir,
		"ipam": map[string]any{
			"type": "warp-ipam", "dataDir": filepath.Join(n.env.TempDir, "ipam"),
			"ranges": [][]map[string]any{{{"subnet": "192.168.50.0/24"}}, {{"subnet": "fd50::/64"}}},
		},
	}
	for k, v := range fields {
		base[k] = v
	}
	return harness.ConfigJSON(n.t, harness.NetConf(network, "warp-sriov", base))
}

func (n *node) call(cmd, id string, pod *harness.NetNS, conf []byte) harness.Call {
	c := harness.Call{Command: cmd, ContainerID: id, IfName: "net1", Config: conf, Env: n.pf.Env()}
	if pod != nil {
		c.Netns = pod.Path
	}
	return c
}

func (n *node) add(id string, pod *harness.NetNS, conf []byte) *current.Result {
	n.t.Helper()
	return harness.ParseResult(n.t, n.sriov.MustSucceed(n.t, n.call("ADD", id, pod, conf)))
}

// pfState reads what the PF side recorded for VF i.
func (n *node) pfState(i int) pf.VFState {
	n.t.Helper()
	s, err := pf.Recorder(n.pf.StateFile).VF(n.pf.PFName, i)
	if err != nil {
		n.t.Fatal(err)
	}
	return s
}

// link describes a netdev as "name mac mtu" in a namespace ("" if absent).
func link(t *testing.T, ns *harness.NetNS, name string) string {
	t.Helper()
	var out string
	ns.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			out = fmt.Sprintf("%s %s %d", l.Attrs().Name, l.Attrs().HardwareAddr, l.Attrs().MTU)
		}
		return nil
	})
	return out
}

func (n *node) hostVF(i int) string { return link(n.t, n.ns, n.pf.VFs[i].Netdev) }

// cacheFile and vfFile are warp-sriov's records (plugins/sriov/plugin/state.go).
func (n *node) cacheFile(id string) string { return filepath.Join(n.dataDir, "cache", id+":net1.json") }
func (n *node) vfFile(i int) string        { return filepath.Join(n.dataDir, "vf", n.pf.VFs[i].PCI+".json") }

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// reserved lists the addresses warp-ipam holds, read from its files.
func (n *node) reserved() []string {
	r := harness.IPAMReservations(filepath.Join(n.env.TempDir, "ipam"), network)
	slices.Sort(r)
	return r
}

// addrs are a result's addresses as IPAMReservations names them, sorted.
func addrs(res *current.Result) []string {
	var out []string
	for _, ipc := range res.IPs {
		out = append(out, ipc.Address.IP.String())
	}
	slices.Sort(out)
	return out
}

// gone models a pod that vanished without a CNI DEL (node crash, runtime
// bug): as the kernel does with real VFs, the VFs in its namespace return
// to the node (sim.ReturnVFs), then the namespace is deleted.
func (n *node) gone(pod *harness.NetNS) {
	n.t.Helper()
	if _, err := n.pf.ReturnVFs(pod.Path); err != nil {
		n.t.Fatal(err)
	}
	if _, err := n.ns.Run(n.t.Context(), "ip", "netns", "delete", pod.Name); err != nil {
		n.t.Fatal(err)
	}
}

// inPod is how VF i's netdev looks in a pod as net1 when it has its
// pristine MAC and MTU (origLink is its host view, "name mac mtu").
func inPod(origLink string) string {
	_, rest, _ := strings.Cut(origLink, " ")
	return "net1 " + rest
}

// assertRestored checks that VF i is back as the simulator made it, and that
// no record of an attachment is left.
func (n *node) assertRestored(i int, origLink string, origPF pf.VFState) {
	n.t.Helper()
	if got := n.hostVF(i); got != origLink {
		n.t.Errorf("VF %d in the host: %q, want %q", i, got, origLink)
	}
	if got := n.pfState(i); got != origPF {
		n.t.Errorf("VF %d PF-side state %+v, want %+v", i, got, origPF)
	}
	for _, d := range []string{"cache", "vf"} {
		entries, _ := os.ReadDir(filepath.Join(n.dataDir, d))
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".json") {
				n.t.Errorf("record left: %s/%s", d, e.Name())
			}
		}
	}
	if left := harness.IPAMReservations(filepath.Join(n.env.TempDir, "ipam"), network); len(left) != 0 {
		n.t.Errorf("addresses left reserved: %v", left)
	}
}

// Every configuration field is applied (checked through the PF-side record
// and through the VF link itself) and restored by DEL.
func TestNetdevModeAppliesAndRestoresEverything(t *testing.T) {
	n := newNode(t, 2)
	pod := n.env.NetNS("pod")
	// A udev-style predictable name stays with the host.
	n.ns.Exec(t, "ip", "link", "property", "add", "dev", n.pf.VFs[0].Netdev, "altname", "enp59s2f0")
	origLink, origPF := n.hostVF(0), n.pfState(0)
	conf := n.conf(map[string]any{
		"deviceID": n.pf.VFs[0].PCI, "vlan": 100, "vlanQoS": 3, "vlanProto": "802.1ad", "mac": "0a:aa:bb:cc:dd:01",
		"spoofchk": "off", "trust": "on", "link_state": "enable", "min_tx_rate": 100, "max_tx_rate": 1000, "mtu": 1400,
	})
	res := n.add("c1", pod, conf)
	if len(res.Interfaces) != 1 || res.Interfaces[0].PciID != n.pf.VFs[0].PCI || res.Interfaces[0].Sandbox != pod.Path || res.Interfaces[0].Mac != "0a:aa:bb:cc:dd:01" {
		t.Fatalf("interfaces = %+v", res.Interfaces[0])
	}
	want := pf.VFState{MAC: "0a:aa:bb:cc:dd:01", VLAN: 100, QoS: 3, Proto: "802.1ad", SpoofChk: false, Trust: true, LinkState: "enable", MinTxRate: 100, MaxTxRate: 1000}
	if got := n.pfState(0); got != want {
		t.Errorf("PF side %+v, want %+v", got, want)
	}
	if got := link(t, pod, "net1"); got != "net1 0a:aa:bb:cc:dd:01 1400" {
		t.Errorf("VF in the pod: %q", got)
	}
	if got := n.hostVF(0); got != "" {
		t.Errorf("VF still in the host: %q", got)
	}
	if out := pod.Exec(t, "ip", "-d", "link", "show", "net1"); strings.Contains(out, "altname") {
		t.Errorf("host altname followed the VF into the pod: %s", out)
	}
	if out := pod.Exec(t, "ip", "addr", "show", "net1"); !strings.Contains(out, "192.168.50.2/24") || !strings.Contains(out, "fd50::2/64") {
		t.Errorf("pod addresses: %s", out)
	}
	n.sriov.MustSucceed(t, n.call("CHECK", "c1", pod, harness.WithPrevResult(t, conf, res)))
	// Drift on the PF side, or an address gone in the pod: code 102.
	rec := pf.Recorder(n.pf.StateFile)
	if err := rec.SetVLAN(n.pf.PFName, 0, 101, 3, "802.1ad"); err != nil {
		t.Fatal(err)
	}
	if e := n.sriov.MustFail(t, n.call("CHECK", "c1", pod, harness.WithPrevResult(t, conf, res)), cnierr.CheckMismatch); !strings.Contains(e.Msg, "PF-side") {
		t.Errorf("CHECK message %q", e.Msg)
	}
	if err := rec.SetVLAN(n.pf.PFName, 0, 100, 3, "802.1ad"); err != nil {
		t.Fatal(err)
	}
	pod.Exec(t, "ip", "addr", "del", "192.168.50.2/24", "dev", "net1")
	if e := n.sriov.MustFail(t, n.call("CHECK", "c1", pod, harness.WithPrevResult(t, conf, res)), cnierr.CheckMismatch); !strings.Contains(e.Msg, "192.168.50.2") {
		t.Errorf("CHECK message %q", e.Msg)
	}

	// DEL works without the original stdin: no deviceID, nothing but
	// name and dataDir.
	bare := harness.ConfigJSON(t, harness.NetConf(network, "warp-sriov", map[string]any{"cniVersion": "1.1.0", "dataDir": n.dataDir}))
	n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, bare))
	n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, bare))
	n.assertRestored(0, origLink, origPF)
	if out := n.ns.Exec(t, "ip", "-d", "link", "show", n.pf.VFs[0].Netdev); !strings.Contains(out, "altname enp59s2f0") {
		t.Errorf("altname not restored in the host: %s", out)
	}
}

func TestDPDKMode(t *testing.T) {
	n := newNode(t, 2, 1)
	pod := n.env.NetNS("pod")
	origPF := n.pfState(1)
	conf := n.conf(map[string]any{"deviceID": n.pf.VFs[1].PCI, "vlan": 7, "mac": "0a:00:00:00:00:07"})
	res := n.add("c1", pod, conf)
	if res.Interfaces[0].PciID != n.pf.VFs[1].PCI || len(res.IPs) != 2 {
		t.Fatalf("result = %+v %v", res.Interfaces[0], res.IPs)
	}
	if got := link(t, pod, "net1"); got != "" {
		t.Fatalf("DPDK mode moved a netdev into the pod: %s", got)
	}
	if got := n.pfState(1); got.VLAN != 7 || got.MAC != "0a:00:00:00:00:07" {
		t.Fatalf("PF side %+v", got)
	}
	n.sriov.MustSucceed(t, n.call("CHECK", "c1", pod, harness.WithPrevResult(t, conf, res)))
	n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, conf))
	n.assertRestored(1, "", origPF)
}

func TestTwoPodsOnTwoVFsTalk(t *testing.T) {
	n := newNode(t, 2)
	pod1, pod2 := n.env.NetNS("pod1"), n.env.NetNS("pod2")
	// As Multus passes them: the device plugin's choice in runtimeConfig.
	// And a MAC from CNI_ARGS, which runtimeConfig.mac would override.
	c1 := n.call("ADD", "c1", pod1, n.conf(map[string]any{"runtimeConfig": map[string]any{"deviceID": n.pf.VFs[0].PCI}}))
	c1.Args = "K8S_POD_NAME=a;MAC=0a:00:00:00:00:a1"
	r1 := harness.ParseResult(t, n.sriov.MustSucceed(t, c1))
	r2 := n.add("c2", pod2, n.conf(map[string]any{"deviceID": "0000:00:00.0", "mac": "0a:00:00:00:00:b0",
		"runtimeConfig": map[string]any{"deviceID": n.pf.VFs[1].PCI, "mac": "0a:00:00:00:00:b2"}}))
	if r1.Interfaces[0].Mac != "0a:00:00:00:00:a1" || r2.Interfaces[0].Mac != "0a:00:00:00:00:b2" {
		t.Fatalf("MACs %s %s", r1.Interfaces[0].Mac, r2.Interfaces[0].Mac)
	}
	if r2.Interfaces[0].PciID != n.pf.VFs[1].PCI || n.pfState(1).MAC != "0a:00:00:00:00:b2" {
		t.Fatalf("runtimeConfig ignored: %+v %+v", r2.Interfaces[0], n.pfState(1))
	}
	port := n.env.EchoServer(pod2, "pod2", 0)
	for _, ip := range r2.IPs {
		for _, proto := range []string{"tcp", "udp"} {
			if got := pod1.MustExchange(t, proto, net.JoinHostPort(ip.Address.IP.String(), fmt.Sprint(port)), "over the VF"); got != "pod2" {
				t.Fatalf("answered by %s", got)
			}
		}
	}
}

// The pod's namespace is gone before DEL: DEL still restores the PF side
// and frees the address and the records. A real VF has come back to the
// host by itself, with the pod's name, MAC and MTU: DEL finds it there and
// restores it too. A simulated one that was not returned died with the
// namespace.
func TestDelAfterPodNamespaceIsGone(t *testing.T) {
	for _, returned := range []bool{true, false} {
		t.Run(map[bool]string{true: "VF returned", false: "VF died"}[returned], func(t *testing.T) {
			n := newNode(t, 2)
			pod := n.env.NetNS("pod")
			origLink, origPF := n.hostVF(1), n.pfState(1)
			conf := n.conf(map[string]any{"deviceID": n.pf.VFs[1].PCI, "vlan": 5, "trust": "on", "mac": "0a:00:00:00:00:05", "mtu": 1400})
			n.add("c1", pod, conf)
			if returned {
				n.gone(pod)
				if got := n.hostVF(1); got != n.pf.VFs[1].Netdev+" 0a:00:00:00:00:05 1400" {
					t.Fatalf("returned VF: %q", got)
				}
			} else {
				if _, err := n.ns.Run(t.Context(), "ip", "netns", "delete", pod.Name); err != nil {
					t.Fatal(err)
				}
				origLink = ""
			}
			n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, conf))
			n.sriov.MustSucceed(t, n.call("DEL", "c1", nil, conf))
			n.assertRestored(1, origLink, origPF)
		})
	}
}

func TestBadDeviceIDs(t *testing.T) {
	n := newNode(t, 1)
	pod := n.env.NetNS("pod")
	cases := []struct {
		name, id string
		code     uint
		msg      string
	}{
		{"missing", "", types.ErrInvalidNetworkConfig, "deviceID: missing"},
		{"malformed", "not-a-pci", types.ErrInvalidNetworkConfig, "not a PCI address"},
		{"absent", "0000:99:00.0", types.ErrInvalidNetworkConfig, "no PCI device"},
		{"not a VF (the PF)", n.pf.PFPCI(), types.ErrInvalidNetworkConfig, "not an SR-IOV VF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := n.sriov.MustFail(t, n.call("ADD", "bad", pod, n.conf(map[string]any{"deviceID": tc.id})), tc.code)
			if !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("message %q does not say %q", e.Msg, tc.msg)
			}
		})
	}
	for _, args := range []string{"MAC", "MAC=0a:00:00:00:00:01;COLOR=blue"} {
		t.Run("CNI_ARGS "+args, func(t *testing.T) {
			c := n.call("ADD", "bad", pod, n.conf(map[string]any{"deviceID": n.pf.VFs[0].PCI}))
			c.Args = args
			if e := n.sriov.MustFail(t, c, types.ErrInvalidEnvironmentVariables); !strings.Contains(e.Msg, "CNI_ARGS") {
				t.Errorf("message %q does not name CNI_ARGS", e.Msg)
			}
		})
	}
	bad := []struct{ field, conf string }{
		{"vlan", `{"vlan": 5000}`}, {"vlanQoS", `{"vlanQoS": 9, "vlan": 3}`}, {"vlanProto", `{"vlan": 3, "vlanProto": "802.1x"}`},
		{"mac", `{"mac": "01:00:5e:00:00:01"}`}, {"spoofchk", `{"spoofchk": "maybe"}`}, {"trust", `{"trust": 1}`},
		{"link_state", `{"link_state": "up"}`}, {"min_tx_rate", `{"min_tx_rate": 500, "max_tx_rate": 100}`}, {"mtu", `{"mtu": 10}`},
	}
	for _, tc := range bad {
		t.Run(tc.field, func(t *testing.T) {
			var fields map[string]any
			json.Unmarshal([]byte(tc.conf), &fields)
			fields["deviceID"] = n.pf.VFs[0].PCI
			o := n.sriov.MustFail(t, n.call("ADD", "bad", pod, n.conf(fields)), expectCode(tc.field))
			if !strings.Contains(o.Msg, tc.field) {
				t.Errorf("message %q does not name %s", o.Msg, tc.field)
			}
		})
	}
}

func expectCode(field string) uint {
	if field == "trust" { // a number where a string belongs
		return types.ErrDecodingFailure
	}
	return types.ErrInvalidNetworkConfig
}

// Each failure point after the VF was touched undoes everything before it.
func TestFailedAddRollsBack(t *testing.T) {
	n := newNode(t, 1)
	vf := n.pf.VFs[0].PCI
	origLink, origPF := n.hostVF(0), n.pfState(0)
	t.Run("interface already in the pod", func(t *testing.T) {
		pod := n.env.NetNS("busy")
		pod.Exec(t, "ip", "link", "add", "net1", "type", "veth", "peer", "name", "x")
		n.sriov.MustFail(t, n.call("ADD", "f0", pod, n.conf(map[string]any{"deviceID": vf})), types.ErrInvalidEnvironmentVariables)
		n.assertRestored(0, origLink, origPF)
	})
	t.Run("MTU the VF cannot take", func(t *testing.T) {
		e := n.sriov.MustFail(t, n.call("ADD", "f1", n.env.NetNS("p1"), n.conf(map[string]any{"deviceID": vf, "vlan": 9, "mtu": 9000})), types.ErrInternal)
		if !strings.Contains(e.Msg, "mtu") {
			t.Errorf("failed elsewhere: %q", e.Msg)
		}
		n.assertRestored(0, origLink, origPF)
	})
	t.Run("PF rejects a setting halfway", func(t *testing.T) {
		// The VF already has a 100 Mbps cap; asking only for a 500 Mbps
		// minimum passes config validation, but the PF refuses it after
		// MAC and VLAN were applied.
		rec := pf.Recorder(n.pf.StateFile)
		if err := rec.SetRate(n.pf.PFName, 0, 0, 100); err != nil {
			t.Fatal(err)
		}
		defer rec.SetRate(n.pf.PFName, 0, 0, 0)
		capped := n.pfState(0)
		e := n.sriov.MustFail(t, n.call("ADD", "fpf", n.env.NetNS("ppf"), n.conf(map[string]any{
			"deviceID": vf, "vlan": 9, "mac": "0a:00:00:00:09:09", "min_tx_rate": 500})), types.ErrInternal)
		if !strings.Contains(e.Msg, "min_tx_rate") {
			t.Errorf("failed elsewhere: %q", e.Msg)
		}
		n.assertRestored(0, origLink, capped)
	})
	t.Run("IPAM fails", func(t *testing.T) {
		full := map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(n.env.TempDir, "ipam"), "ranges": [][]map[string]any{{{"subnet": "10.9.0.0/30", "rangeEnd": "10.9.0.1"}}}}
		n.sriov.MustFail(t, n.call("ADD", "f2", n.env.NetNS("p2"), n.conf(map[string]any{"deviceID": vf, "vlan": 9, "ipam": full})), types.ErrTryAgainLater)
		n.assertRestored(0, origLink, origPF)
	})
	t.Run("addresses cannot be configured", func(t *testing.T) {
		pod := n.env.NetNS("p3")
		pod.Exec(t, "sysctl", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
		e := n.sriov.MustFail(t, n.call("ADD", "f3", pod, n.conf(map[string]any{"deviceID": vf, "vlan": 9})), types.ErrInternal)
		if !strings.Contains(e.Msg, "add fd50::") {
			t.Errorf("failed elsewhere: %q", e.Msg)
		}
		n.assertRestored(0, origLink, origPF)
	})
}

// DEL cleans up after the configuration has become invalid (it reads only
// dataDir and the IPAM type; the rest comes from its cache), and also when
// nothing was attached.
func TestDelWithInvalidConfig(t *testing.T) {
	n := newNode(t, 1)
	pod := n.env.NetNS("pod")
	origLink, origPF := n.hostVF(0), n.pfState(0)
	n.add("c1", pod, n.conf(map[string]any{"deviceID": n.pf.VFs[0].PCI, "vlan": 7, "mtu": 1400}))
	// Invalid for ADD: code 6 naming the key.
	if e := n.sriov.MustFail(t, n.call("ADD", "c2", n.env.NetNS("other"), n.conf(map[string]any{"deviceID": n.pf.VFs[0].PCI, "vlan": "x"})),
		types.ErrDecodingFailure); !strings.Contains(e.Msg, "vlan") {
		t.Errorf("message %q does not name vlan", e.Msg)
	}
	broken := n.conf(map[string]any{"deviceID": 7, "vlan": "x", "mtu": "abc", "trust": 1, "prevResult": "garbage"})
	n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, broken))
	n.assertRestored(0, origLink, origPF)
	n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, broken))
	n.sriov.MustSucceed(t, n.call("DEL", "never", pod, broken))
}

// CNI 0.1.0 and 0.2.0 runtimes get results in their format (ip4/ip6, no
// interfaces) and can DEL.
func TestOldSpecVersions(t *testing.T) {
	n := newNode(t, 1)
	origLink, origPF := n.hostVF(0), n.pfState(0)
	for _, v := range []string{"0.1.0", "0.2.0"} {
		t.Run(v, func(t *testing.T) {
			n := n.with(t)
			pod := n.env.NetNS("pod" + strings.ReplaceAll(v, ".", ""))
			conf := n.conf(map[string]any{"cniVersion": v, "deviceID": n.pf.VFs[0].PCI, "vlan": 5})
			out := n.sriov.MustSucceed(t, n.call("ADD", "c1", pod, conf))
			var res struct {
				CNIVersion string               `json:"cniVersion"`
				IP4        *struct{ IP string } `json:"ip4"`
				IP6        *struct{ IP string } `json:"ip6"`
				Interfaces json.RawMessage      `json:"interfaces"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatal(err)
			}
			if res.CNIVersion != v || res.IP4 == nil || !strings.HasPrefix(res.IP4.IP, "192.168.50.") || res.IP6 == nil || !strings.HasPrefix(res.IP6.IP, "fd50::") || res.Interfaces != nil {
				t.Fatalf("%s result: %s", v, out)
			}
			if got := n.pfState(0); got.VLAN != 5 {
				t.Errorf("PF side %+v", got)
			}
			if out := pod.Exec(t, "ip", "addr", "show", "net1"); !strings.Contains(out, res.IP4.IP) || !strings.Contains(out, res.IP6.IP) {
				t.Errorf("pod addresses: %s, want %s and %s", out, res.IP4.IP, res.IP6.IP)
			}
			n.sriov.MustSucceed(t, n.call("DEL", "c1", pod, conf))
			n.assertRestored(0, origLink, origPF)
		})
	}
}
