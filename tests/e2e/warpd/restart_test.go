package warpd_test

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/tests/harness"
)

// restartDoc: web (pod1 and pod2, ClientIP affinity) never changes; chg (10.96.0.30) has chgPod as its backend; old (10.96.0.40)
// and new (10.96.0.50) exist when asked for.
func (c *cluster) restartDoc(chgPod string, old, new bool) string {
	svc := func(name, ip, pod string) string {
		return harness.ServiceYAML("default", name, ip, "TCP", 80, backendPort, c.podIPs[pod])
	}
	doc := c.webDoc(600, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
	doc += svc("chg", "10.96.0.30", chgPod)
	if old {
		doc += svc("old", "10.96.0.40", "pod1")
	}
	if new {
		doc += svc("new", "10.96.0.50", "pod2")
	}
	return doc
}

// affinityEntry is an entry of warpctl lb affinity --json.
type affinityEntry struct {
	ServiceID, BackendID uint32
	Backend              struct{ Addr string }
}

// webAffinity returns the client's affinity entry for the web service.
func (c *cluster) webAffinity() affinityEntry {
	c.t.Helper()
	svcs, err := servicelb.PinnedServices(c.bpffs)
	if err != nil {
		c.t.Fatal(err)
	}
	i := slices.IndexFunc(svcs, func(s servicelb.Service) bool { return s.Frontend == webFrontend })
	if i < 0 {
		c.t.Fatalf("no web frontend in %v", svcs)
	}
	out, err := c.warpctl("lb", "affinity", "--bpffs-root", c.bpffs, "--json")
	var entries []affinityEntry
	if err != nil || json.Unmarshal([]byte(out), &entries) != nil {
		c.t.Fatalf("warpctl lb affinity --json: %v %s", err, out)
	}
	for _, e := range entries {
		if e.ServiceID == svcs[i].ID {
			return e
		}
	}
	c.t.Fatalf("no affinity entry of service ID %d in %s", svcs[i].ID, out)
	return affinityEntry{}
}

// revNATEntry is an entry of warpctl lb revnat --json.
type revNATEntry struct {
	Frontend, Backend struct{ Addr string }
}

// revNAT returns the remembered translations of open sockets.
func (c *cluster) revNAT() []revNATEntry {
	c.t.Helper()
	out, err := c.warpctl("lb", "revnat", "--bpffs-root", c.bpffs, "--json")
	var entries []revNATEntry
	if err != nil || json.Unmarshal([]byte(out), &entries) != nil {
		c.t.Fatalf("warpctl lb revnat --json: %v %s", err, out)
	}
	return entries
}

// firstSync is the first "synced" log line of a warpd.
func firstSync(t *testing.T, out string) (upserted, deleted int) {
	for _, line := range strings.Split(out, "\n") {
		var l struct {
			Msg               string
			Upserted, Deleted int
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "synced" {
			return l.Upserted, l.Deleted
		}
	}
	t.Fatalf("no sync logged:\n%s", out)
	return 0, 0
}

// A new warpd adopts what the old one left: Services change while warpd is
// down (stopped by SIGTERM, or killed), the new warpd programs the new
// state changing only the stale entries (unchanged services keep their
// backend IDs, so a client's session affinity holds), and connections
// through the ClusterIP flow all along, none failing.
func TestRestartAdoption(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(strings.ToUpper(unix.SignalName(sig)), func(t *testing.T) { testRestartAdoption(t, mode, sig) })
		}
	})
}

func testRestartAdoption(t *testing.T, mode string, sig syscall.Signal) {
	c := newCluster(t, mode, "pod1", "pod2")
	c.apply(c.restartDoc("pod1", true, false))
	first := c.startWarpd()
	c.waitFrontend("10.96.0.40:80/tcp", func(b []string) bool { return len(b) == 1 })
	c.waitFrontend("10.96.0.30:80/tcp", func(b []string) bool { return len(b) == 1 && strings.HasPrefix(b[0], c.podIPs["pod1"]+":") })
	c.waitBackends(2)

	client := c.pods.StartClient(t, harness.Dials{Netns: c.clientPod.Path, Network: "tcp", Addr: clusterIP + ":80", Pause: 5 * time.Millisecond})
	atLeast := func(what string, n int) {
		t.Helper()
		harness.WaitFor(t, fmt.Sprintf("%d connections %s", n, what), time.Minute, func() bool { got, _ := client.Dials(); return got >= n })
	}
	atLeast("before the restart", 20)
	before := c.webAffinity()

	first.Process.Signal(sig)
	err := waitExit(t, first, 30*time.Second)
	switch {
	case sig == syscall.SIGTERM && err != nil:
		t.Fatalf("warpd after SIGTERM: %v\n%s", err, harness.Output(first))
	case sig == syscall.SIGTERM && !strings.Contains(harness.Output(first), "stopping; maps and programs stay pinned"):
		t.Fatalf("warpd did not say it stopped:\n%s", harness.Output(first))
	case sig == syscall.SIGKILL && err == nil:
		t.Fatal("warpd survived SIGKILL")
	}

	// While warpd is down: chg moves to pod2, old goes, new comes. The
	// maps stay as they were, and connections keep flowing.
	c.apply(c.restartDoc("pod2", false, true))
	down, _ := client.Dials()
	atLeast("while warpd is down", down+20)
	if svcs, _ := servicelb.PinnedServices(c.bpffs); !slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return s.Addr.String() == "10.96.0.40" }) {
		t.Fatalf("the maps changed while warpd was down: %v", svcs)
	}

	second := c.startWarpd()
	c.waitFrontend("10.96.0.30:80/tcp", func(b []string) bool { return len(b) == 1 && strings.HasPrefix(b[0], c.podIPs["pod2"]+":") })
	c.waitFrontend("10.96.0.50:80/tcp", func(b []string) bool { return len(b) == 1 })
	c.waitLB("old's frontend gone", func(svcs []servicelb.Service) bool {
		return !slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return s.Addr.String() == "10.96.0.40" })
	})
	if up, del := firstSync(t, harness.Output(second)); up != 2 || del != 1 {
		t.Fatalf("the new warpd's first sync upserted %d and deleted %d; want only the stale entries changed: chg and new (2), old (1)", up, del)
	}
	if after := c.webAffinity(); after.BackendID != before.BackendID || after.Backend.Addr == "" || after.Backend != before.Backend {
		t.Fatalf("web's affinity entry was %+v, is %+v: an unchanged service must keep its backend IDs", before, after)
	}

	up, _ := client.Dials()
	atLeast("after the restart", up+20)
	r := client.Stop(time.Minute)
	if failed := r.Failed(); len(failed) > 0 {
		t.Fatalf("%d of %d connections across the restart failed, first: %s", len(failed), len(r.Dials), failed[0].Err)
	}
	if servers := r.Servers(); len(servers) != 1 {
		t.Fatalf("answers %v: with ClientIP affinity and backend IDs kept, one client stays on one backend", servers)
	}
}

// SIGTERM during a long sync: warpd stops between two entries and exits at
// once, instead of finishing first; the next warpd finishes the job.
func TestSIGTERMDuringSync(t *testing.T) {
	c := newCluster(t, "file")
	const ports = 30000 // x2 protocols: 60000 frontends
	var doc strings.Builder
	doc.WriteString("apiVersion: v1\nkind: Service\nmetadata: {name: many, namespace: default}\nspec:\n  clusterIP: 10.96.1.1\n  ports:\n")
	for p := 1; p <= ports; p++ {
		fmt.Fprintf(&doc, "  - {name: t%d, port: %d, protocol: TCP}\n  - {name: u%d, port: %d, protocol: UDP}\n", p, p, p, p)
	}
	if err := os.WriteFile(c.file, []byte(doc.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Fixed sizes that hold it: the sync writes the pinned maps directly
	// (maps sized from the cluster would grow first, into new maps that
	// only appear once complete).
	warpd := c.startWarpd("--map-services=65536", "--map-backends=65536")
	c.waitLB("the sync to begin", func(svcs []servicelb.Service) bool { return len(svcs) > 0 })
	t.Logf("first frontends after %v", time.Since(start))
	warpd.Process.Signal(syscall.SIGTERM)
	termAt := time.Now()
	if err := waitExit(t, warpd, 30*time.Second); err != nil {
		t.Fatalf("warpd after SIGTERM: %v", err)
	}
	t.Logf("exited %v after SIGTERM", time.Since(termAt))
	svcs, _ := servicelb.PinnedServices(c.bpffs)
	t.Logf("%d of %d frontends programmed", len(svcs), 2*ports)
	if !strings.Contains(harness.Output(warpd), "shutdown interrupted a sync") {
		t.Fatalf("warpd did not stop the sync:\n%s", harness.Output(warpd))
	}
}
