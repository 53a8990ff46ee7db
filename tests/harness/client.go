package harness

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Client processes. Socket hooks on a cgroup (warpd's load balancer) act on
// the sockets of processes in that cgroup, and the test binary itself must
// stay out of test cgroups. So a client is the test binary re-executed as
// a child born in the cgroup (clone3 CLONE_INTO_CGROUP), which dials from
// inside a network namespace and reports every dial as a JSON line. A
// package that starts clients runs harness.Main from its TestMain:
//
//	func TestMain(m *testing.M) { harness.Main(m) }
//
//	r := pods.RunClient(t, harness.Dials{Netns: pod.Path, Network: "tcp", Addr: "10.96.0.10:80", Count: 10})
//	c := pods.StartClient(t, harness.Dials{..., Count: 0}) // until c.Stop

// Dials is what a client does: from inside network namespace Netns, it
// dials Addr over Network ("tcp", "udp": a connected UDP socket), writes
// Msg and reads the reply of one of the harness's echo servers
// ("<server>:<msg>"), Count times, or until stopped when Count is 0.
type Dials struct {
	Netns   string
	Network string
	Addr    string
	Count   int           // 0: until Client.Stop (at most maxDials)
	Msg     string        // default "hi"
	Timeout time.Duration // per dial and per exchange; default 2s
	Pause   time.Duration // between dials
}

// maxDials bounds an endless client.
const maxDials = 200000

// Dial is the outcome of one dial.
type Dial struct {
	Server  string        `json:"server,omitempty"` // the echo server that answered
	Peer    string        `json:"peer,omitempty"`   // getpeername, as the client saw it
	Latency time.Duration `json:"latency"`          // dial to reply
	Err     string        `json:"err,omitempty"`
}

// Report is what a client did.
type Report struct {
	Dials   []Dial
	Elapsed time.Duration // from the first dial to the end of the last
}

// Failed returns the dials that failed.
func (r *Report) Failed() []Dial {
	var out []Dial
	for _, d := range r.Dials {
		if d.Err != "" {
			out = append(out, d)
		}
	}
	return out
}

// Servers counts the answers per server.
func (r *Report) Servers() map[string]int {
	out := map[string]int{}
	for _, d := range r.Dials {
		if d.Err == "" {
			out[d.Server]++
		}
	}
	return out
}

// clientLine is one line of a client's output: a dial, or the end.
type clientLine struct {
	Dial
	Done    bool          `json:"done,omitempty"`
	Elapsed time.Duration `json:"elapsed,omitempty"`
}

// Client is a running client process.
type Client struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *OutputBuffer
	done   chan struct{} // closed when its output has been read

	mu     sync.Mutex
	report Report
	ended  bool
}

// StartClient starts a client born in the cgroup. It is killed at t's
// cleanup if still running.
func (c *Cgroup) StartClient(t testing.TB, d Dials) *Client {
	t.Helper()
	spec, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	cl := &Client{t: t, cmd: cmd, stderr: &OutputBuffer{}, done: make(chan struct{})}
	cmd.Stderr = cl.stderr
	if cl.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("harness: start client in cgroup %s: %v", c.Path, err)
	}
	go cl.read(stdout)
	t.Cleanup(func() {
		cl.stdin.Close()
		_ = cmd.Process.Kill()
		<-cl.done
		_ = cmd.Wait()
	})
	return cl
}

func (cl *Client) read(stdout io.Reader) {
	defer close(cl.done)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var l clientLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			continue
		}
		cl.mu.Lock()
		if l.Done {
			cl.report.Elapsed, cl.ended = l.Elapsed, true
		} else {
			cl.report.Dials = append(cl.report.Dials, l.Dial)
		}
		cl.mu.Unlock()
	}
}

// Dials returns how many dials the client has reported so far, and how many
// of them failed.
func (cl *Client) Dials() (n, failed int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for _, d := range cl.report.Dials {
		if d.Err != "" {
			failed++
		}
	}
	return len(cl.report.Dials), failed
}

// Wait waits (at most timeout) for the client to finish and returns its
// report; it fails the test if the client did not end normally.
func (cl *Client) Wait(timeout time.Duration) *Report {
	cl.t.Helper()
	select {
	case <-cl.done:
	case <-time.After(timeout):
		cl.t.Fatalf("harness: client did not finish within %v (stderr: %s)", timeout, cl.stderr)
	}
	err := cl.cmd.Wait()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if err != nil || !cl.ended {
		cl.t.Fatalf("harness: client: %v (stderr: %s)", err, cl.stderr)
	}
	r := cl.report
	return &r
}

// Stop asks an endless client to stop after its current dial and returns
// its report.
func (cl *Client) Stop(timeout time.Duration) *Report {
	cl.t.Helper()
	cl.stdin.Close()
	return cl.Wait(timeout)
}

// RunClient runs a client that makes d.Count dials, and returns its report.
func (c *Cgroup) RunClient(t testing.TB, d Dials) *Report {
	t.Helper()
	if d.Count <= 0 {
		t.Fatal("harness: RunClient needs Dials.Count > 0 (StartClient for an endless one)")
	}
	return c.StartClient(t, d).Wait(2*time.Minute + time.Duration(d.Count)*d.Pause)
}
