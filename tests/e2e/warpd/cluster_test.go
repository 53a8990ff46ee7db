// Package warpd_test runs the built bin/warpd on a simulated node (a network
// namespace) in file mode, with warp-veth pods as backends and clients, and
// checks ClusterIP translation with real sockets from inside the pods.
package warpd_test

import (
	"bufio"
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
	"syscall"
	"testing"
	"time"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

const (
	clusterIP   = "10.96.0.10"
	backendPort = 8080
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
	clientPod *harness.NetNS
	warpd     []string // argv

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
		file: filepath.Join(env.TempDir, "services.yaml"), podIPs: map[string]string{}, podIPs6: map[string]string{}}
	veth := env.Plugin(t, "warp-veth").In(c.node)
	conf := harness.ConfigJSON(t, harness.NetConf("pods", "warp-veth", map[string]any{"cniVersion": "1.1.0",
		"ipam": map[string]any{"type": "warp-ipam", "dataDir": filepath.Join(env.TempDir, "ipam"), "detectConflicts": false,
			"ranges": [][]map[string]any{{{"subnet": "10.244.1.0/24"}}, {{"subnet": "fd00:244:1::/64"}}}}}))
	for _, name := range append(backends, "client") {
		pod := env.NetNS(name)
		res := harness.ParseResult(t, veth.MustSucceed(t, harness.Call{Command: "ADD", ContainerID: name, Netns: pod.Path, IfName: "eth0", Config: conf}))
		c.podIPs[name], c.podIPs6[name] = res.IPs[0].Address.IP.String(), res.IPs[1].Address.IP.String()
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
		"--bpffs-root", c.bpffs, "--node-name", "node1", "--node-ip", "10.0.0.1", "--listen", "", "--poll", "100ms")
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

// applyWeb applies the web service (TCP 80 and UDP 53, optional ClientIP
// affinity) with endpoints in the given states.
func (c *cluster) applyWeb(affinitySeconds int, eps ...epState) {
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
	c.apply(fmt.Sprintf(`apiVersion: v1
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
endpoints:%[3]s`, clusterIP, backendPort, b.String(), affinity))
}

func (c *cluster) startWarpd() {
	c.t.Helper()
	c.node.Start(c.t, c.warpd...)
}

// waitLB waits until the pinned maps satisfy ok.
func (c *cluster) waitLB(what string, ok func([]servicelb.Service) bool) {
	c.t.Helper()
	harness.WaitFor(c.t, "warpd to program "+what, 20*time.Second, func() bool {
		svcs, _ := servicelb.PinnedServices(c.bpffs)
		return ok(svcs)
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
		start := time.Now()
		out, err := c.dial("tcp", "80")
		if err == nil {
			t.Fatalf("connected to a service without backends: %q", out)
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("took %v: a timeout, not a refusal (%s)", time.Since(start), out)
		}
	})
}

// A client keeps making connections through the ClusterIP while warpd is
// killed and restarted: none of them fails, because the maps and links
// stay pinned, and the new warpd adopts them.
func TestRestartWithZeroFailures(t *testing.T) {
	forEachMode(t, testRestartWithZeroFailures)
}

func testRestartWithZeroFailures(t *testing.T, mode string) {
	c := newCluster(t, mode, "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	first := c.node.Start(t, c.warpd...)
	c.waitBackends(2)

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		loop := fmt.Sprintf(`ok=0; for i in $(seq 600); do echo hi | socat -T1 - TCP:%s:80 >/dev/null 2>&1 && ok=$((ok+1)) || echo FAIL $i; done; echo OK $ok`, clusterIP)
		out, err := c.pods.Run(ctx, c.clientPod, "", "bash", "-c", loop)
		done <- result{out, err}
	}()
	time.Sleep(300 * time.Millisecond)
	first.Process.Kill()
	first.Wait()
	time.Sleep(300 * time.Millisecond)
	c.startWarpd()
	c.waitBackends(2)
	r := <-done
	if r.err != nil || strings.Contains(r.out, "FAIL") || !strings.Contains(r.out, "OK 600") {
		t.Fatalf("connections across the restart: %v\n%s", r.err, r.out)
	}
}

// When a backend leaves a service, a connected UDP socket still talking to
// it is destroyed, so the application (a resolver) opens a new one instead
// of staying pinned to a dead pod.
func TestRemovedBackendKillsConnectedUDP(t *testing.T) {
	forEachMode(t, testRemovedBackendKillsConnectedUDP)
}

func testRemovedBackendKillsConnectedUDP(t *testing.T, mode string) {
	c := newCluster(t, mode, "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	c.startWarpd()
	c.waitBackends(2)

	dir, err := os.Open(c.pods.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("nsenter", "--net="+c.clientPod.Path, "--", "socat", "-", "UDP:"+clusterIP+":53")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	replies := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			replies <- sc.Text()
		}
		close(replies)
	}()
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintln(stdin, "one")
	var backend string
	select {
	case r := <-replies:
		backend, _, _ = strings.Cut(r, ":")
	case <-time.After(5 * time.Second):
		t.Fatal("no answer over the connected UDP socket")
	}
	// Take the backend this socket is connected to out of the service.
	other := map[string]string{"pod1": "pod2", "pod2": "pod1"}[backend]
	c.writeServices(other)
	c.waitBackends(1)
	deadline := time.After(5 * time.Second)
	for {
		fmt.Fprintln(stdin, "two") // fails (or ends socat) once the socket is destroyed
		select {
		case err := <-exited:
			if err == nil {
				t.Fatal("socat ended normally; want its socket destroyed")
			}
			exited <- err // for the cleanup
			return
		case r, ok := <-replies:
			if ok && strings.HasPrefix(r, backend+":") {
				t.Logf("still answered by the removed backend (%q); waiting for the destroy", r)
			}
		case <-deadline:
			t.Fatalf("the connected UDP socket to removed backend %s was not destroyed", backend)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	c.writeServices("pod1")
	argv := append(slices.Clone(c.warpd[:len(c.warpd)-4]), "--listen", "127.0.0.1:19090", "--poll", "100ms")
	c.node.Start(t, argv...)
	c.waitBackends(1)
	// http.Transport dials on a goroutine of its own, outside the node's
	// namespace: dial here, inside it, and speak HTTP over that connection.
	get := func(path string) (int, string) {
		var conn net.Conn
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := c.node.Do(func() (err error) { conn, err = net.DialTimeout("tcp", "127.0.0.1:19090", time.Second); return err })
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: warpd\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/healthz"); code != 200 {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	_, metrics := get("/metrics")
	for _, want := range []string{"warpd_services 2", "warpd_backends 2", "warpd_sync_errors_total 0", "# TYPE warpd_syncs_total counter", `warpd_map_fill_ratio{map="services"} 3.0517578125e-05`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
}
