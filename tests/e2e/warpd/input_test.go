package warpd_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/status"
	"github.com/warpnet/warpnet/tests/harness"
)

// An in-place rewrite of the services file (as `kubectl get -o yaml >
// file` or an editor does it: truncate, a moment empty, then written) is
// never read as "no services": a client connecting through the ClusterIP
// all along sees no failure. An empty file keeps the last good state too;
// an explicit empty List removes every service.
func TestServicesFileRewrites(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	good, err := os.ReadFile(c.file)
	if err != nil {
		t.Fatal(err)
	}
	c.startWarpd()
	c.waitBackends(2)

	client := c.pods.StartClient(t, harness.Dials{Netns: c.clientPod.Path, Network: "tcp", Addr: clusterIP + ":80", Pause: 2 * time.Millisecond})
	for i := 0; i < 150; i++ {
		f, err := os.OpenFile(c.file, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the writer is slow to start: the file is empty meanwhile
		f.Write(good[:len(good)/2])
		f.Write(good[len(good)/2:])
		f.Close()
	}
	r := client.Stop(time.Minute)
	if failed := r.Failed(); len(failed) > 0 || len(r.Dials) < 100 {
		t.Fatalf("%d of %d connections failed during 150 in-place rewrites (want 0 of at least 100)", len(failed), len(r.Dials))
	}

	t.Run("an empty file keeps the last good state", func(t *testing.T) {
		c.apply("")
		st := c.waitStatus("warpd to report the empty file", func(st status.Status) bool { return strings.Contains(st.SourceProblem, "holds no object") })
		if st.Healthy {
			t.Fatalf("healthy with an unusable source: %+v", st)
		}
		if code, body := c.mustGet("/healthz"); code != 503 || !strings.Contains(body, "services source unusable") {
			t.Fatalf("/healthz %d %s", code, body)
		}
		if seen := c.answeredBy("tcp", "80", 4); seen["pod1"]+seen["pod2"] != 4 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("an empty List removes every service", func(t *testing.T) {
		c.apply("apiVersion: v1\nkind: List\nitems: []\n")
		c.waitLB("no services", func(svcs []servicelb.Service) bool { return len(svcs) == 0 })
		st := c.waitStatus("warpd to be healthy", func(st status.Status) bool { return st.Healthy })
		if st.SourceProblem != "" || len(st.Rejected) != 0 {
			t.Fatalf("status %+v", st)
		}
	})
}

// An object that fails warpd's checks is a broken edit: its last valid
// version stays in force, the other objects (and the other changes of the
// same edit) are applied, and it is logged, counted in
// warpd_rejected_objects and listed by warpctl warpd status with the field
// and the reason. The API server accepts these objects: in its default,
// non-strict mode IPv4 addresses with leading zeros pass (ambiguous: octal
// or decimal?).
func TestInvalidObjectsKeepLastGoodState(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		c := newCluster(t, mode, "pod1", "pod2")
		// service is a Service without endpoints: a load balancer's when
		// ingress is set; only a file can hold the invalid ones the API
		// server refuses (typo's clusterIP).
		service := func(name, clusterIP, ingress string) string {
			d := fmt.Sprintf("---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: default}\n"+
				"spec: {type: LoadBalancer, clusterIP: %s, ports: [{name: http, port: 80, protocol: TCP}]}\n", name, clusterIP)
			if ingress == "" {
				return strings.Replace(d, "type: LoadBalancer, ", "", 1)
			}
			return d + fmt.Sprintf("status: {loadBalancer: {ingress: [{ip: %s}]}}\n", ingress)
		}
		doc := func(webExtra, lbIP, freshIP, apiPod, typoIP string) string {
			d := harness.ServiceYAML("default", "web", clusterIP, "TCP", 80, backendPort, c.podIPs["pod1"], webExtra) +
				harness.ServiceYAML("default", "api", "10.96.0.20", "TCP", 80, backendPort, c.podIPs[apiPod]) +
				service("lb", "10.96.0.30", lbIP)
			if freshIP != "" {
				d += service("fresh", "10.96.0.40", freshIP)
			}
			if mode == "file" {
				d += service("typo", typoIP, "")
			}
			return d
		}
		c.apply(doc(c.podIPs["pod2"], "10.0.0.50", "", "pod1", "10.96.0.50"))
		warpd := c.startWarpd()
		c.waitBackends(2)
		c.waitFrontend("10.0.0.50:80/tcp", func([]string) bool { return true })
		if mode == "file" {
			c.waitFrontend("10.96.0.50:80/tcp", func([]string) bool { return true })
		}
		if mode == "api" {
			// Through the API server a Service's spec and its status are
			// two writes, which a sync may see together (coalesced, or in
			// one informer pass): fresh exists validly first, programmed,
			// so its last valid version is known.
			c.apply(doc(c.podIPs["pod2"], "10.0.0.50", "", "pod1", "10.96.0.50") + service("fresh", "10.96.0.40", ""))
			c.waitFrontend("10.96.0.40:80/tcp", func([]string) bool { return true })
		}

		// The broken edit: web's slice gets an ambiguous address, lb's
		// ingress IP one too, a new service arrives broken, typo's
		// clusterIP is out of range; and api moves to pod2, validly.
		c.apply(doc("10.244.001.002", "10.0.0.050", "10.0.0.060", "pod2", "10.96.0.999"))
		c.waitFrontend("10.96.0.20:80/tcp", func(b []string) bool { return len(b) == 1 && strings.HasPrefix(b[0], c.podIPs["pod2"]+":") })
		c.waitBackends(2) // web: its last good slice
		svcs, _ := servicelb.PinnedServices(c.bpffs)
		has := func(fe string) bool {
			return slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return s.Frontend.String() == fe })
		}
		// Through the API server, fresh was valid before (above): that
		// version is kept. From a file it arrives broken.
		freshKept := mode == "api"
		if !has("10.0.0.50:80/tcp") || has("10.0.0.60:80/tcp") || has("10.96.0.40:80/tcp") != freshKept || (mode == "file" && !has("10.96.0.50:80/tcp")) {
			t.Fatalf("want lb's and typo's last good frontends kept, fresh's ingress IP not: %v", svcs)
		}
		if seen := c.answeredBy("tcp", "80", 20); seen["pod1"] == 0 || seen["pod2"] == 0 {
			t.Fatalf("web must keep both backends: %v", seen)
		}

		wantSvcs := 2.0 // lb, fresh
		if mode == "file" {
			wantSvcs = 3 // typo
		}
		var mfs = c.metrics()
		harness.WaitFor(t, "the rejections to be counted", 20*time.Second, func() bool {
			mfs = c.metrics()
			return metric(mfs, "warpd_rejected_objects", "kind", "Service") == wantSvcs
		})
		if n := metric(mfs, "warpd_rejected_objects", "kind", "EndpointSlice"); n != 1 {
			t.Fatalf("warpd_rejected_objects{kind=EndpointSlice} = %v", n)
		}
		if code, body := c.mustGet("/healthz"); code != 200 {
			t.Fatalf("/healthz %d %s: rejected objects do not make warpd unhealthy; the rest is served", code, body)
		}
		out, err := c.warpctl("warpd", "status", "--addr", listen)
		out = squash(out)
		for _, want := range []string{
			"EndpointSlice default/web-1 last valid version",
			`endpoints[1].addresses[0]: "10.244.001.002" is not a valid IP address (IPv4 field has octet with leading zero)`,
			"Service default/lb last valid version",
			`status.loadBalancer.ingress[0].ip: "10.0.0.050"`,
			map[bool]string{false: "Service default/fresh nothing", true: "Service default/fresh last valid version"}[freshKept],
		} {
			if err != nil || !strings.Contains(out, want) {
				t.Errorf("warpctl warpd status lacks %q: %v\n%s", want, err, out)
			}
		}
		if mode == "file" && !strings.Contains(out, `spec.clusterIP: "10.96.0.999" is not a valid IP address`) {
			t.Errorf("warpctl warpd status lacks typo's reason:\n%s", out)
		}
		if n := logCount(warpd, "rejected an invalid object"); n < int(wantSvcs)+1 {
			t.Errorf("%d rejections logged:\n%s", n, harness.Output(warpd))
		}

		t.Run("fixed, they are applied", func(t *testing.T) {
			c.apply(doc(c.podIPs["pod2"], "10.0.0.51", "10.0.0.61", "pod2", "10.96.0.51"))
			c.waitFrontend("10.0.0.51:80/tcp", func([]string) bool { return true })
			c.waitFrontend("10.0.0.61:80/tcp", func([]string) bool { return true })
			st := c.waitStatus("no rejected objects", func(st status.Status) bool { return len(st.Rejected) == 0 })
			if !st.Healthy {
				t.Fatalf("status %+v", st)
			}
			if mfs := c.metrics(); metric(mfs, "warpd_rejected_objects", "kind", "Service") != 0 {
				t.Fatal("warpd_rejected_objects not back to 0")
			}
		})
	})
}

// Duplicate (port, protocol) pairs in one Service are rejected (as the API
// server does), two services claiming one frontend program it once, and
// the metrics count what is in the maps.
func TestDuplicatesAndMetricsAgreeWithMaps(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2")
	ext := func(name, ip string) string {
		return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %s, namespace: default}
spec: {clusterIP: %s, externalIPs: [10.0.0.1], ports: [{name: p, port: 8081, protocol: TCP}]}
`, name, ip)
	}
	c.writeServices("pod1", "pod2")
	web, _ := os.ReadFile(c.file)
	c.apply(string(web) + `
---
apiVersion: v1
kind: Service
metadata: {name: dup, namespace: default}
spec:
  clusterIP: 10.96.0.60
  ports: [{name: a, port: 80, protocol: TCP}, {name: b, port: 80, protocol: TCP}, {name: c, port: 81, protocol: TCP}]
` + ext("x1", "10.96.0.61") + ext("x2", "10.96.0.62"))
	c.startWarpd()
	c.waitBackends(2)
	st := c.waitStatus("the rejections", func(st status.Status) bool { return len(st.Rejected) == 2 })
	if r := st.Rejected[0]; r.Name != "dup" || !strings.Contains(r.Reason, "spec.ports[1]: duplicate port 80/TCP (also spec.ports[0])") {
		t.Errorf("rejected %+v", r)
	}
	if r := st.Rejected[1]; r.Name != "x2" || !strings.Contains(r.Reason, "frontend 10.0.0.1:8081/tcp is already default/x1:p/tcp's") {
		t.Errorf("rejected %+v", r)
	}
	svcs, err := servicelb.PinnedServices(c.bpffs)
	if err != nil {
		t.Fatal(err)
	}
	backends := 0
	for _, s := range svcs {
		backends += len(s.Backends)
		if s.Addr.String() == "10.96.0.60" {
			t.Errorf("dup's frontend %v is programmed", s.Frontend)
		}
	}
	mfs := c.metrics()
	if got := metric(mfs, "warpd_services"); got != float64(len(svcs)) {
		t.Errorf("warpd_services %v, the maps hold %d frontends", got, len(svcs))
	}
	if got := metric(mfs, "warpd_backends"); got != float64(backends) {
		t.Errorf("warpd_backends %v, the maps hold %d", got, backends)
	}
	if got, want := metric(mfs, "warpd_map_fill_ratio", "map", "services"), float64(len(svcs))/float64(servicelb.DefaultSizes.Services); got != want {
		t.Errorf("warpd_map_fill_ratio{map=services} %v, want %v", got, want)
	}
	for _, m := range st.Maps {
		if m.Map == "services" && m.Used != len(svcs) {
			t.Errorf("status: %+v, the maps hold %d frontends", m, len(svcs))
		}
	}
}

// warpd's health, metrics and status; /healthz is 503 while the source is
// unusable, and 200 again once it is fixed.
func TestHealthAndMetrics(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	c.apply("apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {clusterIP: [}\n")
	c.startWarpd()
	if code, body := c.mustGet("/healthz"); code != 503 || !strings.Contains(body, "services source unusable") {
		t.Fatalf("/healthz with a broken file from the start: %d %s", code, body)
	}
	if st := c.status(); st.Healthy || st.LastSync != nil || !strings.Contains(st.SourceProblem, "document 1") {
		t.Fatalf("status %+v", st)
	}
	c.writeServices("pod1")
	c.waitBackends(1)
	c.waitStatus("warpd to be healthy", func(st status.Status) bool { return st.Healthy })
	if code, body := c.mustGet("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	mfs := c.metrics()
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"warpd_services", nil, 2}, {"warpd_backends", nil, 2}, {"warpd_sync_errors_total", nil, 0},
		{"warpd_map_fill_ratio", []string{"map", "services"}, 2.0 / 65536}, {"warpd_source_healthy", nil, 1},
		{"warpd_rejected_objects", []string{"kind", "Service"}, 0},
	} {
		if got := metric(mfs, m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	for _, name := range []string{"warpd_syncs_total", "warpd_sync_duration_seconds", "warpd_last_successful_sync_timestamp_seconds", "go_goroutines", "process_open_fds"} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	out, err := c.warpctl("warpd", "status", "--addr", listen)
	if out := squash(out); err != nil || !strings.Contains(out, "health: ok") || !strings.Contains(out, "map services: 2 of 65536") ||
		!strings.Contains(out, "rejected objects: none") || !strings.Contains(out, "source: file "+c.file) {
		t.Fatalf("warpctl warpd status: %v\n%s", err, out)
	}
}

// Before the first sync (the API server cannot be reached), /healthz is
// 503; once the API server answers, 200.
func TestHealthzBeforeFirstSync(t *testing.T) {
	c := newCluster(t, "api", "pod1")
	c.writeServices("pod1")
	c.api.Stop(t)
	c.startWarpd()
	if code, body := c.mustGet("/healthz"); code != 503 || !strings.Contains(body, "not synced yet") {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	c.api.Restart(t)
	c.waitBackends(1)
	c.waitStatus("warpd to be healthy", func(st status.Status) bool { return st.Healthy })
}

// A listener nobody can reach (warpd's address on a loopback that is down)
// is said loudly at start, instead of failing health checks silently.
func TestUnreachableListenerIsLogged(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	c.writeServices("pod1")
	c.node.Exec(t, "ip", "link", "set", "lo", "down")
	warpd := c.node.Start(t, c.warpd...)
	c.waitBackends(1)
	c.waitLog(warpd, "listener cannot be reached", 0)
	if !strings.Contains(harness.Output(warpd), "ip link set lo up") {
		t.Fatalf("the log does not say what to do:\n%s", harness.Output(warpd))
	}
}

// squash collapses runs of white space (table padding) to one space.
func squash(s string) string { return strings.Join(strings.Fields(s), " ") }
