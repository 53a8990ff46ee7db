package warpd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/tests/harness"
)

// manyDoc is n services svc-0..svc-n-1 (10.96.1.x, TCP 80) with backend
// the pod's address, after the web service.
func (c *cluster) manyDoc(n int, pod string) string {
	var b strings.Builder
	b.WriteString(c.webDoc(0, epState{pod, true, true, false}))
	for i := range n {
		b.WriteString(harness.ServiceYAML("default", fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.1.%d", i+1), "TCP", 80, backendPort, c.podIPs[pod]))
	}
	return b.String()
}

// syncLines returns warpd's "synced" log lines.
func syncLines(out string) []map[string]any {
	var lines []map[string]any
	for _, line := range strings.Split(out, "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) == nil && l["msg"] == "synced" {
			lines = append(lines, l)
		}
	}
	return lines
}

// Change tracking and coalescing: with 60 services programmed, ten
// EndpointSlice updates in a burst are applied in one or two syncs (the
// minimum sync interval coalesces them), each sync writes only the changed
// frontends (none reported unchanged: the others were not even compared),
// and warpd reads the maps again only at the full resync.
func TestIncrementalSyncCoalescesChanges(t *testing.T) {
	c := newCluster(t, "api", "pod1", "pod2")
	const n = 60
	c.apply(c.manyDoc(n, "pod1"))
	warpd := c.startWarpd("--min-sync-interval=5s", "--resync=10m")
	c.waitLB("every service", func(svcs []servicelb.Service) bool { return len(svcs) >= n+2 }) // and the API server's own
	before := metric(c.metrics(), "warpd_syncs_total")
	logged := len(syncLines(harness.Output(warpd)))

	client := c.api.Client(t)
	ctx := context.Background()
	for i := range 10 {
		api := client.DiscoveryV1().EndpointSlices("default")
		es, err := api.Get(ctx, fmt.Sprintf("svc-%d-1", i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		es.Endpoints[0].Addresses = []string{c.podIPs["pod2"]}
		if _, err := api.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	c.waitLB("the ten changes", func(svcs []servicelb.Service) bool {
		moved := 0
		for _, s := range svcs {
			if len(s.Backends) == 1 && s.Backends[0].Addr.String() == c.podIPs["pod2"] {
				moved++
			}
		}
		return moved == 10
	})
	syncs := metric(c.metrics(), "warpd_syncs_total") - before
	if syncs < 1 || syncs > 3 {
		t.Errorf("%v syncs for a burst of 10 changes within the 5s minimum interval; want 1 to 3", syncs)
	}
	upserted := 0
	for _, l := range syncLines(harness.Output(warpd))[logged:] {
		if l["full"] == true {
			t.Fatalf("a full sync ran during the burst: %v", l)
		}
		if l["unchanged"].(float64) != 0 || l["deleted"].(float64) != 0 {
			t.Errorf("an incremental sync compared or deleted other services: %v", l)
		}
		upserted += int(l["upserted"].(float64))
	}
	if upserted != 10 {
		t.Errorf("%d frontends written for 10 changed services", upserted)
	}
}

// A sync that removes several backends destroys their sockets in one pass
// (one load of the iterators, one walk of each namespace).
func TestOneDestroyPassForManyBackends(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2", "pod3")
	pods := []string{"pod1", "pod2", "pod3"}
	doc := func(backends bool) string {
		var b strings.Builder
		for i, p := range pods {
			var eps []string
			if backends {
				eps = []string{c.podIPs[p]}
			}
			b.WriteString(harness.ServiceYAML("default", "dns-"+p, fmt.Sprintf("10.96.0.%d", 81+i), "UDP", 53, backendPort, eps...))
		}
		return b.String()
	}
	c.apply(doc(true))
	c.startWarpd()
	c.waitLB("the three services", func(svcs []servicelb.Service) bool {
		return len(svcs) == 3 && !slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return len(s.Backends) != 1 })
	})
	var socks []*heldConn
	for i, p := range pods {
		s := c.hold(fmt.Sprintf("UDP:10.96.0.%d:53", 81+i))
		if got := s.exchange("q"); got != p {
			t.Fatalf("answered by %s, want %s", got, p)
		}
		socks = append(socks, s)
	}
	mfs := c.metrics()
	passes, destroyed := metric(mfs, "warpd_socket_destroy_passes_total"), metric(mfs, "warpd_destroyed_sockets_total")
	c.apply(doc(false))
	for _, s := range socks {
		s.waitDestroyed("a connected UDP socket to a removed backend")
	}
	// The sockets die inside the pass; it is counted once the pass has
	// walked every namespace.
	harness.WaitFor(t, "the destroy pass to be counted", 30*time.Second, func() bool {
		mfs = c.metrics()
		return metric(mfs, "warpd_socket_destroy_passes_total") > passes
	})
	if got := metric(mfs, "warpd_socket_destroy_passes_total") - passes; got != 1 {
		t.Errorf("%v destroy passes for one sync removing three backends, want 1", got)
	}
	if got := metric(mfs, "warpd_destroyed_sockets_total") - destroyed; got != 3 {
		t.Errorf("%v sockets destroyed, want 3", got)
	}
}

// Maps sized from the cluster grow when it needs more, by a rebuild under
// a stream of connects that sees no failure.
func TestMapsGrowWithZeroFailedConnects(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	c.writeServices("pod1")
	// Small pinned maps, as a warpd with fixed sizes leaves them.
	small := c.startWarpd("--map-services=16", "--map-backends=16")
	c.waitBackends(1)
	small.Process.Signal(syscall.SIGTERM)
	if err := waitExit(t, small, 30*time.Second); err != nil {
		t.Fatalf("warpd after SIGTERM: %v", err)
	}

	dir := filepath.Join(c.env.TempDir, "loop")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	progress := func() int {
		b, _ := os.ReadFile(filepath.Join(dir, "progress"))
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	done := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		loop := fmt.Sprintf(`ok=0; for i in $(seq 3000); do [ -e %[1]s/stop ] && break
			echo hi | socat -T2 - TCP:%[2]s:80 >/dev/null 2>&1 && ok=$((ok+1)) || echo FAIL $i
			echo $i > %[1]s/progress.new && mv %[1]s/progress.new %[1]s/progress; done; echo OK $ok`, dir, clusterIP)
		out, err := c.pods.Run(ctx, c.clientPod, "", "bash", "-c", loop)
		done <- fmt.Sprintf("%s %v", out, err)
	}()
	harness.WaitFor(t, "the client loop to connect", 20*time.Second, func() bool { return progress() >= 5 })

	// Sized from the cluster again: it adopts 16 and 16, then the
	// cluster needs 2 + 20 backend entries.
	warpd := c.startWarpd()
	c.apply(c.manyDoc(20, "pod1"))
	harness.WaitFor(t, "warpd to grow the maps and program every service", 60*time.Second, func() bool {
		lb, err := servicelb.OpenReadOnly(c.bpffs)
		if err != nil {
			return false
		}
		defer lb.Close()
		svcs, _ := lb.Services()
		return lb.Sizes().Backends > 16 && len(svcs) == 22
	})
	at := progress()
	harness.WaitFor(t, "more connects after the growth", 30*time.Second, func() bool { return progress() >= at+20 })
	os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644)
	out := <-done
	if strings.Contains(out, "FAIL") || !strings.Contains(out, "OK ") {
		t.Fatalf("connections across the growth: %s", out)
	}
	t.Logf("%s connects across the growth", strings.TrimSpace(out))
	if !strings.Contains(harness.Output(warpd), "growing the service maps") {
		t.Fatalf("no growth logged:\n%s", harness.Output(warpd))
	}
	if code, body := c.mustGet("/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s", code, body)
	}
}

// A map whose size is fixed by a flag and cannot hold the desired state is
// an error in the log (once, not at every retry), in warpd_map_full and in
// /healthz, naming the flag; it clears when the state fits again.
func TestMapFullIsReported(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	c.writeServices("pod1")
	warpd := c.startWarpd("--map-backends=4", "--resync=300ms")
	c.waitBackends(1)
	if code, body := c.mustGet("/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s", code, body)
	}
	c.apply(c.manyDoc(5, "pod1")) // 2 + 5 backend entries
	harness.WaitFor(t, "/healthz to report the full map", 30*time.Second, func() bool {
		code, body, err := c.get("/healthz")
		return err == nil && code == 503 && strings.Contains(body, "--map-backends is 4")
	})
	if got := metric(c.metrics(), "warpd_map_full", "map", "backends"); got != 1 {
		t.Errorf("warpd_map_full{map=backends} = %v", got)
	}
	// Several resyncs later, still one error line.
	syncs := metric(c.metrics(), "warpd_syncs_total")
	harness.WaitFor(t, "three more syncs", 30*time.Second, func() bool { return metric(c.metrics(), "warpd_syncs_total") >= syncs+3 })
	if n := logCount(warpd, "the service maps cannot hold the desired state"); n != 1 {
		t.Errorf("the full map was logged %d times, want once:\n%s", n, harness.Output(warpd))
	}
	c.writeServices("pod1")
	harness.WaitFor(t, "/healthz to recover", 30*time.Second, func() bool {
		code, _, err := c.get("/healthz")
		return err == nil && code == 200
	})
	if got := metric(c.metrics(), "warpd_map_full", "map", "backends"); got != 0 {
		t.Errorf("warpd_map_full{map=backends} = %v after the state fits again", got)
	}
	c.waitLog(warpd, "the service maps hold the desired state again", 0)
}
