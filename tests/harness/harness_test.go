package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// reach checks that a TCP connection from namespace from to ip (an address
// of namespace to) works: the listener is opened inside to, the dial happens
// inside from. Nothing runs in the machine's namespace.
func reach(t *testing.T, from, to *NetNS, ip string) {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(ip, "0"))
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", ip, to, err)
	}
	defer ln.Close()
	want := "hello from " + to.Name
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte(want))
	}()
	var got []byte
	err := from.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		got, err = io.ReadAll(c)
		return err
	})
	if err != nil || string(got) != want {
		t.Fatalf("%s -> %s (%s): got %q, %v", from, to, ln.Addr(), got, err)
	}
}

func TestVethIPv4IPv6(t *testing.T) {
	t.Parallel()
	e := New(t)
	a, b := e.NetNS("a"), e.NetNS("b")
	e.Veth(a, "wtva0", b, "wtvb0")
	e.Addr(a, "wtva0", "10.200.0.1/24")
	e.Addr(b, "wtvb0", "10.200.0.2/24")
	e.Addr(a, "wtva0", "fd00:200::1/64")
	e.Addr(b, "wtvb0", "fd00:200::2/64")

	if out := a.Exec(t, "ip", "-o", "addr", "show", "dev", "wtva0"); !strings.Contains(out, "10.200.0.1/24") || !strings.Contains(out, "fd00:200::1/64") {
		t.Fatalf("addresses of wtva0 in %s:\n%s", a, out)
	}
	// Neither end ever existed in the machine's namespace.
	for _, name := range []string{"wtva0", "wtvb0"} {
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("link %s exists in the machine's namespace", name)
		}
	}
	reach(t, a, b, "10.200.0.2")
	reach(t, b, a, "10.200.0.1")
	reach(t, a, b, "fd00:200::2")
	reach(t, b, a, "fd00:200::1")
}

func TestBridge(t *testing.T) {
	t.Parallel()
	e := New(t)
	hub := e.NetNS("hub")
	var pods []*NetNS
	var ports []string
	for i := 1; i <= 3; i++ {
		p := e.NetNS(fmt.Sprintf("pod%d", i))
		port := fmt.Sprintf("hp%d", i)
		e.Veth(p, "eth0", hub, port)
		e.Addr(p, "eth0", fmt.Sprintf("10.201.0.%d/24", i))
		e.Addr(p, "eth0", fmt.Sprintf("fd00:201::%d/64", i))
		pods, ports = append(pods, p), append(ports, port)
	}
	e.Bridge(hub, "br0", ports...)
	// Count "master br0" rather than lines: ip may add warnings to the
	// output when other tests delete namespaces meanwhile.
	if out := hub.Exec(t, "ip", "-o", "link", "show", "master", "br0"); strings.Count(out, "master br0") != 3 {
		t.Fatalf("ports of br0:\n%s", out)
	}
	for i, from := range pods {
		for j, to := range pods {
			if i != j {
				reach(t, from, to, fmt.Sprintf("10.201.0.%d", j+1))
				reach(t, from, to, fmt.Sprintf("fd00:201::%d", j+1))
			}
		}
	}
}

// Parallel tests of one process use the same short names without clashing.
func TestSameNamesInParallel(t *testing.T) {
	t.Parallel()
	for i := range 2 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			e := New(t)
			n := e.NetNS("node")
			if !strings.HasPrefix(n.Name, RunID()+"-") || !strings.HasSuffix(n.Name, "-node") {
				t.Errorf("netns name %q", n.Name)
			}
			n.Exec(t, "true")
		})
	}
}

func TestCgroup(t *testing.T) {
	t.Parallel()
	RequireRoot(t)
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	var path string
	var started, plain *exec.Cmd
	t.Run("env", func(t *testing.T) {
		e := New(t)
		pod := e.NetNS("pod")
		started = pod.Start(t, "sleep", "30")
		cg := e.Cgroup("pod")
		path = cg.Path
		if want := filepath.Join(mnt, "warpnet-test", RunID()) + "/"; !strings.HasPrefix(path, want) {
			t.Fatalf("cgroup %s is not under %s", path, want)
		}
		if err := cg.AddPID(started.Process.Pid); err != nil {
			t.Fatal(err)
		}
		// A process not started through the harness, only added to the cgroup.
		plain = exec.Command("sleep", "30")
		plain.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := plain.Start(); err != nil {
			t.Fatal(err)
		}
		if err := cg.AddPID(plain.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if err := cg.AddPID(os.Getpid()); err == nil {
			t.Error("AddPID accepted the test binary itself")
		}
		pids, err := cg.PIDs()
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range []int{started.Process.Pid, plain.Process.Pid} {
			if !slices.Contains(pids, pid) {
				t.Errorf("pid %d not in cgroup.procs %v", pid, pids)
			}
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if want := "0::" + strings.TrimPrefix(path, mnt) + "\n"; !strings.Contains(string(data), want) {
				t.Errorf("/proc/%d/cgroup lacks %q:\n%s", pid, want, data)
			}
		}
	})
	if path == "" || started == nil || plain == nil {
		return // the subtest failed or was skipped early
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("cgroup %s still exists after cleanup (%v)", path, err)
	}
	if started.ProcessState == nil || started.ProcessState.Success() {
		t.Errorf("started process was not killed and reaped: %v", started.ProcessState)
	}
	waited := make(chan error, 1)
	go func() { waited <- plain.Wait() }()
	select {
	case <-waited:
		if ws := plain.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Errorf("process added with AddPID: %v, want killed", plain.ProcessState)
		}
	case <-time.After(5 * time.Second):
		_ = plain.Process.Kill()
		t.Error("process added with AddPID still runs after cleanup")
	}
}

func TestPluginHostLocal(t *testing.T) {
	RequireTools(t, "/usr/lib/cni/host-local")
	e := New(t)
	pod := e.NetNS("pod")
	hl := e.Plugin(t, "host-local")
	dataDir := filepath.Join(e.TempDir, "ipam")
	conf := ConfigJSON(t, NetConf("warp-harness", "host-local", map[string]any{
		"ipam": map[string]any{"type": "host-local", "subnet": "10.202.0.0/24", "dataDir": dataDir},
	}))
	_, subnet, _ := net.ParseCIDR("10.202.0.0/24")
	// A stray CNI_* variable of the caller must not reach the plugin.
	t.Setenv("CNI_COMMAND", "DEL")

	add := Call{Command: "ADD", ContainerID: "c1", Netns: pod.Path, IfName: "eth0", Config: conf}
	res := ParseResult(t, hl.MustSucceed(t, add))
	if len(res.IPs) != 1 || !subnet.Contains(res.IPs[0].Address.IP) {
		t.Fatalf("ADD result %+v, want one IP in %s", res, subnet)
	}
	ip1 := res.IPs[0].Address.IP.String()
	lease := filepath.Join(dataDir, "warp-harness", ip1)
	if _, err := os.Stat(lease); err != nil {
		t.Fatalf("no lease file: %v", err)
	}

	add2 := add
	add2.ContainerID = "c2"
	o, err := hl.Exec(t.Context(), add2)
	if err != nil || o.ExitCode != 0 || o.Err != nil {
		t.Fatalf("second ADD: %v, %v", err, o)
	}
	if ip2 := ParseResult(t, o.Stdout).IPs[0].Address.IP.String(); ip2 == ip1 {
		t.Fatalf("second ADD got the same IP %s", ip2)
	}

	del := add
	del.Command = "DEL"
	hl.MustSucceed(t, del)
	if _, err := os.Stat(lease); !os.IsNotExist(err) {
		t.Fatalf("lease %s still there after DEL (%v)", lease, err)
	}

	bad := add
	bad.Config = []byte("{not json")
	if e := hl.MustFail(t, bad, types.ErrDecodingFailure); e.Msg == "" {
		t.Error("CNI error without message")
	}
	bad.Config = ConfigJSON(t, NetConf("warp-harness", "host-local", map[string]any{"cniVersion": "99.0.0"}))
	o, err = hl.Exec(t.Context(), bad)
	if err != nil || o.ExitCode == 0 || o.Err == nil || o.Err.Code != types.ErrIncompatibleCNIVersion {
		t.Fatalf("ADD with unknown cniVersion: %v, %v, %+v", err, o, o.Err)
	}

	// Start: runs in the background; here just VERSION.
	cmd, err := hl.Start(Call{Command: "VERSION", Config: []byte(`{"cniVersion":"1.0.0"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(Output(cmd), "supportedVersions") {
		t.Fatalf("VERSION: %v: %s", err, Output(cmd))
	}
}

// fakeTB records Skip and Fatal instead of ending the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Skip(...any)           { f.skipped = true }
func (f *fakeTB) Fatalf(string, ...any) { f.failed = true }

func TestSkipPolicy(t *testing.T) {
	for _, tc := range []struct {
		env          string
		skip, failed bool
	}{{"", true, false}, {"0", true, false}, {"1", false, true}} {
		t.Setenv(EnvRequired, tc.env)
		f := &fakeTB{TB: t}
		RequireTools(f, "sh", "/nonexistent/warp-tool")
		if f.skipped != tc.skip || f.failed != tc.failed {
			t.Errorf("%s=%q: skipped %v failed %v, want %v %v", EnvRequired, tc.env, f.skipped, f.failed, tc.skip, tc.failed)
		}
		f = &fakeTB{TB: t}
		RequireTools(f, "sh", "/bin/sh")
		if f.skipped || f.failed {
			t.Errorf("%s=%q: present tools: skipped %v failed %v", EnvRequired, tc.env, f.skipped, f.failed)
		}
	}
}

func TestNames(t *testing.T) {
	if id := makeRunID(123456); id != "wt2n9c" {
		t.Errorf("makeRunID(123456) = %q", id)
	}
	for name, want := range map[string]int{
		"wt2n9c-1-node":      123456,
		"wt1-x":              1,
		"wt2n9c":             0, // no "-": not an object name
		"wt02n9c-1-node":     0, // not canonical
		"wt2N9C-1-node":      0,
		"wtzzzzzz-1-node":    0, // beyond PID_MAX_LIMIT
		"worker-1":           0,
		"cni-1234-5678-abcd": 0,
		"wt-":                0,
	} {
		pid, ok := ownerPID(name)
		if ok != (want != 0) || pid != want {
			t.Errorf("ownerPID(%q) = %d, %v; want %d", name, pid, ok, want)
		}
	}
	if pid, ok := parseRunID("wt2n9c"); !ok || pid != 123456 {
		t.Errorf("parseRunID(wt2n9c) = %d, %v", pid, ok)
	}
	if root := RepoRoot(); root == "" || goModModule(must(os.ReadFile(filepath.Join(root, "go.mod")))) != modulePath {
		t.Errorf("RepoRoot() = %q", root)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// The helper process: a test run that creates objects and then dies without
// cleaning up (SIGKILL), or is interrupted (SIGINT/SIGTERM).

const helperEnv = "WARP_HARNESS_HELPER"

type helperReport struct {
	RunID, NetNS, Cgroup, TempDir string
	StartedPID                    int // started with NetNS.Start: dies with the helper
	CgroupPID                     int // plain child, moved into the cgroup
	NetnsPID                      int // plain child, running in the namespace
}

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		// Only a re-executed child does anything; returning (not
		// skipping) keeps CI's no-skip rule meaningful.
		return
	}
	e := New(t)
	node := e.NetNS("node")
	started := node.Start(t, "sleep", "120")
	cg := e.Cgroup("pod")
	// Processes without PR_SET_PDEATHSIG, so that they outlive the helper.
	inCg := exec.Command("sleep", "120")
	if err := inCg.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cg.AddPID(inCg.Process.Pid); err != nil {
		t.Fatal(err)
	}
	inNs := exec.Command("nsenter", "--net="+node.Path, "--", "sleep", "120")
	if err := inNs.Start(); err != nil {
		t.Fatal(err)
	}
	var nsSt, st unix.Stat_t
	if err := unix.Stat(node.Path, &nsSt); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", inNs.Process.Pid), &st) == nil && st.Ino == nsSt.Ino && st.Dev == nsSt.Dev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nsenter did not enter the namespace")
		}
	}
	if err := os.WriteFile(filepath.Join(e.TempDir, "state"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(helperReport{
		RunID: e.RunID, NetNS: node.Path, Cgroup: cg.Path, TempDir: e.TempDir,
		StartedPID: started.Process.Pid, CgroupPID: inCg.Process.Pid, NetnsPID: inNs.Process.Pid,
	})
	fmt.Printf("HELPER-READY %s\n", b)
	time.Sleep(2 * time.Minute) // until the parent kills us
	t.Error("helper was not killed")
}

// runHelper re-executes the test binary as a helper and waits until it has
// created its objects.
func runHelper(t *testing.T) (*exec.Cmd, helperReport) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr := &OutputBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err := Sweep(); err != nil { // whatever a failed test left
			t.Errorf("Sweep: %v", err)
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var all []string
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "HELPER-READY "); ok {
				lines <- rest
			}
			all = append(all, sc.Text())
		}
		lines <- "EOF " + strings.Join(all, "\n")
	}()
	select {
	case line := <-lines:
		var rep helperReport
		if err := json.Unmarshal([]byte(line), &rep); err != nil {
			t.Fatalf("helper: %s\nstderr: %s", line, stderr)
		}
		if id, _, _ := strings.Cut(filepath.Base(rep.NetNS), "-"); id != makeRunID(cmd.Process.Pid) || rep.RunID != id {
			t.Fatalf("helper run ID %s / netns %s, helper pid %d", rep.RunID, rep.NetNS, cmd.Process.Pid)
		}
		return cmd, rep
	case <-time.After(60 * time.Second):
		t.Fatalf("helper did not get ready; stderr: %s", stderr)
	}
	panic("unreachable")
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func waitProcessGone(pid int, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); processExists(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func checkHelperObjects(t *testing.T, rep helperReport, wantExist bool) {
	t.Helper()
	for _, p := range []string{rep.NetNS, rep.Cgroup, filepath.Dir(rep.Cgroup), rep.TempDir} {
		if exists(p) != wantExist {
			t.Errorf("%s: exists=%v, want %v", p, !wantExist, wantExist)
		}
	}
	for _, pid := range []int{rep.CgroupPID, rep.NetnsPID} {
		if wantExist && !processExists(pid) {
			t.Errorf("pid %d is gone, want it left over", pid)
		}
		if !wantExist && !waitProcessGone(pid, 5*time.Second) {
			t.Errorf("pid %d still runs", pid)
		}
	}
}

// A SIGKILLed run leaves its objects behind; the next Sweep removes them and
// leaves the objects of live runs alone.
func TestSweepAfterKill(t *testing.T) {
	t.Parallel()
	e := New(t)
	live := e.NetNS("live")
	liveCg := e.Cgroup("live")
	liveSleep := live.Start(t, "sleep", "60")
	if err := liveCg.AddPID(liveSleep.Process.Pid); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(e.TempDir, "keep")
	if err := os.WriteFile(keep, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	cmd, rep := runHelper(t)
	checkHelperObjects(t, rep, true)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait for the helper's death without reaping it: as a zombie its PID
	// still counts as alive, so the sweep of a concurrently starting test
	// package cannot remove its leftovers before we have checked them.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			t.Fatalf("waitid: %v", err)
		}
	}
	if !waitProcessGone(rep.StartedPID, 5*time.Second) {
		t.Errorf("process started with NetNS.Start (pid %d) outlived its test binary", rep.StartedPID)
	}
	checkHelperObjects(t, rep, true) // the killed run cleaned up nothing
	_ = cmd.Wait()                   // now its PID is dead

	if err := Sweep(); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	checkHelperObjects(t, rep, false)

	// This process's objects are untouched.
	live.Exec(t, "ip", "link", "show", "lo")
	if pids, err := liveCg.PIDs(); err != nil || !slices.Contains(pids, liveSleep.Process.Pid) {
		t.Errorf("live cgroup: %v, %v", pids, err)
	}
	if !exists(keep) || !processExists(liveSleep.Process.Pid) {
		t.Error("Sweep touched the live run's temp dir or process")
	}
}

// SIGINT/SIGTERM make the run remove its own objects before it dies of the
// signal.
func TestSignalCleanup(t *testing.T) {
	t.Parallel()
	RequireRoot(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			cmd, rep := runHelper(t)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(40 * time.Second):
				t.Fatal("helper did not exit after the signal")
			}
			if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != sig {
				t.Errorf("helper exited with %v, want death by %v", cmd.ProcessState, sig)
			}
			checkHelperObjects(t, rep, false)
		})
	}
}
