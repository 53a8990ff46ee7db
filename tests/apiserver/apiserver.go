// Package apiserver runs a real Kubernetes API server (kube-apiserver backed
// by etcd) for one test, so that e2e tests can exercise warpd and the CNI
// plugins against the real API instead of fakes.
//
//	s := apiserver.Start(t)   // etcd + kube-apiserver on free loopback ports
//	c := s.Client(t)          // client-go clientset, admin (system:masters)
//	c.CoreV1().Services("default").Create(...)
//	// warpd and friends: --kubeconfig=s.Kubeconfig
//	// or from inside a node namespace: kc := s.BridgeInto(t, node)
//
// Only the API server runs: there is no controller manager, scheduler or
// kubelet. So nothing creates EndpointSlices, ServiceAccounts or Nodes for
// you, deleted namespaces stay Terminating, and pods are never scheduled.
// Create the objects the code under test reads yourself. The ServiceAccount
// admission plugin is disabled so that Pods can be created without first
// creating their ServiceAccount.
//
// etcd comes from the Debian package etcd-server (`make deps`); the
// kube-apiserver binary is built once from the Go module proxy into a cache
// by hack/build-apiserver.sh, which Start runs itself when the binary is
// missing (about 4 minutes; `make apiserver` does it ahead of time).
// Missing tools skip the test, or fail it under WARP_E2E_REQUIRED=1, like
// the rest of the harness.
package apiserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warpnet/warpnet/tests/harness"
)

// Version is the Kubernetes version of the API server. It must match the
// k8s.io/kubernetes requirement in tests/apiserver/build/go.mod (a test
// checks that).
const Version = "v1.34.3"

// ServiceCIDR is the --service-cluster-ip-range of every server: dual-stack,
// so tests can create IPv6 and dual-stack Services.
const ServiceCIDR = "10.96.0.0/16,fd00:96::/112"

// EnvBin names the environment variable that overrides where the
// kube-apiserver binary is (and where hack/build-apiserver.sh puts it).
const EnvBin = "WARP_APISERVER_BIN"

// ReadyTimeout bounds the wait for /readyz (typically about 15 s, more on a
// loaded machine).
var ReadyTimeout = 2 * time.Minute

// BuildTimeout bounds the one-time build of kube-apiserver.
var BuildTimeout = 20 * time.Minute

// Server is a running etcd + kube-apiserver pair, stopped at the end of the
// test that started it.
type Server struct {
	URL        string // https://127.0.0.1:PORT
	Kubeconfig string // kubeconfig file: the admin token, insecure-skip-tls-verify: true
	Token      string // bearer token of user "admin" in group system:masters
	// Dir holds the server's data, certificates and logs (etcd.N.log,
	// kube-apiserver.N.log, N counting start attempts); removed at cleanup.
	Dir string

	port      int
	bin       string // kube-apiserver
	starts    int    // kube-apiserver start attempts, numbering its logs
	bridges   atomic.Int32
	etcd, api *proc
	applied   map[string]bool // objects Apply created, by kind/namespace/name
}

// BinaryPath returns where the kube-apiserver binary is expected:
// $WARP_APISERVER_BIN, or ${XDG_CACHE_HOME:-$HOME/.cache}/warpnet/kube-apiserver-<Version>,
// the same rule hack/build-apiserver.sh follows.
func BinaryPath() string {
	if v := os.Getenv(EnvBin); v != "" {
		return v
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "warpnet", "kube-apiserver-"+Version)
}

// Start starts etcd and kube-apiserver on free loopback ports (never the
// defaults 2379/2380/6443: tests and packages run concurrently) with
// --service-cluster-ip-range=10.96.0.0/16,fd00:96::/112, token authentication (a random
// admin token in group system:masters) and RBAC, in a private directory. It
// returns once /readyz is ok and stops both processes at t's cleanup. If the
// kube-apiserver binary is not built yet, Start builds it first.
func Start(t testing.TB) *Server {
	t.Helper()
	harness.RequireTools(t, "etcd")
	bin := ensureBinary(t)

	sweepOnce.Do(sweepDirs)
	dir, err := os.MkdirTemp("", dirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		t.Fatalf("apiserver: temp dir: %v", err)
	}
	// Registered first, so it runs last: after both processes are gone.
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("apiserver cleanup: %v", err)
		}
	})
	s := &Server{Dir: dir, Token: randomHex(t, 24), bin: bin}
	writeFile(t, filepath.Join(dir, "sa.key"), serviceAccountKey(t), 0o600)
	writeFile(t, filepath.Join(dir, "tokens.csv"), []byte(s.Token+`,admin,admin,"system:masters"`+"\n"), 0o600)
	s.launch(t, false)

	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	writeFile(t, s.Kubeconfig, kubeconfig(s.URL, s.Token), 0o600)
	return s
}

// launch starts etcd and then kube-apiserver on s.Dir's data: on a free
// port, or again on s.port after Stop (so bridges and kubeconfigs stay
// valid).
func (s *Server) launch(t testing.TB, again bool) {
	t.Helper()
	start := time.Now()
	etcdURL, etcd := startEtcd(t, s.Dir)
	s.etcd = etcd
	saKey, tokens := filepath.Join(s.Dir, "sa.key"), filepath.Join(s.Dir, "tokens.csv")
	for attempt := 1; ; attempt++ {
		s.starts++
		if !again {
			s.port = freePort(t)
			s.URL = "https://127.0.0.1:" + strconv.Itoa(s.port)
		}
		args := []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(s.port),
			"--cert-dir=" + filepath.Join(s.Dir, "certs"),
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--token-auth-file=" + tokens,
			"--authorization-mode=RBAC",
			"--service-account-key-file=" + saKey,
			"--service-account-signing-key-file=" + saKey,
			"--service-account-issuer=https://kubernetes.default.svc",
			"--disable-admission-plugins=ServiceAccount",
			"--allow-privileged=true",
			"--profiling=false",
		}
		p := startProc(t, "kube-apiserver", filepath.Join(s.Dir, fmt.Sprintf("kube-apiserver.%d.log", s.starts)), s.bin, args...)
		t.Logf("apiserver: kube-apiserver %s (pid %d) starting at %s", Version, p.cmd.Process.Pid, s.URL)
		err := s.waitReady(t, p, start)
		if err == nil {
			s.api = p
			break
		}
		p.stop()
		if errors.Is(err, errPortTaken) && attempt < 5 && !again {
			t.Logf("apiserver: port %d was taken meanwhile; retrying on another", s.port)
			continue
		}
		t.Fatalf("apiserver: %v\nlast lines of %s:\n%s", err, p.log, tail(p.log, 40))
	}
	t.Logf("apiserver: ready at %s after %.1fs", s.URL, time.Since(start).Seconds())
}

// Restart starts a server that Stop stopped again, with its data, at the
// same address: clients, bridges and kubeconfigs work again.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.launch(t, true)
}

// Stop stops kube-apiserver and then etcd now, before the test ends, e.g.
// to check that a client survives losing the API server. Calling it again,
// and the cleanup afterwards, do nothing. Bridges stay up, but connections
// through them fail.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	for _, p := range []*proc{s.api, s.etcd} {
		if err := p.stop(); err != nil {
			t.Errorf("apiserver: stop: %v", err)
		}
	}
}

// Freeze stops kube-apiserver with SIGSTOP: connections are still accepted
// by the kernel, but nothing answers, which is how an overloaded or
// partitioned API server looks to a client. Thaw resumes it; the cleanup
// thaws it too, so that it can be stopped.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	if err := s.api.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("apiserver: freeze: %v", err)
	}
	t.Cleanup(func() { _ = s.api.cmd.Process.Signal(syscall.SIGCONT) })
}

// Thaw resumes a frozen kube-apiserver.
func (s *Server) Thaw(t testing.TB) {
	t.Helper()
	if err := s.api.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("apiserver: thaw: %v", err)
	}
}

// CPUTime is the CPU time (user and system) kube-apiserver and etcd have
// used so far. Benchmarks divide its growth by the work done meanwhile: a
// cost per operation that other load on the machine does not change.
func (s *Server) CPUTime(t testing.TB) time.Duration {
	t.Helper()
	var total time.Duration
	for _, p := range []*proc{s.etcd, s.api} {
		st, err := harness.ReadProcStat(p.cmd.Process.Pid)
		if err != nil {
			t.Fatalf("apiserver: CPU time: %v", err)
		}
		total += st.CPU
	}
	return total
}

// Requests is how many requests the API server has served so far, by its
// own count (apiserver_request_total, its background requests included),
// of those whose labels match (nil: all).
func (s *Server) Requests(t testing.TB, match func(labels map[string]string) bool) float64 {
	t.Helper()
	hc, err := rest.HTTPClientFor(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(s.URL + "/metrics")
	if err != nil {
		t.Fatalf("apiserver: metrics: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("apiserver: metrics: %v", err)
	}
	var n float64
	for _, m := range fams["apiserver_request_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if match == nil || match(labels) {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

// RESTConfig returns a client-go configuration for the admin user.
func (s *Server) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             100,
		Burst:           200,
		Timeout:         30 * time.Second,
	}
}

// Client returns a client-go clientset for the admin user.
func (s *Server) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatalf("apiserver: client: %v", err)
	}
	return c
}

// BridgeInto makes the server reachable from inside the network namespace
// ns at the same address as outside, 127.0.0.1:PORT, and returns the path of
// a kubeconfig for use inside ns. A namespace has a loopback of its own, so
// the connection crosses into the machine's namespace through a unix socket:
// `socat UNIX-LISTEN:S,fork TCP:127.0.0.1:PORT` runs in the machine's
// namespace and `socat TCP-LISTEN:PORT,bind=127.0.0.1,fork UNIX-CONNECT:S`
// inside ns (started with ns.Start). No link or route joins the namespaces.
// Both socats are stopped at t's cleanup. Needs socat (and nsenter, root:
// ns comes from harness.New).
func (s *Server) BridgeInto(t testing.TB, ns *harness.NetNS) (kubeconfigPath string) {
	t.Helper()
	harness.RequireTools(t, "socat", "nsenter")
	n := s.bridges.Add(1)
	sock := filepath.Join(s.Dir, fmt.Sprintf("bridge%d.sock", n))
	port := strconv.Itoa(s.port)

	outer := startProc(t, "socat (outside)", filepath.Join(s.Dir, fmt.Sprintf("bridge%d.log", n)),
		"socat", "UNIX-LISTEN:"+sock+",fork,mode=600", "TCP:127.0.0.1:"+port)
	if err := waitFor(5*time.Second, func() error {
		if outer.exited() {
			return errors.New("socat exited:\n" + tail(outer.log, 10))
		}
		_, err := os.Stat(sock)
		return err
	}); err != nil {
		t.Fatalf("apiserver: bridge socket %s: %v", sock, err)
	}

	// socat forks a child per connection. Those children would outlive
	// their parent by as long as the client keeps its connection open (and
	// the inner one holds ns.Start's output pipe, which delays its reaping),
	// so they are killed first at cleanup: t.Cleanup runs in reverse order.
	t.Cleanup(func() { killChildren(outer.cmd.Process.Pid) })

	inner := ns.Start(t, "socat", "TCP-LISTEN:"+port+",bind=127.0.0.1,fork,reuseaddr", "UNIX-CONNECT:"+sock)
	t.Cleanup(func() { killChildren(inner.Process.Pid) })
	if err := waitFor(5*time.Second, func() error {
		if inner.ProcessState != nil {
			return errors.New("socat exited: " + harness.Output(inner))
		}
		return ns.Do(func() error {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}); err != nil {
		t.Fatalf("apiserver: bridge into netns %s: %v\n%s", ns.Name, err, harness.Output(inner))
	}

	path := filepath.Join(s.Dir, "kubeconfig-"+ns.Name)
	writeFile(t, path, kubeconfig(s.URL, s.Token), 0o600)
	t.Logf("apiserver: reachable inside netns %s at %s (kubeconfig %s)", ns.Name, s.URL, path)
	return path
}

// dirPrefix starts the name of every server's directory in os.TempDir(),
// followed by the PID of the test process and "-". The harness's temp dir
// names are not used on purpose: the harness's first New in a process
// removes every object named with that process's run ID, which would delete
// the directory of a server started earlier in the same process.
const dirPrefix = "warpnet-apiserver-"

var sweepOnce sync.Once

// sweepDirs removes the directories of servers whose test process is gone
// (killed before its cleanup ran). Their etcd and kube-apiserver died with it
// (PR_SET_PDEATHSIG). A directory whose PID is alive is never touched.
func sweepDirs() {
	tmp := os.TempDir()
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, ent := range ents {
		rest, ok := strings.CutPrefix(ent.Name(), dirPrefix)
		if !ok || !ent.IsDir() {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() || strconv.Itoa(pid) != pidStr {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // alive
		}
		_ = os.RemoveAll(filepath.Join(tmp, ent.Name()))
	}
}

// killChildren SIGKILLs the child processes of the (still running) process
// ppid. They cannot be recycled PIDs: a child's PID stays in use while it
// exists, and it is this parent's child for as long as the parent lives.
func killChildren(ppid int) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may contain ") ".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
			_ = p.Release()
		}
	}
}

// errPortTaken says that a port picked as free was taken before the server
// could bind it (another test process won the race); retry on another.
var errPortTaken = errors.New("port taken")

func (s *Server) waitReady(t testing.TB, p *proc, start time.Time) error {
	t.Helper()
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
			DisableKeepAlives: true,
		},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(ReadyTimeout)
	nextLog := time.Now().Add(5 * time.Second)
	last := "not listening yet"
	for {
		if p.exited() {
			if bytes.Contains(readFile(p.log), []byte("address already in use")) {
				return errPortTaken
			}
			return fmt.Errorf("kube-apiserver exited before it was ready: %v", p.err())
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("/readyz: %s%s", resp.Status, failedChecks(body))
		} else if t.Context().Err() != nil {
			return t.Context().Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready within %v: %s", ReadyTimeout, last)
		}
		if time.Now().After(nextLog) {
			t.Logf("apiserver: waiting for %s/readyz (%.0fs): %s", s.URL, time.Since(start).Seconds(), last)
			nextLog = time.Now().Add(5 * time.Second)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// failedChecks extracts the failing checks ("[-]name failed") of a /readyz
// body.
func failedChecks(body []byte) string {
	var failed []string
	for _, line := range strings.Split(string(body), "\n") {
		if name, ok := strings.CutPrefix(line, "[-]"); ok {
			failed = append(failed, strings.Fields(name)[0])
		}
	}
	if len(failed) == 0 {
		return ""
	}
	return " (failing: " + strings.Join(failed, ", ") + ")"
}

// startEtcd starts etcd with its data in dir on two free loopback ports and
// returns its client URL once it serves /health.
func startEtcd(t testing.TB, dir string) (string, *proc) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		client := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
		peer := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
		p := startProc(t, "etcd", filepath.Join(dir, fmt.Sprintf("etcd.%d.log", attempt)), "etcd",
			"--name=default",
			"--data-dir="+filepath.Join(dir, "etcd"),
			"--listen-client-urls="+client,
			"--advertise-client-urls="+client,
			"--listen-peer-urls="+peer,
			"--initial-advertise-peer-urls="+peer,
			"--initial-cluster=default="+peer,
		)
		hc := &http.Client{Timeout: 2 * time.Second}
		err := waitFor(30*time.Second, func() error {
			if p.exited() {
				return errExited
			}
			resp, err := hc.Get(client + "/health")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return errors.New(resp.Status)
			}
			return nil
		})
		if err == nil {
			t.Logf("apiserver: etcd (pid %d) serving at %s", p.cmd.Process.Pid, client)
			return client, p
		}
		p.stop()
		if errors.Is(err, errExited) && bytes.Contains(readFile(p.log), []byte("address already in use")) && attempt < 5 {
			_ = os.RemoveAll(filepath.Join(dir, "etcd"))
			continue
		}
		t.Fatalf("apiserver: etcd did not start: %v\nlast lines of %s:\n%s", err, p.log, tail(p.log, 30))
	}
}

var errExited = errors.New("exited")

// proc is a server process of a test: its output goes to a log file, it
// dies with the test binary (PR_SET_PDEATHSIG) and is killed at cleanup.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	once sync.Once
}

func startProc(t testing.TB, what, logPath, name string, args ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("apiserver: %v", err)
	}
	defer f.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if name == "etcd" && runtime.GOARCH != "amd64" {
		cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("apiserver: start %s: %v", what, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("apiserver cleanup: %s: %v", what, err)
		}
		if t.Failed() {
			t.Logf("apiserver: last lines of %s:\n%s", logPath, tail(logPath, 20))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) err() error {
	if !p.exited() {
		return nil
	}
	return errors.New(p.cmd.ProcessState.String())
}

// stop kills the process by its pidfd (so a reused PID is never hit) and
// waits for it to be reaped.
func (p *proc) stop() error {
	var err error
	p.once.Do(func() {
		if kerr := p.cmd.Process.Kill(); kerr != nil && !errors.Is(kerr, os.ErrProcessDone) {
			err = fmt.Errorf("kill pid %d: %w", p.cmd.Process.Pid, kerr)
			return
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			err = fmt.Errorf("pid %d did not exit within 10s of SIGKILL", p.cmd.Process.Pid)
		}
	})
	return err
}

// buildMu serializes the builds of this process; hack/build-apiserver.sh
// serializes those of concurrent processes with flock.
var buildMu sync.Mutex

// ensureBinary returns the kube-apiserver binary, building it with
// hack/build-apiserver.sh if it is missing.
func ensureBinary(t testing.TB) string {
	t.Helper()
	bin := BinaryPath()
	if isExecutable(bin) {
		return bin
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if isExecutable(bin) {
		return bin
	}
	script := filepath.Join(harness.RepoRoot(), "hack", "build-apiserver.sh")
	if _, err := os.Stat(script); err != nil || !toolAvailable("go") || !toolAvailable("bash") {
		// Nothing to build it with: the usual skip policy for a missing tool.
		harness.RequireTools(t, bin)
		return bin
	}
	t.Logf("apiserver: %s is not built yet: running %s (about 4 minutes, once; `make apiserver` does it ahead of time)", bin, script)
	if tt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := tt.Deadline(); ok && time.Until(d) < 8*time.Minute {
			t.Logf("apiserver: warning: only %v left before go test's -timeout; the build may not finish in time", time.Until(d).Round(time.Second))
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), BuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), EnvBin+"="+bin)
	// SIGTERM, not SIGKILL: the script then stops its go build as well.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("apiserver: %s", strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("apiserver: building kube-apiserver failed after %v: %v", time.Since(start).Round(time.Second), err)
	}
	if !isExecutable(bin) {
		t.Fatalf("apiserver: %s succeeded but %s is not there", script, bin)
	}
	return bin
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func toolAvailable(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// freePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the server binds it; callers retry on
// "address already in use".
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("apiserver: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || errors.Is(err, errExited) {
			return err
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func kubeconfig(server, token string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: warpnet-e2e
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: warpnet-e2e
  context:
    cluster: warpnet-e2e
    user: admin
current-context: warpnet-e2e
`, server, token)
}

// serviceAccountKey returns a PEM-encoded ECDSA P-256 key for signing (and
// verifying) service account tokens.
func serviceAccountKey(t testing.TB) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("apiserver: service account key: %v", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("apiserver: service account key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("apiserver: random: %v", err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("apiserver: %v", err)
	}
}

func readFile(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	lines := strings.Split(strings.TrimRight(string(readFile(path)), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
