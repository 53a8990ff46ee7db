// Package harness is the shared end-to-end test harness of warpnet.
//
// Every e2e test of every feature builds on it. Simulated nodes and pods are
// network namespaces, test "pods" may live in a private cgroup v2, and the CNI
// plugin binaries are invoked with the CNI environment protocol.
//
// The harness must always clean up, also after a failed, interrupted or
// SIGKILLed test run. Therefore:
//
//   - Every object it creates (network namespace, cgroup, temp dir) carries the
//     run ID of the creating process, "wt" + base36(pid). An Env registers a
//     t.Cleanup that removes its objects in reverse order of creation.
//   - Sweep removes objects whose owning PID no longer exists. New runs it once
//     per process, so whatever a killed run left behind is removed by the next
//     run. Several test packages run concurrently as separate processes (go
//     test runs packages in parallel); since a live PID is never swept, the
//     sweep never touches the objects of a run that is still alive.
//   - On SIGINT/SIGTERM the process removes its own objects before it dies
//     (see installSignalCleanup), and processes started by the harness carry
//     PR_SET_PDEATHSIG=SIGKILL so they die with the test binary.
//   - Nothing is ever created in the machine's own network namespace: a node
//     namespace has no link to the root namespace, so deleting the namespaces
//     removes every link, and no test traffic can leave the machine.
//
// A typical test:
//
//	func TestPodToPod(t *testing.T) {
//		e := harness.New(t) // skips unless root (fails under WARP_E2E_REQUIRED=1)
//		node, pod := e.NetNS("node1"), e.NetNS("pod1")
//		veth := e.Plugin(t, "warp-veth")
//		conf := harness.ConfigJSON(t, harness.NetConf("net1", "warp-veth", map[string]any{...}))
//		res := harness.ParseResult(t, veth.MustSucceed(t, harness.Call{
//			Command: "ADD", ContainerID: "c1", Netns: pod.Path, IfName: "eth0", Config: conf}))
//		pod.Exec(t, "ip", "addr")
//		...
//	}
package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// runIDPrefix starts every run ID. Sweep only considers names made of this
	// prefix, a canonical base-36 PID and "-", so that it does not mistake
	// namespaces of other tools for leftovers of ours.
	runIDPrefix = "wt"
	// tempPrefix starts the name of every temp dir ("warpnet-test-<runID>-...").
	tempPrefix = "warpnet-test-"
	// cgroupParent is the directory under the cgroup2 mount that holds one
	// directory per run. It keeps test cgroups away from the root cgroup and
	// makes them easy to find for Sweep.
	cgroupParent = "warpnet-test"
	// maxPID is the kernel's PID_MAX_LIMIT; larger numbers cannot be a PID.
	maxPID = 1 << 22
)

// EnvRequired names the environment variable CI sets to "1": then a test that
// would be skipped for lack of root, tools or plugin binaries fails instead,
// so that a misconfigured CI machine cannot pass by skipping everything.
const EnvRequired = "WARP_E2E_REQUIRED"

// CommandTimeout bounds every command the harness runs on a test's behalf
// without an explicit context (NetNS.Exec, ip invocations, Plugin.MustSucceed,
// Plugin.MustFail), so that a hung command fails the test instead of hanging
// the package until go test's global timeout. Use NetNS.Run or Plugin.Exec
// with your own context for longer commands.
var CommandTimeout = 2 * time.Minute

// waitDelay bounds how long Wait waits for output pipes held open by
// grandchildren after the direct child has exited.
const waitDelay = 5 * time.Second

var (
	runID  = makeRunID(os.Getpid())
	envSeq atomic.Int64

	initOnce sync.Once
	initErr  error

	nameRE = regexp.MustCompile(`^[A-Za-z0-9_.]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$`)
)

// RunID returns the run ID of this process, "wt" + base36(pid). Every object
// the harness creates starts with it (temp dirs after "warpnet-test-").
func RunID() string { return runID }

func makeRunID(pid int) string { return runIDPrefix + strconv.FormatInt(int64(pid), 36) }

// parseRunID returns the PID encoded in a run ID. Only the canonical encoding
// is accepted (no leading zeros, lower case), which keeps the set of names the
// sweep may delete as small as possible.
func parseRunID(id string) (int, bool) {
	s, ok := strings.CutPrefix(id, runIDPrefix)
	if !ok || s == "" || len(s) > 5 { // base36(4194304) has 5 digits
		return 0, false
	}
	n, err := strconv.ParseInt(s, 36, 64)
	if err != nil || n <= 0 || n > maxPID || strconv.FormatInt(n, 36) != s {
		return 0, false
	}
	return int(n), true
}

// ownerPID returns the PID of the run that owns an object named
// "<runID>-<rest>".
func ownerPID(name string) (int, bool) {
	id, rest, found := strings.Cut(name, "-")
	if !found || rest == "" {
		return 0, false
	}
	return parseRunID(id)
}

// pidAlive reports whether a process with this PID exists. A zombie counts as
// alive: its PID cannot be reused until it is reaped, and the parent that
// still has to reap it is alive. If a dead run's PID has been reused, its
// leftovers merely survive until that process exits too (conservative).
func pidAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

func required() bool {
	v, _ := strconv.ParseBool(os.Getenv(EnvRequired))
	return v
}

// skipOrFatal implements the skip policy: skip normally, fail under CI
// (WARP_E2E_REQUIRED=1), because there a skip would hide a broken setup.
func skipOrFatal(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if required() {
		t.Fatalf("%s (not skipping: %s=1)", msg, EnvRequired)
		return
	}
	t.Skip(msg)
}

// RequireRoot skips the test unless it runs as root (namespaces, cgroups and
// CNI plugins need root); it fails instead when WARP_E2E_REQUIRED=1.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFatal(t, "e2e test needs root (euid is %d)", os.Geteuid())
	}
}

// RequireTools skips the test unless every named tool is available: a bare
// name must be found in PATH, a name with a slash must exist. It fails instead
// when WARP_E2E_REQUIRED=1.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	for _, name := range names {
		if toolAvailable(name) {
			continue
		}
		missing = append(missing, name)
	}
	if len(missing) > 0 {
		skipOrFatal(t, "e2e test needs missing tools: %v", missing)
	}
}

func toolAvailable(name string) bool {
	if strings.ContainsRune(name, '/') {
		_, err := os.Stat(name)
		return err == nil
	}
	_, err := exec.LookPath(name)
	return err == nil
}

// Env is one test's view of the harness. It owns everything it creates and
// removes it when the test ends. Its methods fail the test that created it
// (t.Fatal), so call them from that test's goroutine; parallel subtests
// should each have their own Env.
type Env struct {
	// RunID identifies this process ("wt" + base36(pid)); shared by all Envs
	// of the process.
	RunID string
	// Prefix starts the names of this Env's namespaces ("<RunID>-<seq>"). The
	// per-process sequence number keeps parallel tests of one package from
	// colliding when they use the same short names ("node1").
	Prefix string
	// TempDir is private to this Env and removed at cleanup.
	TempDir string

	t        testing.TB
	mu       sync.Mutex
	cleanups []cleanup
	closed   bool
}

type cleanup struct {
	what string
	fn   func() error
}

// New returns a fresh Env. It skips (or fails, see RequireRoot) unless the
// test runs as root with ip and nsenter available, sweeps leftovers of dead
// runs once per process, and registers a t.Cleanup that removes everything
// the Env created in reverse order, reporting errors without stopping.
func New(t testing.TB) *Env {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "ip", "nsenter")
	initOnce.Do(func() {
		// Nothing of this process exists yet, so objects that carry our own
		// run ID are leftovers of a dead earlier process that had the same
		// PID; remove them too, or our names would collide with them.
		initErr = sweep(func(pid int) bool { return pid == os.Getpid() || !pidAlive(pid) })
		installSignalCleanup()
	})
	if initErr != nil {
		t.Logf("harness: sweeping leftovers of earlier runs: %v", initErr)
	}
	seq := envSeq.Add(1)
	e := &Env{
		RunID:  runID,
		Prefix: fmt.Sprintf("%s-%d", runID, seq),
		t:      t,
	}
	t.Cleanup(e.cleanup)
	dir, err := os.MkdirTemp("", tempPrefix+e.Prefix+"-")
	if err != nil {
		t.Fatalf("harness: temp dir: %v", err)
	}
	e.TempDir = dir
	e.Defer("remove temp dir "+dir, func() error { return removeTempDir(dir) })
	return e
}

// Defer registers fn to run at the Env's cleanup, before everything that was
// created earlier and after everything created later. Errors are reported
// with t.Errorf and do not stop the remaining cleanups. Features may use it
// for their own objects (daemons, mounts) so that the order stays correct.
// After the cleanup has run, Defer runs fn at once.
func (e *Env) Defer(what string, fn func() error) {
	e.mu.Lock()
	if !e.closed {
		e.cleanups = append(e.cleanups, cleanup{what, fn})
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	e.runCleanup(cleanup{what, fn})
}

func (e *Env) cleanup() {
	e.mu.Lock()
	list := e.cleanups
	e.cleanups, e.closed = nil, true
	e.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		e.runCleanup(list[i])
	}
}

func (e *Env) runCleanup(c cleanup) {
	defer func() {
		if r := recover(); r != nil {
			e.t.Errorf("harness cleanup: %s: panic: %v", c.what, r)
		}
	}()
	if err := c.fn(); err != nil {
		e.t.Errorf("harness cleanup: %s: %v", c.what, err)
	}
}

// fatalf fails the test that owns the Env.
func (e *Env) fatalf(format string, args ...any) {
	e.t.Helper()
	e.t.Fatalf("harness: "+format, args...)
}

// objName returns the full name of an object this Env creates, validating the
// short name so that it is usable as a file name and in shell output.
func (e *Env) objName(name string) string {
	e.t.Helper()
	if !nameRE.MatchString(name) || len(name) > 64 {
		e.fatalf("invalid object name %q (use letters, digits, '.', '_' and '-')", name)
	}
	return e.Prefix + "-" + name
}

// installSignalCleanup makes SIGINT and SIGTERM remove this process's
// namespaces, cgroups and temp dirs before the process dies, then re-raises
// the signal so that go test still sees the test binary die of it. Without
// this, t.Cleanup never runs on a signal. Whatever the handler cannot remove
// (and everything after SIGKILL) is removed by the next run's Sweep, because
// by then this PID is dead.
func installSignalCleanup() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		fmt.Fprintf(os.Stderr, "harness: %v: removing the objects of run %s\n", sig, runID)
		done := make(chan error, 1)
		go func() { done <- sweep(func(pid int) bool { return pid == os.Getpid() }) }()
		select {
		case err := <-done:
			if err != nil {
				fmt.Fprintf(os.Stderr, "harness: cleanup after %v: %v\n", sig, err)
			}
		case <-time.After(20 * time.Second):
			fmt.Fprintf(os.Stderr, "harness: cleanup after %v timed out; the next run's sweep will finish it\n", sig)
		}
		signal.Reset(sig)
		_ = unix.Kill(os.Getpid(), sig.(syscall.Signal))
		time.Sleep(5 * time.Second)
		os.Exit(2)
	}()
}

// Until polls cond every interval until it holds (true) or timeout passes
// (false): the one polling loop, for callers that report a timeout their
// own way (with the state they last saw) or poll something costly (an API
// server) less often.
func Until(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}

// WaitFor polls cond every 20ms until it holds, failing the test with what
// after timeout. Tests use it instead of sleeping a guessed time.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !Until(timeout, 20*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}
