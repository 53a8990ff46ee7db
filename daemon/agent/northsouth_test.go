package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/daemon/nodeport"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/internal/atomicfile"
	"github.com/warpnet/warpnet/tests/harness"
)

// nsServices is a services file of n NodePort services (a TCP and a UDP
// port, IPv4 and IPv6: four north-south services each) with backends on
// node n1 and n2, and one LoadBalancer service with externalTrafficPolicy
// Local and healthCheckNodePort hc whose backends are on localOn.
// backends[i], if set, replaces the IPv4 backend of svc-i.
func nsServices(n int, backends map[int]string, hc int, localOn string) string {
	var b strings.Builder
	svc := func(name, typ, extra string, ip int, nodePortTCP, nodePortUDP int, ep4, ep6, epNode string) {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default}
spec:
  type: %[2]s
  clusterIP: 10.96.%[3]d.%[4]d
  clusterIPs: [10.96.%[3]d.%[4]d, "fd00:96::%[3]d:%[4]d"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack%[5]s
  ports: [{name: tcp, port: 80, protocol: TCP, targetPort: 8080, nodePort: %[6]d}, {name: udp, port: 53, protocol: UDP, targetPort: 8080, nodePort: %[7]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-v4, namespace: default, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]
endpoints: [{addresses: [%[8]s], nodeName: %[10]s, conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-v6, namespace: default, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv6
ports: [{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]
endpoints: [{addresses: ["%[9]s"], nodeName: %[10]s, conditions: {ready: true}}]
`, name, typ, ip/200+1, ip%200+1, extra, nodePortTCP, nodePortUDP, ep4, ep6, epNode)
	}
	for i := range n {
		ep := fmt.Sprintf("10.244.1.%d", i%200+1)
		if be, ok := backends[i]; ok {
			ep = be
		}
		svc(fmt.Sprintf("svc-%d", i), "NodePort", "", i, 30000+i, 31000+i, ep, fmt.Sprintf("fd00:10:244:1::%x", i+1), []string{"n1", "n2"}[i%2])
	}
	svc("local", "LoadBalancer", fmt.Sprintf("\n  externalTrafficPolicy: Local\n  healthCheckNodePort: %d", hc), 250, 32000, 32001,
		"10.244.2.1", "fd00:10:244:2::1", localOn)
	return b.String()
}

// syncedLine is warpd's "north-south synced" log line.
type syncedLine struct {
	Msg                                   string
	Services, Compared, Upserted, Deleted int
	Full                                  bool
}

// nsSynced returns the "north-south synced" lines of warpd's JSON log
// after the first from lines.
func nsSynced(logs *harness.OutputBuffer, from int) []syncedLine {
	var out []syncedLine
	for _, line := range strings.Split(logs.String(), "\n") {
		var s syncedLine
		if json.Unmarshal([]byte(line), &s) == nil && s.Msg == "north-south synced" {
			out = append(out, s)
		}
	}
	return out[min(from, len(out)):]
}

// A change to one service makes the north-south load balancer compare and
// write that service's north-south services only, not the cluster's (the
// tracker's changed frontends, as the socket LB's incremental sync): with
// 200 services programmed, an EndpointSlice update compares the 2 of its
// family, a removed service its 4, and the maps still equal what a full
// pass computes from every entry. The health check port follows a change
// of its service's endpoints alone. A full resync compares everything and
// finds nothing to write.
func TestNorthSouthSyncIsIncremental(t *testing.T) {
	env := harness.New(t)
	node, peer := env.NetNS("node"), env.NetNS("peer")
	env.Veth(node, "eth0", peer, "eth0")
	node.Exec(t, "ip", "addr", "add", "192.168.1.10/24", "dev", "eth0")
	node.Exec(t, "ip", "addr", "add", "fd00::10/64", "dev", "eth0", "nodad")
	const n, hc = 50, 32100
	file := filepath.Join(env.TempDir, "services.yaml")
	write := func(doc string) {
		t.Helper()
		// replaced at once: the source must never see it half-written
		if _, err := atomicfile.Write(file, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(nsServices(n, nil, hc, "n1"))
	var logs harness.OutputBuffer
	cfg := Config{ServicesFile: file, Poll: 20 * time.Millisecond, CgroupRoot: env.Cgroup("pods").Path, BPFFSRoot: env.BPFFS(),
		Node:       services.Node{Name: "n1", Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("fd00::10")}},
		NorthSouth: &nodeport.Config{Attach: nodeport.AttachTC}}
	ctx := t.Context()
	var a *Agent
	// Everything that touches links or listens runs in the node's namespace.
	in := func(fn func() error) {
		t.Helper()
		if err := node.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
	in(func() (err error) {
		if a, err = New(cfg, slog.New(slog.NewJSONHandler(&logs, nil))); err != nil {
			return err
		}
		return a.src.Start(ctx)
	})
	t.Cleanup(func() { a.closeNorthSouth(); a.lb.Close() })
	// read waits for the source to read the file (again).
	read := func(what string) {
		t.Helper()
		select {
		case <-a.src.Changes():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the services file source saw no change", what)
		}
	}
	// step waits for the file's change (if any), syncs, and returns the
	// north-south line it logged.
	seen := 0
	step := func(what string, full bool) syncedLine {
		t.Helper()
		if !full {
			read(what)
		}
		in(func() error { a.sync(ctx, full); return nil })
		lines := nsSynced(&logs, seen)
		seen += len(lines)
		if len(lines) != 1 {
			t.Fatalf("%s: %d north-south sync lines, want 1: %+v\n%s", what, len(lines), lines, logs.String())
		}
		// what the maps hold is what a full pass computes from every entry
		want := nodeport.Desired(a.tracker.Entries(), nodeport.SNAT, 0)
		got, err := a.ns.LB().Services()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: the maps hold %d north-south services, the desired state has %d", what, len(got), len(want))
		}
		for i := range want {
			if !nodeport.Same(got[i], want[i]) {
				t.Fatalf("%s: the maps hold %+v, want %+v", what, got[i], want[i])
			}
		}
		t.Logf("%s: %+v", what, lines[0])
		return lines[0]
	}
	health := func() int {
		t.Helper()
		code, _, err := harness.HTTPGet(node.Do, fmt.Sprintf("192.168.1.10:%d", hc), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	read("the first read")

	all := 4 * (n + 1)
	if l := step("first sync", true); l.Compared != all || l.Upserted != all || l.Services != all {
		t.Errorf("first sync: %+v, want all %d north-south services compared and written", l, all)
	}
	if code := health(); code != http.StatusOK {
		t.Errorf("health check with a local endpoint: %d, want 200", code)
	}

	write(nsServices(n, map[int]string{7: "10.244.3.7"}, hc, "n1"))
	if l := step("svc-7's IPv4 backend changed", false); l.Compared != 2 || l.Upserted != 2 || l.Deleted != 0 {
		t.Errorf("one changed EndpointSlice: %+v, want its 2 IPv4 services (TCP, UDP) compared and written, nothing else", l)
	}

	write(strings.Replace(nsServices(n, map[int]string{7: "10.244.3.7"}, hc, "n1"), "name: svc-3,", "name: svc-3-renamed,", 1))
	if l := step("svc-3 replaced by another service", false); l.Compared != 8 || l.Upserted != 4 || l.Deleted != 4 {
		t.Errorf("one service removed and one added: %+v, want their 8 services compared, 4 written and 4 deleted", l)
	}

	write(strings.Replace(nsServices(n, map[int]string{7: "10.244.3.7"}, hc, "n2"), "name: svc-3,", "name: svc-3-renamed,", 1))
	if l := step("the Local service's endpoints moved to another node", false); l.Compared != 4 || l.Upserted != 4 {
		t.Errorf("the Local service lost its local endpoints: %+v, want its 4 services compared and written", l)
	}
	if code := health(); code != http.StatusServiceUnavailable {
		t.Errorf("health check without a local endpoint: %d, want 503", code)
	}

	// A resync compares everything (with the maps themselves), and finds
	// nothing to write: the incremental syncs left nothing behind. It
	// logs no "synced" line then; the maps are checked all the same.
	in(func() error { a.sync(ctx, true); return nil })
	if lines := nsSynced(&logs, seen); len(lines) != 0 {
		t.Errorf("a resync after incremental syncs wrote something: %+v", lines)
	}
	got, err := a.ns.LB().Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != all {
		t.Errorf("after the resync the maps hold %d services, want %d", len(got), all)
	}
}
