package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps named namespaces.
const netnsDir = "/run/netns"

// NetNS is a named network namespace created by an Env: a simulated node or
// pod. It has no link to the machine's namespace unless a test makes one (and
// tests must not).
type NetNS struct {
	Name string // "<runID>-<seq>-<name>"
	Path string // /run/netns/<Name>

	env *Env
}

// NetNS creates a network namespace with `ip netns add` and brings its
// loopback up (a fresh namespace has lo down, which surprises servers bound
// to 127.0.0.1). It is deleted at cleanup, after killing any process still in
// it, so that no process keeps it (and its links) alive. Fails the test on
// error.
func (e *Env) NetNS(name string) *NetNS {
	e.t.Helper()
	full := e.objName(name)
	if err := runIP("netns", "add", full); err != nil {
		e.fatalf("%v", err)
	}
	n := &NetNS{Name: full, Path: filepath.Join(netnsDir, full), env: e}
	e.Defer("delete netns "+full, func() error { return deleteNetNS(full) })
	if err := runIP("-n", full, "link", "set", "lo", "up"); err != nil {
		e.fatalf("%v", err)
	}
	return n
}

// String returns the namespace's name.
func (n *NetNS) String() string { return n.Name }

// command builds `nsenter --net=<Path> -- argv...`. nsenter rather than
// `ip netns exec`: the latter also unshares the mount namespace and remounts
// /sys, which hides the cgroup mounts that cgroup-BPF programs and container
// runtimes need.
func (n *NetNS) command(ctx context.Context, argv []string) *exec.Cmd {
	args := append([]string{"--net=" + n.Path, "--"}, argv...)
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, "nsenter", args...)
	} else {
		cmd = exec.Command("nsenter", args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = waitDelay
	return cmd
}

// Run runs argv inside the namespace and returns its combined output. A
// failure (including a non-zero exit) is an error whose text contains the
// output.
func (n *NetNS) Run(ctx context.Context, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("harness: NetNS.Run: empty command")
	}
	out, err := n.command(ctx, argv).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in netns %s: %s: %w\n%s", n.Name, quote(argv), err, out)
	}
	return string(out), nil
}

// RunCPU is Run that also returns the CPU time the command used, user and
// system (with the kernel's work done in its context, such as the softirqs
// its sends run), its waited-for children included.
func (n *NetNS) RunCPU(ctx context.Context, argv ...string) (string, time.Duration, error) {
	if len(argv) == 0 {
		return "", 0, errors.New("harness: NetNS.RunCPU: empty command")
	}
	cmd := n.command(ctx, argv)
	out, err := cmd.CombinedOutput()
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return string(out), cpu, fmt.Errorf("in netns %s: %s: %w\n%s", n.Name, quote(argv), err, out)
	}
	return string(out), cpu, nil
}

// Exec is Run bounded by CommandTimeout that fails the test on error.
func (n *NetNS) Exec(t testing.TB, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), CommandTimeout)
	defer cancel()
	out, err := n.Run(ctx, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Start starts argv in the background inside the namespace. Its stdout and
// stderr go to an *OutputBuffer (read it with Output). At t's cleanup the
// process is killed with SIGKILL (only this process, through its pidfd, so a
// recycled PID is never hit) and reaped; if the test failed its output is
// logged. It also dies with the test binary (PR_SET_PDEATHSIG), so a killed
// test run does not leave it behind. If the test calls cmd.Wait itself, it
// must do so before the test ends.
func (n *NetNS) Start(t testing.TB, argv ...string) *exec.Cmd {
	t.Helper()
	if len(argv) == 0 {
		t.Fatal("harness: NetNS.Start: empty command")
	}
	cmd := n.command(nil, argv)
	buf := &OutputBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatalf("harness: start %s in netns %s: %v", quote(argv), n.Name, err)
	}
	p := &proc{cmd: cmd}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("harness cleanup: %s in netns %s: %v", quote(argv), n.Name, err)
		}
		if t.Failed() && buf.Len() > 0 {
			t.Logf("output of %s in netns %s:\n%s", quote(argv), n.Name, buf.String())
		}
	})
	return cmd
}

// Do runs fn on a goroutine locked to an OS thread that has entered the
// namespace (containernetworking/plugins/pkg/ns). Sockets created inside fn
// stay in the namespace after it returns, so a listener can be opened in one
// namespace and served from anywhere. Processes started inside fn are not
// tracked by the harness.
func (n *NetNS) Do(fn func() error) error {
	netns, err := ns.GetNS(n.Path)
	if err != nil {
		return fmt.Errorf("harness: open netns %s: %w", n.Name, err)
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error { return fn() })
}

// Veth creates a veth pair with end aName in a and end bName in b and sets
// both up. The pair is created inside a with its peer placed directly in b,
// so it never exists in the machine's namespace. It disappears with the
// namespaces.
func (e *Env) Veth(a *NetNS, aName string, b *NetNS, bName string) {
	e.t.Helper()
	checkIfName(e, aName)
	checkIfName(e, bName)
	for _, args := range [][]string{
		{"-n", a.Name, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name},
		{"-n", a.Name, "link", "set", aName, "up"},
		{"-n", b.Name, "link", "set", bName, "up"},
	} {
		if err := runIP(args...); err != nil {
			e.fatalf("%v", err)
		}
	}
}

// Bridge creates an L2 bridge in n, enslaves the given existing links and sets
// all of them up: a shared L2 segment such as a node's pod bridge or the
// "switch" between simulated nodes. Multicast snooping is off so that the
// bridge floods multicast like a plain switch; otherwise IPv6 neighbour
// discovery could depend on MLD state.
func (e *Env) Bridge(n *NetNS, name string, ports ...string) {
	e.t.Helper()
	checkIfName(e, name)
	cmds := [][]string{
		{"-n", n.Name, "link", "add", name, "type", "bridge", "mcast_snooping", "0"},
		{"-n", n.Name, "link", "set", name, "up"},
	}
	for _, p := range ports {
		cmds = append(cmds,
			[]string{"-n", n.Name, "link", "set", p, "master", name},
			[]string{"-n", n.Name, "link", "set", p, "up"})
	}
	for _, args := range cmds {
		if err := runIP(args...); err != nil {
			e.fatalf("%v", err)
		}
	}
}

// Addr adds an address in CIDR notation to a link in n. IPv6 addresses get
// nodad, so they are usable at once instead of after duplicate address
// detection (about a second of "tentative" state).
func (e *Env) Addr(n *NetNS, link, cidr string) {
	e.t.Helper()
	ip, _, err := net.ParseCIDR(cidr)
	if err != nil {
		e.fatalf("Addr: %v", err)
	}
	args := []string{"-n", n.Name, "addr", "add", cidr, "dev", link}
	if ip.To4() == nil {
		args = append(args, "nodad")
	}
	if err := runIP(args...); err != nil {
		e.fatalf("%v", err)
	}
}

func checkIfName(e *Env, name string) {
	e.t.Helper()
	if name == "" || len(name) > unix.IFNAMSIZ-1 || strings.ContainsAny(name, "/ \t\n:") {
		e.fatalf("invalid interface name %q (at most %d characters, no '/', ':' or spaces)", name, unix.IFNAMSIZ-1)
	}
}

// runIP runs `ip args...` (in the machine's mount and network namespace; use
// "-n NAME" to act inside a namespace) bounded by CommandTimeout.
func runIP(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// deleteNetNS kills the processes living in the namespace (they would keep
// it and its links alive after the name is gone) and deletes it. A namespace
// that is already gone (a concurrent sweeper was faster) is not an error.
func deleteNetNS(name string) error {
	path := filepath.Join(netnsDir, name)
	killNetNSProcs(path)
	err := runIP("netns", "del", name)
	if err != nil {
		if _, serr := os.Lstat(path); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return nil
}

// killNetNSProcs SIGKILLs every process whose network namespace is the one
// mounted at path. Only namespaces created by the harness are passed here,
// so these processes were started by a test (directly or indirectly). The
// test binary itself is never in one: it only enters namespaces on single
// locked threads (NetNS.Do), and /proc/PID/ns/net is the main thread's.
func killNetNSProcs(path string) {
	var nsSt unix.Stat_t
	if err := unix.Stat(path, &nsSt); err != nil {
		return
	}
	var st unix.Stat_t
	for _, own := range []string{"/proc/self/ns/net", "/proc/1/ns/net"} {
		if err := unix.Stat(own, &st); err == nil && st.Dev == nsSt.Dev && st.Ino == nsSt.Ino {
			return // the machine's (or our own) namespace: never a test's
		}
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	var victims []*os.Process
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() || pid <= 1 {
			continue
		}
		if unix.Stat("/proc/"+ent.Name()+"/ns/net", &st) != nil || st.Dev != nsSt.Dev || st.Ino != nsSt.Ino {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil { // a pidfd: safe against PID reuse
			_ = p.Kill()
			victims = append(victims, p)
		}
	}
	// Give the kernel a moment to tear them down, so that the namespace is
	// really gone (with its links) once we return.
	deadline := time.Now().Add(2 * time.Second)
	for _, p := range victims {
		for time.Now().Before(deadline) && processExists(p.Pid) {
			time.Sleep(20 * time.Millisecond)
		}
		_ = p.Release()
	}
}

// processExists reports whether pid is a process that has not exited yet
// (zombies have exited; they only wait to be reaped).
func processExists(pid int) bool {
	st, err := ReadProcStat(pid)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// proc is a child process the harness started and must stop at cleanup.
type proc struct {
	cmd  *exec.Cmd
	once sync.Once
}

// stop SIGKILLs the process and reaps it. os.Process uses a pidfd on Linux,
// so the signal can only reach this very process, even if it has already
// been reaped and its PID reused.
func (p *proc) stop() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill pid %d: %w", p.cmd.Process.Pid, err)
	}
	done := make(chan struct{})
	go func() {
		p.once.Do(func() { _ = p.cmd.Wait() }) // an error here only says how it died
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("pid %d did not exit within 10s of SIGKILL", p.cmd.Process.Pid)
	}
}

// OutputBuffer collects the output of a background process; safe for
// concurrent use. Start and Plugin.Start attach one to cmd.Stdout/Stderr.
type OutputBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *OutputBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *OutputBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Len returns the number of bytes written so far.
func (b *OutputBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// Output returns what a process started by NetNS.Start wrote so far (stdout
// and stderr interleaved), or for Plugin.Start its stdout.
func Output(cmd *exec.Cmd) string {
	if b, ok := cmd.Stdout.(*OutputBuffer); ok {
		return b.String()
	}
	return ""
}

func quote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`") {
			q[i] = strconv.Quote(a)
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}
