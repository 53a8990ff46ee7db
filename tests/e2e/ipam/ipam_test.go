// Package ipam_test drives the built bin/warp-ipam through the CNI protocol in
// real network namespaces, one test per promise the README makes.
package ipam_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/warpnet/warpnet/tests/harness"
)

const network = "e2e-net"

// fixture is one test's world: a pod namespace, a data directory and the
// plugin under test.
type fixture struct {
	t       *testing.T
	env     *harness.Env
	ipam    *harness.Plugin
	pod     *harness.NetNS
	dataDir string
}

func newFixture(t *testing.T) *fixture {
	env := harness.New(t)
	f := &fixture{t: t, env: env, ipam: env.Plugin(t, "warp-ipam"), pod: env.NetNS("pod"), dataDir: filepath.Join(env.TempDir, "ipam")}
	return f
}

// conf builds a network configuration around an ipam section; top holds
// extra top-level keys (runtimeConfig, args, cni.dev/valid-attachments).
func (f *fixture) conf(ipam map[string]any, top map[string]any) []byte {
	ipam = cloneWith(map[string]any{"type": "warp-ipam", "dataDir": f.dataDir}, ipam)
	return harness.ConfigJSON(f.t, harness.NetConf(network, "warp-veth", cloneWith(map[string]any{"cniVersion": "1.1.0", "ipam": ipam}, top)))
}

func cloneWith(base, over map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		out[k] = v
	}
	return out
}

func (f *fixture) call(cmd, id string, conf []byte) harness.Call {
	return harness.Call{Command: cmd, ContainerID: id, Netns: f.pod.Path, IfName: "eth0", Config: conf}
}

func (f *fixture) add(id string, conf []byte) *current.Result {
	f.t.Helper()
	return harness.ParseResult(f.t, f.ipam.MustSucceed(f.t, f.call("ADD", id, conf)))
}

// reserved lists the addresses on disk, read directly from the store
// directory (host-local's format: one file per address).
func (f *fixture) reserved() []string { return harness.IPAMReservations(f.dataDir, network) }

func addrs(r *current.Result) []string {
	var out []string
	for _, ip := range r.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

var v4 = map[string]any{"ranges": [][]map[string]any{{{"subnet": "10.50.0.0/24"}}}}

func TestHostLocalKeysDualStackDNSAndRoutes(t *testing.T) {
	f := newFixture(t)
	resolv := filepath.Join(f.env.TempDir, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n"), 0o644)
	conf := f.conf(map[string]any{
		"ranges": [][]map[string]any{
			{{"subnet": "10.50.0.0/24", "rangeStart": "10.50.0.20", "rangeEnd": "10.50.0.30", "gateway": "10.50.0.254"}},
			{{"subnet": "fd50::/64"}},
		},
		"routes":     []map[string]any{{"dst": "0.0.0.0/0"}, {"dst": "::/0"}},
		"resolvConf": resolv,
		"dns":        map[string]any{"domain": "cluster.local"},
		"exclude":    []string{"10.50.0.20", "fd50::2/127"},
	}, nil)
	res := f.add("c1", conf)
	if got := addrs(res); fmt.Sprint(got) != "[10.50.0.21/24 fd50::4/64]" {
		t.Fatalf("addresses = %v, want one per range set, skipping the exclusions", got)
	}
	if res.IPs[0].Gateway.String() != "10.50.0.254" || res.IPs[1].Gateway.String() != "fd50::1" {
		t.Errorf("gateways = %v %v", res.IPs[0].Gateway, res.IPs[1].Gateway)
	}
	if len(res.Routes) != 2 || res.DNS.Nameservers[0] != "10.96.0.10" || res.DNS.Domain != "cluster.local" || res.DNS.Options[0] != "ndots:5" {
		t.Errorf("routes/dns = %v %+v", res.Routes, res.DNS)
	}
}

// An operator switches "type" from host-local to warp-ipam on a node with
// running pods: existing reservations are honoured and DEL releases them.
func TestSwitchFromHostLocal(t *testing.T) {
	harness.RequireTools(t, "/usr/lib/cni/host-local")
	f := newFixture(t)
	hostLocal := f.env.Plugin(t, "host-local")
	hlConf := f.conf(v4, nil)
	var m map[string]any
	json.Unmarshal(hlConf, &m)
	m["ipam"].(map[string]any)["type"] = "host-local"
	m["cniVersion"] = "1.0.0" // Debian's host-local predates 1.1.0
	hl := harness.ParseResult(t, hostLocal.MustSucceed(t, f.call("ADD", "old-pod", harness.ConfigJSON(t, m))))

	res := f.add("new-pod", f.conf(v4, nil))
	if res.IPs[0].Address.IP.Equal(hl.IPs[0].Address.IP) {
		t.Fatalf("warp-ipam handed out %s, which host-local gave to a running pod", res.IPs[0].Address.IP)
	}
	f.ipam.MustSucceed(t, f.call("DEL", "old-pod", f.conf(v4, nil)))
	if got := f.reserved(); len(got) != 1 || got[0] != res.IPs[0].Address.IP.String() {
		t.Fatalf("after DEL of host-local's pod, reserved = %v", got)
	}
}

func TestFixedAddresses(t *testing.T) {
	f := newFixture(t)
	dual := map[string]any{"ranges": [][]map[string]any{{{"subnet": "10.50.0.0/24"}}, {{"subnet": "fd50::/64"}}}, "exclude": []string{"10.50.0.128/25"}}
	cases := []struct {
		name string
		args string
		top  map[string]any
		want string
	}{
		{"ips capability", "", map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.50.0.7/24", "fd50::7/64"}}}, "[10.50.0.7/24 fd50::7/64]"},
		{"args.cni.ips", "", map[string]any{"args": map[string]any{"cni": map[string]any{"ips": []string{"10.50.0.8"}}}}, "[10.50.0.8/24 fd50::2/64]"},
		{"CNI_ARGS IP", "K8S_POD_NAME=web-0;IP=10.50.0.9,fd50::9", nil, "[10.50.0.9/24 fd50::9/64]"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := f.call("ADD", fmt.Sprintf("fixed%d", i), f.conf(dual, tc.top))
			c.Args = tc.args
			res := harness.ParseResult(t, f.ipam.MustSucceed(t, c))
			if got := fmt.Sprint(addrs(res)); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}

	before := f.reserved()
	bad := []struct {
		name string
		ips  []string
		code uint
		msg  string
	}{
		{"outside every range", []string{"10.99.0.1"}, types.ErrInvalidNetworkConfig, "runtimeConfig.ips[0]: 10.99.0.1 is not inside any configured range"},
		{"excluded", []string{"10.50.0.200"}, types.ErrInvalidNetworkConfig, "listed in ipam.exclude"},
		{"the gateway", []string{"10.50.0.1"}, types.ErrInvalidNetworkConfig, "is the gateway"},
		{"held by another container", []string{"fd50::1:1", "10.50.0.7"}, types.ErrTryAgainLater, "held by container fixed0 interface eth0"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			e := f.ipam.MustFail(t, f.call("ADD", "intruder", f.conf(dual, map[string]any{"runtimeConfig": map[string]any{"ips": tc.ips}})), tc.code)
			if !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("message %q does not say %q", e.Msg, tc.msg)
			}
			if after := f.reserved(); !slices.Equal(after, before) {
				t.Fatalf("a failed ADD left reservations: before %v, after %v", before, after)
			}
		})
	}
}

func TestRepeatedAddFailsAndDelIsIdempotent(t *testing.T) {
	f := newFixture(t)
	conf := f.conf(v4, nil)
	first := f.add("c1", conf)
	e := f.ipam.MustFail(t, f.call("ADD", "c1", conf), 101)
	if !strings.Contains(e.Msg, first.IPs[0].Address.IP.String()) {
		t.Errorf("message %q does not name the held address", e.Msg)
	}
	// A second interface of the same container is a different attachment.
	c := f.call("ADD", "c1", conf)
	c.IfName = "net1"
	f.ipam.MustSucceed(t, c)

	for i := 0; i < 2; i++ {
		f.ipam.MustSucceed(t, f.call("DEL", "c1", conf))
	}
	f.ipam.MustSucceed(t, f.call("DEL", "never-added", conf))
	// DEL must work without a namespace and with a configuration whose
	// ranges have since become invalid.
	c = f.call("DEL", "c1", f.conf(map[string]any{"ranges": "garbage-now"}, nil))
	c.IfName, c.Netns = "net1", ""
	f.ipam.MustSucceed(t, c)
	if got := f.reserved(); len(got) != 0 {
		t.Fatalf("reserved after DELs: %v", got)
	}
	// DEL on a node that never had the network.
	other := f.call("DEL", "c9", harness.ConfigJSON(t, harness.NetConf("no-such-net", "x", map[string]any{"ipam": map[string]any{"type": "warp-ipam", "dataDir": f.dataDir}})))
	f.ipam.MustSucceed(t, other)
}

func TestCheck(t *testing.T) {
	f := newFixture(t)
	res := f.add("c1", f.conf(v4, nil))
	prev := func(r *current.Result) map[string]any {
		b, _ := json.Marshal(r)
		var m map[string]any
		json.Unmarshal(b, &m)
		return map[string]any{"prevResult": m}
	}
	f.ipam.MustSucceed(t, f.call("CHECK", "c1", f.conf(v4, prev(res))))

	wrong := *res
	wrong.IPs = []*current.IPConfig{{Address: net.IPNet{IP: net.ParseIP("10.50.0.99"), Mask: net.CIDRMask(24, 32)}}}
	f.ipam.MustFail(t, f.call("CHECK", "c1", f.conf(v4, prev(&wrong))), 102)

	f.ipam.MustSucceed(t, f.call("DEL", "c1", f.conf(v4, nil)))
	f.ipam.MustFail(t, f.call("CHECK", "c1", f.conf(v4, prev(res))), types.ErrUnknownContainer)
}

// Every spec version from 0.1.0 on: ADD's result in that version's shape
// (0.1.0/0.2.0: "ip4"/"ip6" objects; 0.3.x: "ips" with "version"; 1.x:
// "ips" without), and DEL.
func TestSpecVersions(t *testing.T) {
	f := newFixture(t)
	versions := []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}
	out := f.ipam.MustSucceed(t, harness.Call{Command: "VERSION", Config: []byte(`{"cniVersion":"1.1.0"}`)})
	var vi struct {
		Supported []string `json:"supportedVersions"`
	}
	json.Unmarshal(out, &vi)
	for _, v := range versions {
		if !slices.Contains(vi.Supported, v) {
			t.Fatalf("VERSION lacks %s: %s", v, out)
		}
	}
	dual := map[string]any{
		"ranges": [][]map[string]any{{{"subnet": "10.50.0.0/24"}}, {{"subnet": "fd50::/64"}}},
		"routes": []map[string]any{{"dst": "10.96.0.0/12"}},
	}
	for i, v := range versions {
		t.Run(v, func(t *testing.T) {
			id := fmt.Sprintf("v%d", i)
			conf := f.conf(dual, map[string]any{"cniVersion": v})
			out := f.ipam.MustSucceed(t, f.call("ADD", id, conf))
			var r struct {
				CNIVersion string `json:"cniVersion"`
				IP4        *struct {
					IP      string `json:"ip"`
					Gateway string `json:"gateway"`
					Routes  []struct {
						Dst string `json:"dst"`
					} `json:"routes"`
				} `json:"ip4"`
				IP6 *struct {
					IP string `json:"ip"`
				} `json:"ip6"`
				IPs []struct {
					Address string  `json:"address"`
					Version *string `json:"version"`
				} `json:"ips"`
				Routes []struct {
					Dst string `json:"dst"`
				} `json:"routes"`
			}
			if err := json.Unmarshal(out, &r); err != nil || r.CNIVersion != v {
				t.Fatalf("result %s: %v", out, err)
			}
			switch {
			case v < "0.3.0":
				if r.IP4 == nil || r.IP6 == nil || r.IPs != nil ||
					!strings.HasPrefix(r.IP4.IP, "10.50.0.") || r.IP4.Gateway != "10.50.0.1" ||
					!strings.HasPrefix(r.IP6.IP, "fd50::") || len(r.IP4.Routes) != 1 || r.IP4.Routes[0].Dst != "10.96.0.0/12" {
					t.Fatalf("want ip4 (with gateway and routes) and ip6: %s", out)
				}
			default:
				if r.IP4 != nil || len(r.IPs) != 2 || !strings.HasPrefix(r.IPs[0].Address, "10.50.0.") ||
					len(r.Routes) != 1 || (v < "1.0.0") != (r.IPs[0].Version != nil) {
					t.Fatalf("want ips (with version before 1.0.0) and routes: %s", out)
				}
			}
			before := len(f.reserved())
			f.ipam.MustSucceed(t, f.call("DEL", id, conf))
			if after := len(f.reserved()); after != before-2 {
				t.Fatalf("DEL released %d addresses, want 2", before-after)
			}
		})
	}
}

func TestRefusesPluginNamespace(t *testing.T) {
	f := newFixture(t)
	c := f.call("ADD", "c1", f.conf(v4, nil))
	c.Netns = "/proc/self/ns/net" // the plugin process's own namespace
	f.ipam.MustFail(t, c, types.ErrInvalidNetNS)
	if got := f.reserved(); len(got) != 0 {
		t.Fatalf("refused ADD left %v", got)
	}
}

func TestStatus(t *testing.T) {
	f := newFixture(t)
	small := map[string]any{"ranges": [][]map[string]any{{{"subnet": "10.50.0.0/24"}}, {{"subnet": "10.60.0.0/29", "rangeEnd": "10.60.0.3"}}}}
	conf := f.conf(small, nil)
	f.ipam.MustSucceed(t, f.call("STATUS", "", conf))
	f.add("c1", conf)
	f.add("c2", conf)
	e := f.ipam.MustFail(t, harness.Call{Command: "STATUS", Config: conf}, 50)
	if !strings.Contains(e.Msg, "range set 1") {
		t.Errorf("message %q does not name the exhausted range set", e.Msg)
	}
	f.ipam.MustFail(t, f.call("ADD", "c3", conf), types.ErrTryAgainLater)
	f.ipam.MustSucceed(t, f.call("DEL", "c1", conf))
	f.ipam.MustSucceed(t, harness.Call{Command: "STATUS", Config: conf})

	// A data directory that cannot be created makes the plugin unavailable.
	blocker := filepath.Join(f.env.TempDir, "not-a-dir")
	os.WriteFile(blocker, nil, 0o644)
	broken := harness.ConfigJSON(t, harness.NetConf(network, "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"ipam": cloneWith(small, map[string]any{"type": "warp-ipam", "dataDir": blocker})}))
	if e := f.ipam.MustFail(t, harness.Call{Command: "STATUS", Config: broken}, 50); !strings.Contains(e.Msg, "dataDir") {
		t.Errorf("message %q does not name dataDir", e.Msg)
	}
}

func TestGC(t *testing.T) {
	f := newFixture(t)
	conf := f.conf(v4, nil)
	for i := 0; i < 5; i++ {
		f.add(fmt.Sprintf("c%d", i), conf)
	}
	keep := []map[string]string{{"containerID": "c0", "ifname": "eth0"}}
	f.ipam.MustSucceed(t, harness.Call{Command: "GC", Config: f.conf(v4, map[string]any{"cni.dev/valid-attachments": keep})})
	if got := f.reserved(); len(got) != 1 {
		t.Fatalf("after GC keeping c0: %v", got)
	}

	// The pre-1.1 key is honoured too.
	f.add("c1", conf)
	legacy := []map[string]string{{"containerID": "c0", "ifname": "eth0"}, {"containerID": "c1", "ifname": "eth0"}}
	f.ipam.MustSucceed(t, harness.Call{Command: "GC", Config: f.conf(v4, map[string]any{"cni.dev/attachments": legacy})})
	if got := f.reserved(); len(got) != 2 {
		t.Fatalf("after GC with cni.dev/attachments: %v", got)
	}

	// A broken entry fails GC, but everything else is still collected.
	f.add("c2", conf)
	os.Mkdir(filepath.Join(f.dataDir, network, "attachments", "broken:eth0"), 0o755)
	e := f.ipam.MustFail(t, harness.Call{Command: "GC", Config: f.conf(v4, map[string]any{"cni.dev/valid-attachments": keep})}, types.ErrIOFailure)
	if !strings.Contains(e.Msg, "broken") {
		t.Errorf("GC error %q does not name the broken entry", e.Msg)
	}
	if got := f.reserved(); len(got) != 1 {
		t.Fatalf("GC stopped at the broken entry: %v", got)
	}
}

// 100 plugin processes started at once for different containers get 100
// distinct addresses.
func TestConcurrentAdds(t *testing.T) {
	f := newFixture(t)
	conf := f.conf(map[string]any{"ranges": [][]map[string]any{{{"subnet": "10.70.0.0/24"}}, {{"subnet": "fd70::/64"}}}}, nil)
	const n = 100
	type outcome struct {
		res *current.Result
		err string
	}
	results := make([]outcome, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			o, err := f.ipam.Exec(ctx, f.call("ADD", fmt.Sprintf("burst%03d", i), conf))
			switch {
			case err != nil:
				results[i].err = err.Error()
			case o.ExitCode != 0:
				results[i].err = o.String()
			default:
				var r current.Result
				json.Unmarshal(o.Stdout, &r)
				results[i].res = &r
			}
		}()
	}
	close(start)
	wg.Wait()
	seen := map[string]int{}
	for i, r := range results {
		if r.err != "" {
			t.Fatalf("ADD %d failed: %s", i, r.err)
		}
		for _, ip := range r.res.IPs {
			a := ip.Address.IP.String()
			if j, dup := seen[a]; dup {
				t.Fatalf("%s handed to both burst%03d and burst%03d", a, j, i)
			}
			seen[a] = i
		}
	}
	if len(seen) != 2*n || len(f.reserved()) != 2*n {
		t.Fatalf("%d distinct addresses in results, %d on disk; want %d", len(seen), len(f.reserved()), 2*n)
	}
}

// The README says conflict probes run outside the store lock, so a slow
// probe does not hold up other pods' ADDs. Proved by order, not by timing:
// ADD #1 sits in a probe nobody answers (probeTimeout 10s); ADD #2 on the
// same network completes while #1 has not yet passed the end of its probe.
func TestConflictProbesRunOutsideTheLock(t *testing.T) {
	f := newFixture(t)
	f.env.Veth(f.pod, "eth0", f.env.NetNS("peer"), "p0")
	log := filepath.Join(f.env.TempDir, "probe-points")
	slow := f.call("ADD", "slow", f.conf(cloneWith(v4, map[string]any{"probeTimeout": "10s"}), nil))
	slow.Env = []string{"WARP_FAULTPOINT_LOG=" + log}
	cmd, err := f.env.FaultPlugin(t, "warp-ipam").Start(slow)
	if err != nil {
		t.Fatal(err)
	}
	passed := func(point string) bool {
		data, _ := os.ReadFile(log)
		return slices.Contains(strings.Fields(string(data)), point)
	}
	harness.WaitFor(t, "ADD #1 to reserve its address and start probing", time.Minute, func() bool {
		return passed("warp-ipam.add.before-probe")
	})

	fast := f.add("fast", f.conf(cloneWith(v4, map[string]any{"detectConflicts": false}), nil))
	if passed("warp-ipam.add.after-probe") {
		t.Fatal("ADD #1 finished probing before ADD #2 completed: the probe held the lock")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ADD #1: %v\n%s", err, harness.Output(cmd))
	}
	if !passed("warp-ipam.add.after-probe") {
		t.Fatal("ADD #1 ended without finishing its probe")
	}
	if got := f.reserved(); len(got) != 2 || !slices.Contains(got, strings.Split(addrs(fast)[0], "/")[0]) {
		t.Fatalf("reserved %v, want both ADDs' addresses (#2 got %v)", got, addrs(fast))
	}
}

// Fault 7: addresses dynamic allocation never hands out cannot be requested
// either, and configurations that cannot be right are refused with code 7
// naming the key, leaving nothing behind.
func TestRefusesUnusableAddressesAndPaths(t *testing.T) {
	f := newFixture(t)
	// Ranges that span their subnets' network and broadcast addresses.
	spanning := map[string]any{"ranges": [][]map[string]any{
		{{"subnet": "10.50.0.0/30", "rangeStart": "10.50.0.0", "rangeEnd": "10.50.0.3"}},
		{{"subnet": "fd50::/126", "rangeStart": "fd50::"}},
	}}
	conf := f.conf(spanning, nil)
	for _, tc := range []struct{ name, ip, args, field string }{
		{"IPv4 network address", "10.50.0.0/30", "", "runtimeConfig.ips[0]"},
		{"IPv4 broadcast address", "", "IP=10.50.0.3", "CNI_ARGS IP"},
		{"IPv6 subnet-router anycast address", "fd50::/126", "", "runtimeConfig.ips[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.call("ADD", "fixed", conf)
			if tc.ip != "" {
				c.Config = f.conf(spanning, map[string]any{"runtimeConfig": map[string]any{"ips": []string{tc.ip}}})
			}
			c.Args = tc.args
			e := f.ipam.MustFail(t, c, types.ErrInvalidNetworkConfig)
			if !strings.Contains(e.Msg, tc.field) || !strings.Contains(e.Msg, "network or broadcast") {
				t.Errorf("message %q does not name %s and say why", e.Msg, tc.field)
			}
			if got := f.reserved(); len(got) != 0 {
				t.Fatalf("refused ADD left %v", got)
			}
		})
	}
	// Dynamic allocation agrees: the only usable pair is .2 and ::2.
	if got := fmt.Sprint(addrs(f.add("dyn", conf))); got != "[10.50.0.2/30 fd50::2/126]" {
		t.Fatalf("dynamic ADD got %s", got)
	}
	f.ipam.MustFail(t, f.call("ADD", "dyn2", conf), types.ErrTryAgainLater)

	// A relative dataDir would land wherever the runtime's cwd is; every
	// verb refuses it and creates nothing there.
	rel := fmt.Sprintf("warp-ipam-relative-%s", f.env.Prefix)
	relConf := harness.ConfigJSON(t, harness.NetConf(network, "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"ipam": cloneWith(v4, map[string]any{"type": "warp-ipam", "dataDir": rel})}))
	for _, verb := range []string{"ADD", "DEL", "CHECK", "STATUS", "GC"} {
		if e := f.ipam.MustFail(t, f.call(verb, "c1", relConf), types.ErrInvalidNetworkConfig); !strings.Contains(e.Msg, "ipam.dataDir") {
			t.Errorf("%s: message %q does not name ipam.dataDir", verb, e.Msg)
		}
	}
	if _, err := os.Stat(rel); !errors.Is(err, os.ErrNotExist) {
		os.RemoveAll(rel)
		t.Fatalf("a refused call created %s relative to the cwd", rel)
	}

	// A range of every address.
	for _, subnet := range []string{"0.0.0.0/0", "::/0"} {
		c := f.call("ADD", "all", f.conf(map[string]any{"ranges": [][]map[string]any{{{"subnet": subnet}}}}, nil))
		if e := f.ipam.MustFail(t, c, types.ErrInvalidNetworkConfig); !strings.Contains(e.Msg, "ipam.ranges[0][0].subnet") {
			t.Errorf("%s: message %q does not name the subnet", subnet, e.Msg)
		}
	}
	if got := f.reserved(); len(got) != 2 {
		t.Fatalf("reserved %v, want only dyn's two addresses", got)
	}
}

// A rogue host on the pod's L2 segment already uses addresses from the range
// (a static config, a VM, another cluster's IPAM).
func TestConflictDetection(t *testing.T) {
	f := newFixture(t)
	node, rogue := f.env.NetNS("node"), f.env.NetNS("rogue")
	f.env.Veth(f.pod, "eth0", node, "vpod")
	f.env.Veth(rogue, "eth0", node, "vrogue")
	f.env.Bridge(node, "br0", "vpod", "vrogue")
	f.env.Addr(rogue, "eth0", "10.50.0.2/24")
	f.env.Addr(rogue, "eth0", "fd50::2/64")
	// Not /sys/class/net: nsenter keeps the machine's sysfs mount.
	rogueMAC := strings.Fields(strings.SplitN(rogue.Exec(t, "ip", "-o", "link", "show", "eth0"), "link/ether", 2)[1])[0]
	dual := map[string]any{"ranges": [][]map[string]any{{{"subnet": "10.50.0.0/24"}}, {{"subnet": "fd50::/64"}}}}

	res := f.add("c1", f.conf(dual, nil))
	if got := fmt.Sprint(addrs(res)); got != "[10.50.0.3/24 fd50::3/64]" {
		t.Fatalf("got %s; want the rogue's .2 and ::2 skipped", got)
	}
	for _, ip := range []string{"10.50.0.2", "fd50::2"} {
		if slices.Contains(f.reserved(), ip) {
			t.Errorf("%s, answered by the rogue, stayed reserved", ip)
		}
	}
	for _, ip := range []string{"10.50.0.2", "fd50::2"} {
		t.Run("fixed "+ip, func(t *testing.T) {
			before := f.reserved()
			e := f.ipam.MustFail(t, f.call("ADD", "c2", f.conf(dual, map[string]any{"runtimeConfig": map[string]any{"ips": []string{ip}}})), types.ErrTryAgainLater)
			if !strings.Contains(e.Msg, ip) || !strings.Contains(e.Msg, rogueMAC) {
				t.Errorf("message %q does not name %s and the rogue's MAC %s", e.Msg, ip, rogueMAC)
			}
			if after := f.reserved(); !slices.Equal(before, after) {
				t.Errorf("failed ADD left reservations: %v -> %v", before, after)
			}
		})
	}
	// A free fixed address passes the probe.
	ok := f.call("ADD", "c3", f.conf(dual, map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.50.0.77"}}}))
	if got := addrs(harness.ParseResult(t, f.ipam.MustSucceed(t, ok))); got[0] != "10.50.0.77/24" {
		t.Errorf("got %v", got)
	}
	// With the interface not there yet, the probe is skipped and said so.
	lonely := f.env.NetNS("lonely")
	c := f.call("ADD", "c4", f.conf(dual, nil))
	c.Netns = lonely.Path
	o, err := f.ipam.Exec(context.Background(), c)
	if err != nil || o.ExitCode != 0 || !strings.Contains(string(o.Stderr), "conflict detection skipped") {
		t.Errorf("ADD without the interface: %v %v", err, o)
	}
}
