// Package warpd_test runs the built bin/warpd on a simulated node (a network
// namespace), from a services file and from a real API server, with
// warp-veth pods as backends and clients, and checks ClusterIP translation
// with real sockets from inside the pods, and warpd's health, metrics,
// status, restarts and handling of bad input.
package warpd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/status"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// Clients are this binary re-executed in the pods' cgroup (harness.Main).
func TestMain(m *testing.M) { harness.Main(m) }

const (
	clusterIP   = "10.96.0.10"
	backendPort = 8080
	// listen is warpd's --listen inside the node's namespace.
	listen = "127.0.0.1:9090"
)

type cluster struct {
	t         *testing.T
	env       *harness.Env
	node      *harness.NetNS
	pods      *harness.Cgroup // the node's pod cgroup: warpd translates its sockets
	bpffs     string
	file      string
	podIPs    map[string]string // pod name -> IPv4
	podIPs6   map[string]string // pod name -> IPv6
	podNS     map[string]*harness.NetNS
	clientPod *harness.NetNS
	warpd     []string     // argv
	http      *http.Client // dials inside the node's namespace

	// mode is how warpd learns the services: "file" (--services-file) or
	// "api" (--kubeconfig, a real kube-apiserver); apply feeds both.
	mode string
	api  *apiserver.Server
}

// modes are the two services sources every warpd test runs against.
var modes = []string{"file", "api"}

// forEachMode runs test as a subtest per mode.
func forEachMode(t *testing.T, test func(t *testing.T, mode string)) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { test(t, mode) })
	}
}

func newCluster(t *testing.T, mode string, backends ...string) *cluster {
	harness.RequireTools(t, "socat", filepath.Join(harness.BinDir(), "warpd"))
	env := harness.New(t)
	c := &cluster{t: t, env: env, node: env.NetNS("node"), pods: env.Cgroup("pods"), bpffs: env.BPFFS(), mode: mode,
		file: filepath.Join(env.TempDir, "services.yaml"), podIPs: map[string]string{}, podIPs6: map[string]string{}, podNS: map[string]*harness.NetNS{}}
	veth := env.Plugin(t, "warp-veth").In(c.node)
	conf := harness.ConfigJSON(t, harness.NetConf("pods", "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"ipam": map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(env.TempDir, "ipam"), "detectConflicts": false,
			"ranges": [][]map[string]any{{{"subnet": "10.244.1.0/24"}}, {{"subnet": "fd00:244:1::/64"}}}}}))
	for _, name := range append(backends, "client") {
		pod := env.NetNS(name)
		res := harness.ParseResult(t, veth.MustSucceed(t, harness.Call{Command: "ADD", ContainerID: name, Netns: pod.Path, IfName: "eth0", Config: conf}))
		c.podIPs[name], c.podIPs6[name] = res.IPs[0].Address.IP.String(), res.IPs[1].Address.IP.String()
		c.podNS[name] = pod
		if name == "client" {
			c.clientPod = pod
		} else {
			env.EchoServer(pod, name, backendPort)
		}
	}
	source := []string{"--services-file", c.file}
	if mode == "api" {
		c.api = apiserver.Start(t)
		source = []string{"--kubeconfig", c.api.BridgeInto(t, c.node)}
	}
	c.warpd = append([]string{filepath.Join(harness.BinDir(), "warpd")}, source...)
	c.warpd = append(c.warpd, "--cgroup-root", c.pods.Path,
		"--bpffs-root", c.bpffs, "--node-name", "node1", "--node-ip", "10.0.0.1", "--listen", listen, "--poll", "100ms")
	// http.Transport dials on goroutines of its own: dial inside the node's
	// namespace explicitly.
	c.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = c.node.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}}
	return c
}

// apply makes the services source hold exactly the objects of doc: the file
// is rewritten, or the objects are created, updated and deleted through the
// API server.
func (c *cluster) apply(doc string) {
	c.t.Helper()
	if c.mode == "file" {
		if err := os.WriteFile(c.file, []byte(doc), 0o644); err != nil {
			c.t.Fatal(err)
		}
		return
	}
	c.api.Apply(c.t, doc)
}

// writeServices applies the web service with the given pods as ready
// endpoints.
func (c *cluster) writeServices(backends ...string) {
	var eps []epState
	for _, b := range backends {
		eps = append(eps, epState{b, true, true, false})
	}
	c.applyWeb(0, eps...)
}

// epState is one endpoint's conditions in the EndpointSlice.
type epState struct {
	pod                         string
	ready, serving, terminating bool
}

// applyWeb applies webDoc.
func (c *cluster) applyWeb(affinitySeconds int, eps ...epState) {
	c.t.Helper()
	c.apply(c.webDoc(affinitySeconds, eps...))
}

// webDoc is the web service (TCP 80 and UDP 53, optional ClientIP
// affinity) with endpoints in the given states.
func (c *cluster) webDoc(affinitySeconds int, eps ...epState) string {
	var b strings.Builder
	if len(eps) == 0 {
		b.WriteString(" []\n")
	}
	for _, e := range eps {
		fmt.Fprintf(&b, "\n- addresses: [%s]\n  nodeName: node1\n  conditions: {ready: %t, serving: %t, terminating: %t}\n",
			c.podIPs[e.pod], e.ready, e.serving, e.terminating)
	}
	affinity := ""
	if affinitySeconds > 0 {
		affinity = fmt.Sprintf("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: %d}}\n", affinitySeconds)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: %[1]s
  clusterIPs: [%[1]s]
%[4]s  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: %[2]d}
  - {name: dns, port: 53, protocol: UDP, targetPort: %[2]d}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: %[2]d, protocol: TCP}, {name: dns, port: %[2]d, protocol: UDP}]
endpoints:%[3]s
`, clusterIP, backendPort, b.String(), affinity)
}

// startWarpd starts warpd with extra flags (later flags win) and waits
// until it serves /healthz: it has opened (or created) the pinned maps by
// then, so the test's own reads of them (servicelb.PinnedServices) cannot create
// them first, with other sizes.
func (c *cluster) startWarpd(extra ...string) *exec.Cmd {
	c.t.Helper()
	cmd := c.node.Start(c.t, append(slices.Clone(c.warpd), extra...)...)
	harness.WaitFor(c.t, "warpd to listen", 30*time.Second, func() bool {
		_, _, err := c.get("/healthz")
		return err == nil || cmd.ProcessState != nil
	})
	return cmd
}

// get fetches path from warpd's listener.
func (c *cluster) get(path string) (int, string, error) {
	resp, err := c.http.Get("http://" + listen + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// mustGet is get, retried until warpd listens.
func (c *cluster) mustGet(path string) (int, string) {
	c.t.Helper()
	var code int
	var body string
	harness.WaitFor(c.t, "warpd to answer "+path, 20*time.Second, func() bool {
		var err error
		code, body, err = c.get(path)
		return err == nil
	})
	return code, body
}

// status is warpd's /status.
func (c *cluster) status() status.Status {
	c.t.Helper()
	_, body := c.mustGet(status.Path)
	var st status.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		c.t.Fatalf("/status: %v: %s", err, body)
	}
	return st
}

// waitStatus waits until warpd's status satisfies ok, and returns it.
func (c *cluster) waitStatus(what string, ok func(status.Status) bool) status.Status {
	c.t.Helper()
	var st status.Status
	harness.WaitFor(c.t, what, 30*time.Second, func() bool {
		code, body, err := c.get(status.Path)
		if err != nil || code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
			return false
		}
		return ok(st)
	})
	return st
}

// metrics parses warpd's /metrics.
func (c *cluster) metrics() map[string]*dto.MetricFamily {
	c.t.Helper()
	_, body := c.mustGet("/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		c.t.Fatalf("/metrics: %v\n%s", err, body)
	}
	return mfs
}

// metric is the value of a gauge or counter; labels are name, value pairs.
func metric(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf, ok := mfs[name]
	if !ok {
		return -1
	}
next:
	for _, m := range mf.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
	}
	return -1
}

// warpctl runs bin/warpctl inside the node's namespace (warpd status
// dials warpd's listener there).
func (c *cluster) warpctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return c.node.Run(ctx, append([]string{filepath.Join(harness.BinDir(), "warpctl")}, args...)...)
}

// logCount counts the lines of warpd's output that contain s.
func logCount(cmd *exec.Cmd, s string) int { return strings.Count(harness.Output(cmd), s) }

// waitLog waits until warpd's output has more than n lines containing s.
func (c *cluster) waitLog(cmd *exec.Cmd, s string, n int) {
	c.t.Helper()
	harness.WaitFor(c.t, fmt.Sprintf("warpd to log %q", s), 30*time.Second, func() bool { return logCount(cmd, s) > n })
}

// waitExit waits (at most timeout, a bound for a hang) for cmd to exit.
func waitExit(t *testing.T, cmd *exec.Cmd, timeout time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v:\n%s", cmd.Path, timeout, harness.Output(cmd))
		return nil
	}
}

// waitLB waits until the pinned maps satisfy ok (up to a minute: on a
// loaded 2-core machine a sync of 60,000 frontends took over 20 s to begin).
func (c *cluster) waitLB(what string, ok func([]servicelb.Service) bool) {
	c.t.Helper()
	harness.WaitFor(c.t, "warpd to program "+what, 60*time.Second, func() bool {
		svcs, _ := servicelb.PinnedServices(c.bpffs)
		return ok(svcs)
	})
}

// waitFrontend waits until the frontend fe ("10.96.0.10:80/tcp") is
// programmed with backends ("ip:port") that satisfy ok.
func (c *cluster) waitFrontend(fe string, ok func(backends []string) bool) {
	c.t.Helper()
	c.waitLB(fe, func(svcs []servicelb.Service) bool {
		for _, s := range svcs {
			if s.Frontend.String() == fe {
				var bs []string
				for _, b := range s.Backends {
					bs = append(bs, b.String())
				}
				return ok(bs)
			}
		}
		return false
	})
}

// webFrontend is the TCP frontend of the web service.
var webFrontend = servicelb.Frontend{Addr: netip.MustParseAddr(clusterIP), Port: 80, Proto: l4.TCP}

// waitBackends waits until the web service's TCP frontend has n backends.
func (c *cluster) waitBackends(n int) {
	c.t.Helper()
	c.waitLB(fmt.Sprintf("%v with %d backends", webFrontend, n), func(svcs []servicelb.Service) bool {
		return slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return s.Frontend == webFrontend && len(s.Backends) == n })
	})
}

// dial runs a socat client in the client pod, inside the pods' cgroup.
func (c *cluster) dial(proto, port string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr := strings.ToUpper(proto) + ":" + clusterIP + ":" + port
	out, err := c.pods.Run(ctx, c.clientPod, "hello", "socat", "-T1", "-", addr)
	return strings.TrimSpace(out), err
}

// answeredBy dials n times and counts which backend answered.
func (c *cluster) answeredBy(proto, port string, n int) map[string]int {
	c.t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		out, err := c.dial(proto, port)
		if err != nil {
			c.t.Fatalf("%s to the ClusterIP: %v", proto, err)
		}
		server, _, ok := strings.Cut(out, ":")
		if !ok {
			c.t.Fatalf("reply %q", out)
		}
		seen[server]++
	}
	return seen
}

func TestClusterIP(t *testing.T) {
	forEachMode(t, testClusterIP)
}

func testClusterIP(t *testing.T, mode string) {
	c := newCluster(t, mode, "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	c.startWarpd()
	c.waitBackends(2)

	t.Run("TCP reaches both backends", func(t *testing.T) {
		if seen := c.answeredBy("tcp", "80", 30); seen["pod1"] == 0 || seen["pod2"] == 0 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("connected UDP", func(t *testing.T) {
		if seen := c.answeredBy("udp", "53", 10); seen["pod1"]+seen["pod2"] != 10 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("warpctl shows services and hooks", func(t *testing.T) {
		warpctl := filepath.Join(harness.BinDir(), "warpctl")
		out, err := exec.Command(warpctl, "lb", "services", "--bpffs-root", c.bpffs, "--frontend", clusterIP+":80", "--json").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var views []struct {
			Frontend, Protocol string
			Backends           []string
		}
		if err := json.Unmarshal(out, &views); err != nil || len(views) != 1 || len(views[0].Backends) != 2 ||
			!slices.Contains(views[0].Backends, c.podIPs["pod1"]+":8080") {
			t.Fatalf("warpctl lb services: %v %s", err, out)
		}
		out, err = exec.Command(warpctl, "lb", "hooks", "--bpffs-root", c.bpffs).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.pods.Path) || !strings.Contains(string(out), "connect4") {
			t.Fatalf("warpctl lb hooks: %v %s", err, out)
		}
	})
	t.Run("a changed source is picked up", func(t *testing.T) {
		c.writeServices("pod2")
		c.waitBackends(1)
		if seen := c.answeredBy("tcp", "80", 10); seen["pod2"] != 10 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("no backends: refused at once", func(t *testing.T) {
		c.writeServices()
		c.waitBackends(0)
		out, err := c.dial("tcp", "80")
		if err == nil || !strings.Contains(err.Error(), "Connection refused") {
			t.Fatalf("want ECONNREFUSED from a service without backends (not a timeout): %v %q", err, out)
		}
	})
}

// The periodic resync repairs what changed in the maps behind warpd's back:
// a deleted frontend comes back, a corrupted one is rewritten, a stray one
// goes.
func TestResyncRepairsDrift(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	warpd := c.startWarpd("--resync", "1s")
	c.waitBackends(2)

	lb, err := servicelb.Open(c.bpffs, servicelb.Sizes{})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	udp := servicelb.Frontend{Addr: netip.MustParseAddr(clusterIP), Port: 53, Proto: l4.UDP}
	stray := servicelb.Frontend{Addr: netip.MustParseAddr("10.96.9.9"), Port: 80, Proto: l4.TCP}
	synced := logCount(warpd, `"msg":"synced"`)
	if err := lb.Delete(udp); err != nil {
		t.Fatal(err)
	}
	if err := lb.Upsert(servicelb.Service{Frontend: webFrontend, ID: 1, Backends: []servicelb.Backend{{Addr: netip.MustParseAddr(c.podIPs["pod1"]), Port: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := lb.Upsert(servicelb.Service{Frontend: stray, ID: 2}); err != nil {
		t.Fatal(err)
	}
	c.waitLog(warpd, `"msg":"synced"`, synced)
	c.waitLB("the drift repaired", func(svcs []servicelb.Service) bool {
		if len(svcs) != 2 || slices.ContainsFunc(svcs, func(s servicelb.Service) bool { return s.Frontend == stray }) {
			return false
		}
		for _, s := range svcs {
			if len(s.Backends) != 2 || s.ID == 1 || s.Backends[0].Port != backendPort {
				return false
			}
		}
		return true
	})
	if seen := c.answeredBy("tcp", "80", 20); seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Fatalf("answers %v", seen)
	}
}

// --host-only: sockets of the host's network namespace are translated,
// pods' sockets are not (a mesh sidecar in the pod sees the ClusterIP).
func TestHostOnly(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	// The node's address (its --node-ip), so that its own connections
	// have a source the pods can answer.
	c.node.Exec(t, "ip", "addr", "add", "10.0.0.1/32", "dev", "lo")
	c.writeServices("pod1")
	c.startWarpd("--host-only")
	c.waitBackends(1)
	dial := func(from string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n := c.clientPod
		if from == "node" {
			n = c.node
		}
		out, err := c.pods.Run(ctx, n, "hello", "socat", "-T2", "-", "TCP:"+clusterIP+":80,connect-timeout=2")
		return strings.TrimSpace(out), err
	}
	if out, err := dial("node"); err != nil || out != "pod1:hello" {
		t.Fatalf("from the node's namespace: %v %q", err, out)
	}
	if out, err := dial("pod"); err == nil {
		t.Fatalf("a pod's socket was translated in host-only mode: %q", out)
	}
}
