package warpd_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/warpnet/warpnet/daemon/status"
	"github.com/warpnet/warpnet/tests/harness"
)

// holdPort is where the backend pods' harness.LineServer listens.
const holdPort = 9000

// heldConn is one socket of the client pod, open for as long as the test
// wants: socat in the client pod (born in the pods' cgroup), its stdin and
// stdout at hand.
type heldConn struct {
	t      *testing.T
	stdin  io.WriteCloser
	lines  chan string
	exited chan error
}

// hold connects to addr (a socat address, e.g. TCP:10.96.0.10:9000).
func (c *cluster) hold(addr string) *heldConn {
	c.t.Helper()
	dir, err := os.Open(c.pods.Path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("nsenter", "--net="+c.clientPod.Path, "--", "socat", "-", addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	stderr := &harness.OutputBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	h := &heldConn{t: c.t, stdin: stdin, lines: make(chan string, 64), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		h.exited <- cmd.Wait()
	}()
	c.t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-h.exited:
		case <-time.After(10 * time.Second):
		}
		if c.t.Failed() {
			c.t.Logf("socat %s: %s", addr, stderr)
		}
	})
	return h
}

// line waits (bounded) for the next line from the peer.
func (h *heldConn) line() string {
	h.t.Helper()
	select {
	case l := <-h.lines:
		return l
	case err := <-h.exited:
		h.exited <- err
		h.t.Fatalf("the socket ended (%v) while a reply was awaited", err)
	case <-time.After(10 * time.Second):
		h.t.Fatal("no reply within 10s")
	}
	return ""
}

// exchange sends msg and returns the server that answered.
func (h *heldConn) exchange(msg string) string {
	h.t.Helper()
	fmt.Fprintln(h.stdin, msg)
	server, echoed, _ := strings.Cut(h.line(), ":")
	if echoed != msg {
		h.t.Fatalf("reply %s:%s to %q", server, echoed, msg)
	}
	return server
}

// waitDestroyed waits until the socket is destroyed: socat fails once its
// socket does (a UDP socket notices when it next sends).
func (h *heldConn) waitDestroyed(what string) {
	h.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		fmt.Fprintln(h.stdin, "are you there")
		select {
		case err := <-h.exited:
			h.exited <- err // for the cleanup
			if err == nil {
				h.t.Fatalf("%s: socat ended normally; want its socket destroyed", what)
			}
			return
		case <-h.lines:
		case <-deadline:
			h.t.Fatalf("%s was not destroyed", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// holdDoc is service hold (10.96.0.70:9000, TCP, to the pods' hold
// servers) and service hold-udp (10.96.0.71:53, UDP, to their echo
// servers), with the given pods as backends.
func (c *cluster) holdDoc(pods ...string) string {
	var ips []string
	for _, p := range pods {
		ips = append(ips, c.podIPs[p])
	}
	return harness.ServiceYAML("default", "hold", "10.96.0.70", "TCP", holdPort, holdPort, ips...) +
		harness.ServiceYAML("default", "hold-udp", "10.96.0.71", "UDP", 53, backendPort, ips...)
}

// When a backend leaves a service, a connected UDP socket still talking to
// it is destroyed, so the application (a resolver) opens a new one instead
// of staying pinned to a dead pod; a TCP connection is kept (it ends on its
// own), unless --destroy-tcp. warpctl lb revnat shows the open sockets'
// translations.
func TestRemovedBackendSockets(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		c := newCluster(t, mode, "pod1", "pod2")
		for _, p := range []string{"pod1", "pod2"} {
			c.env.LineServer(c.podNS[p], p, holdPort)
		}
		c.apply(c.holdDoc("pod1"))
		warpd := c.startWarpd()
		c.waitHold(1)

		tcp := c.hold("TCP:10.96.0.70:9000")
		if got := tcp.line(); got != "pod1" {
			t.Fatalf("greeted by %q", got)
		}
		udp := c.hold("UDP:10.96.0.71:53")
		if got := udp.exchange("one"); got != "pod1" {
			t.Fatalf("UDP answered by %q", got)
		}
		t.Run("warpctl lb revnat shows the open sockets", func(t *testing.T) {
			if !slices.ContainsFunc(c.revNAT(), func(e revNATEntry) bool {
				return e.Frontend.Addr == "10.96.0.70" && e.Backend.Addr == c.podIPs["pod1"]
			}) {
				t.Fatal("warpctl lb revnat --json lacks the TCP socket's translation")
			}
			out, err := c.warpctl("lb", "revnat", "--bpffs-root", c.bpffs)
			if err != nil || !strings.Contains(out, "SOCKET COOKIE") || !strings.Contains(out, "10.96.0.70:9000") ||
				!strings.Contains(out, c.podIPs["pod1"]+":9000") || !strings.Contains(out, "10.96.0.71:53") {
				t.Fatalf("warpctl lb revnat: %v\n%s", err, out)
			}
		})

		synced := logCount(warpd, `"msg":"synced"`)
		c.apply(c.holdDoc("pod2"))
		c.waitLog(warpd, `"msg":"synced"`, synced) // that sync's socket destroys are done
		udp.waitDestroyed("the connected UDP socket to the removed backend")
		if got := tcp.exchange("still there?"); got != "pod1" {
			t.Fatalf("TCP answered by %q", got)
		}

		t.Run("--destroy-tcp", func(t *testing.T) {
			warpd.Process.Signal(syscall.SIGTERM)
			if err := waitExit(t, warpd, 30*time.Second); err != nil {
				t.Fatalf("warpd after SIGTERM: %v", err)
			}
			c.apply(c.holdDoc("pod1"))
			warpd := c.startWarpd("--destroy-tcp")
			c.waitHoldBackend("pod1")
			tcp := c.hold("TCP:10.96.0.70:9000")
			if got := tcp.line(); got != "pod1" {
				t.Fatalf("greeted by %q", got)
			}
			c.apply(c.holdDoc("pod2"))
			tcp.waitDestroyed("the TCP connection to the removed backend")
			c.waitLog(warpd, `"msg":"destroyed sockets to a removed backend"`, 0)
			if !strings.Contains(harness.Output(warpd), `"proto":"tcp"`) {
				t.Fatalf("no TCP socket destroy logged:\n%s", harness.Output(warpd))
			}
		})
	})
}

// waitHold waits until the hold service's TCP frontend has n backends.
func (c *cluster) waitHold(n int) {
	c.t.Helper()
	c.waitFrontend("10.96.0.70:9000/tcp", func(backends []string) bool { return len(backends) == n })
}

// waitHoldBackend waits until the hold service's TCP frontend has exactly
// pod's backend.
func (c *cluster) waitHoldBackend(pod string) {
	c.t.Helper()
	c.waitFrontend("10.96.0.70:9000/tcp", func(backends []string) bool {
		return len(backends) == 1 && backends[0] == fmt.Sprintf("%s:%d", c.podIPs[pod], holdPort)
	})
}

// When a sync fails in part, the sockets of backends removed by the part
// that succeeded are destroyed all the same. The backend map holds 4
// entries: service big (3 new backends) cannot be added, while hold's two
// frontends move from one pod to the other in the same sync.
func TestPartialSyncStillDestroysSockets(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2")
	for _, p := range []string{"pod1", "pod2"} {
		c.env.LineServer(c.podNS[p], p, holdPort)
	}
	c.apply(c.holdDoc("pod1", "pod2"))
	warpd := c.startWarpd("--map-backends", "4")
	c.waitHold(2)
	if code, body := c.mustGet("/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s", code, body)
	}
	udp := c.hold("UDP:10.96.0.71:53")
	backend := udp.exchange("one")
	other := map[string]string{"pod1": "pod2", "pod2": "pod1"}[backend]

	c.apply(c.holdDoc(other) + harness.ServiceYAML("default", "big", "10.96.0.80", "TCP", 80, 80, "10.244.1.201", "10.244.1.202", "10.244.1.203"))
	c.waitHoldBackend(other)
	udp.waitDestroyed("the connected UDP socket to the backend removed by the part of the sync that succeeded")

	t.Run("a failed sync makes /healthz 503 and warpctl says why", func(t *testing.T) {
		st := c.waitStatus("warpd to report the failed sync", func(st status.Status) bool { return st.LastSync != nil && st.LastSync.Error != "" })
		if st.Healthy || !strings.Contains(st.LastSync.Error, "lb_backends is full") {
			t.Fatalf("status %+v", st)
		}
		if code, body := c.mustGet("/healthz"); code != 503 || !strings.Contains(body, "--map-backends is 4") {
			t.Fatalf("/healthz %d %s", code, body)
		}
		out, err := c.warpctl("warpd", "status", "--addr", listen)
		if err != nil || !strings.Contains(out, "UNHEALTHY") || !strings.Contains(out, "FAILED in part") || !strings.Contains(out, "default/big:p/tcp") {
			t.Fatalf("warpctl warpd status: %v\n%s", err, out)
		}
		if mfs := c.metrics(); metric(mfs, "warpd_sync_errors_total") < 1 {
			t.Fatalf("warpd_sync_errors_total %v", metric(mfs, "warpd_sync_errors_total"))
		}
		if !strings.Contains(harness.Output(warpd), "sync failed in part") {
			t.Fatalf("the failed sync was not logged:\n%s", harness.Output(warpd))
		}
	})
}
