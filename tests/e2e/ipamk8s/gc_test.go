package ipamk8s_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

const warpdListen = "127.0.0.1:9090" // inside the node's namespace

// gcFlags make the collector quick enough for a test: a grace of seconds
// and sweeps several times a second.
var gcFlags = []string{"--ipam-gc", "--ipam-gc-grace", "2s", "--ipam-gc-interval", "300ms"}

// warpd is warpd running on a node, in API server mode, with the leak
// collector on.
type warpd struct {
	n      *node
	cmd    *exec.Cmd
	http   *http.Client
	exited chan struct{}
}

func (n *node) startWarpd() *warpd {
	t := n.c.t
	t.Helper()
	harness.RequireTools(t, filepath.Join(harness.BinDir(), "warpd"))
	if n.bpffs == "" { // one per node: a restarted warpd adopts its pins
		n.bpffs, n.cgroup = n.c.env.BPFFS(), n.c.env.Cgroup("pods-"+n.name).Path
	}
	argv := append([]string{filepath.Join(harness.BinDir(), "warpd"), "--kubeconfig", n.kubeconfig, "--node-name", n.name,
		"--node-ip", "10.0.0.1", "--cgroup-root", n.cgroup, "--bpffs-root", n.bpffs,
		"--routing", "none", "--listen", warpdListen, "--pod-facts", n.podFacts}, gcFlags...)
	w := &warpd{n: n, cmd: n.ns.Start(t, argv...), exited: make(chan struct{})}
	go func() { _ = w.cmd.Wait(); close(w.exited) }()
	// Reaped here, so stop it here too, before the harness's cleanup
	// (which would wait for it a second time).
	t.Cleanup(func() {
		_ = w.cmd.Process.Kill()
		select {
		case <-w.exited:
		case <-time.After(30 * time.Second):
			t.Errorf("warpd on %s did not exit within 30s of SIGKILL", n.name)
		}
	})
	w.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = n.ns.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}}
	harness.WaitFor(t, "warpd on "+n.name+" to serve /metrics", 60*time.Second, func() bool {
		_, err := w.metrics()
		return err == nil || w.done()
	})
	if w.done() {
		t.Fatalf("warpd on %s exited: %s", n.name, harness.Output(w.cmd))
	}
	return w
}

// stop stops warpd with SIGTERM (it releases the Lease) and waits.
func (w *warpd) stop() {
	w.n.c.t.Helper()
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		w.n.c.t.Fatalf("warpd on %s did not stop within 30s of SIGTERM", w.n.name)
	}
}

func (w *warpd) done() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

func (w *warpd) metrics() (map[string]*dto.MetricFamily, error) {
	resp, err := w.http.Get("http://" + warpdListen + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(string(body)))
}

// metric is a gauge's or counter's value (-1 if unreadable).
func (w *warpd) metric(name string) float64 {
	mfs, err := w.metrics()
	if err != nil || mfs[name] == nil || len(mfs[name].Metric) == 0 {
		return -1
	}
	m := mfs[name].Metric[0]
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// waitSweeps waits until n more sweeps than now have run.
func (w *warpd) waitSweeps(n int) {
	w.n.c.t.Helper()
	target := w.metric("warpd_ipam_gc_sweeps_total") + float64(n)
	harness.WaitFor(w.n.c.t, fmt.Sprintf("%d more sweeps on %s", n, w.n.name), 60*time.Second, func() bool {
		return w.metric("warpd_ipam_gc_sweeps_total") >= target
	})
}

func (c *cluster) waitGone(what, addr string) {
	c.t.Helper()
	harness.WaitFor(c.t, what, 60*time.Second, func() bool {
		_, ok := c.allocations()[addr]
		return !ok
	})
}

func (c *cluster) mustHold(addrs ...string) {
	c.t.Helper()
	got := c.allocations()
	for _, a := range addrs {
		if _, ok := got[a]; !ok {
			c.t.Errorf("%s was released, but it is in use (or pinned)", a)
		}
	}
}

// warpd's collector releases what is leaked and nothing else: a pod gone
// without DEL loses its address after the grace period; a live pod keeps
// its address, also a pod recreated under the same name (both
// incarnations' addresses stay until the node's CNI GC, which knows the
// live sandbox, frees the old one); a StatefulSet's addresses stay while
// it needs them and go on scale-down past the ordinal and on deletion.
func TestLeakCollection(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	c.pool("p", kube.IPPoolSpec{Subnet: "10.85.0.0/24"})
	conf := n.conf(map[string]any{"pool": "p"})
	live := c.createPod("default", "live", "node1", nil)
	gone := c.createPod("default", "gone", "node1", nil)
	liveAddr := ips(n.add("live", "net1", live, conf))[0]
	goneAddr := ips(n.add("gone", "net1", gone, conf))[0]
	same := c.createPod("default", "same", "node1", nil)
	oldAddr := ips(n.add("same-old", "net1", same, conf))[0]
	c.deletePod(same)
	same2 := c.createPod("default", "same", "node1", nil)
	newAddr := ips(n.add("same-new", "net1", same2, conf))[0]
	owner := c.statefulSet("default", "db", 2)
	var dbAddr []string
	for i := 0; i < 2; i++ {
		p := c.createPod("default", fmt.Sprintf("db-%d", i), "node1", nil, owner)
		dbAddr = append(dbAddr, ips(n.add(p.Name, "net1", p, conf))[0])
		c.deletePod(p) // the node lost them: no DEL
	}

	w := n.startWarpd()
	harness.WaitFor(t, "warpd to lead the collection", 60*time.Second, func() bool { return w.metric("warpd_ipam_gc_leader") == 1 })
	c.deletePod(gone)
	c.waitGone("the address of the deleted pod to be released", goneAddr)
	// Several sweeps past the grace period later, the rest is still held.
	w.waitSweeps(10)
	c.mustHold(liveAddr, oldAddr, newAddr, dbAddr[0], dbAddr[1])
	if got := w.metric("warpd_ipam_gc_released_total"); got != 1 {
		t.Errorf("released %v addresses, want 1", got)
	}

	// The node's CNI GC, which knows the live sandbox, frees the old
	// incarnation's address.
	gc := gcConf(t, n, map[string]any{"pool": "p"}, "live", "same-new")
	n.ipam.MustSucceed(t, harness.Call{Command: "GC", Config: gc})
	c.mustHold(liveAddr, newAddr, dbAddr[0], dbAddr[1])
	if _, ok := c.allocations()[oldAddr]; ok {
		t.Errorf("CNI GC kept %s of the old incarnation's sandbox", oldAddr)
	}

	c.scaleStatefulSet("default", "db", 1)
	c.waitGone("db-1's pinned address after scale-down", dbAddr[1])
	w.waitSweeps(10)
	c.mustHold(liveAddr, newAddr, dbAddr[0])
	if err := c.k8s.AppsV1().StatefulSets("default").Delete(c.ctx(), "db", deleteNow); err != nil {
		t.Fatal(err)
	}
	c.waitGone("db-0's pinned address after the StatefulSet's deletion", dbAddr[0])
	w.waitSweeps(5)
	c.mustHold(liveAddr, newAddr)
}

// Pods deleted while warpd is down (no DEL: their node died too) are
// released once it is back; with two warpds only one collects, and when it
// stops the other takes over.
func TestLeakCollectionAcrossWarpdRestartsAndFailover(t *testing.T) {
	c := newCluster(t, "node1", "node2")
	n1, n2 := c.nodes["node1"], c.nodes["node2"]
	c.pool("p", kube.IPPoolSpec{Subnet: "10.86.0.0/24"})
	w1 := n1.startWarpd()
	harness.WaitFor(t, "warpd on node1 to lead", 60*time.Second, func() bool { return w1.metric("warpd_ipam_gc_leader") == 1 })
	w2 := n2.startWarpd()
	w2.waitSweeps(0)
	w1.waitSweeps(5)
	if got := w2.metric("warpd_ipam_gc_leader"); got != 0 {
		t.Fatalf("warpd on node2 leads too (%v): two collectors in one cluster", got)
	}
	if got := w2.metric("warpd_ipam_gc_sweeps_total"); got != 0 {
		t.Fatalf("the standby swept %v times", got)
	}

	w1.stop()
	harness.WaitFor(t, "warpd on node2 to take over", 60*time.Second, func() bool { return w2.metric("warpd_ipam_gc_leader") == 1 })
	w2.stop()
	var addrs []string
	for i := 0; i < 3; i++ {
		p := c.createPod("default", fmt.Sprintf("p%d", i), "node1", nil)
		addrs = append(addrs, ips(n1.add(p.Name, "net1", p, n1.conf(map[string]any{"pool": "p"})))[0])
		c.deletePod(p)
	}
	w1 = n1.startWarpd()
	for _, a := range addrs {
		c.waitGone("addresses of pods deleted while no warpd ran", a)
	}
}

// The API server goes away for a while: sweeps fail and are retried,
// nothing in use is released on a guess, and collection resumes after.
func TestLeakCollectionAPIServerOutage(t *testing.T) {
	c := newCluster(t, "node1")
	n := c.nodes["node1"]
	c.pool("p", kube.IPPoolSpec{Subnet: "10.87.0.0/24"})
	conf := n.conf(map[string]any{"pool": "p"})
	live := c.createPod("default", "live", "node1", nil)
	gone := c.createPod("default", "gone", "node1", nil)
	liveAddr := ips(n.add("live", "net1", live, conf))[0]
	goneAddr := ips(n.add("gone", "net1", gone, conf))[0]
	w := n.startWarpd()
	harness.WaitFor(t, "warpd to lead", 60*time.Second, func() bool { return w.metric("warpd_ipam_gc_leader") == 1 })
	w.waitSweeps(3)

	c.api.Stop(t)
	errs := w.metric("warpd_ipam_gc_errors_total")
	harness.WaitFor(t, "sweeps to fail while the API server is down", 60*time.Second, func() bool {
		return w.metric("warpd_ipam_gc_errors_total") > errs
	})
	c.api.Restart(t)
	c.deletePod(gone)
	c.waitGone("the deleted pod's address after the outage", goneAddr)
	w.waitSweeps(10)
	c.mustHold(liveAddr)
}
