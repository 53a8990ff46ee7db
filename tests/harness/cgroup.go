package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/internal/mountinfo"
)

// Cgroup is a private cgroup v2 directory for test "pods". Tests attach
// cgroup BPF programs to it or watch what its processes do; they must never
// do that to the machine's root cgroup.
type Cgroup struct {
	Path string // <cgroup2 mount>/warpnet-test/<runID>/<seq>-<name>

	mu    sync.Mutex
	procs []*os.Process
}

// Cgroup2Mount returns the cgroup2 mount point: $WARP_CGROUP2_ROOT if set
// (it must be a cgroup2 filesystem), else the first cgroup2 mount in
// /proc/self/mountinfo. Hybrid machines mount it at /sys/fs/cgroup/unified,
// pure cgroup v2 nodes at /sys/fs/cgroup, so it has to be detected.
func Cgroup2Mount() (string, error) {
	if v := os.Getenv("WARP_CGROUP2_ROOT"); v != "" {
		var st unix.Statfs_t
		if err := unix.Statfs(v, &st); err != nil {
			return "", fmt.Errorf("WARP_CGROUP2_ROOT=%s: %w", v, err)
		}
		if st.Type != unix.CGROUP2_SUPER_MAGIC {
			return "", fmt.Errorf("WARP_CGROUP2_ROOT=%s is not a cgroup2 filesystem", v)
		}
		return filepath.Clean(v), nil
	}
	return mountinfo.Cgroup2()
}

// Cgroup creates a private cgroup under <cgroup2 mount>/warpnet-test/<runID>/.
// At cleanup the processes added with AddPID that are still in it are
// killed, then any processes left in it (their descendants: the cgroup is
// private to the test, so nothing else can be in it), and the directory is
// removed, retrying briefly while the kernel releases it.
func (e *Env) Cgroup(name string) *Cgroup {
	e.t.Helper()
	short := e.objName(name)[len(e.RunID)+1:] // "<seq>-<name>"
	mnt, err := Cgroup2Mount()
	if err != nil {
		skipOrFatal(e.t, "harness: cgroup v2 needed: %v", err)
	}
	base := filepath.Join(mnt, cgroupParent, e.RunID)
	path := filepath.Join(base, short)
	if filepath.Dir(path) != base || !strings.HasPrefix(path, filepath.Clean(mnt)+"/") {
		e.fatalf("refusing cgroup path %s", path) // never the root cgroup
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		e.fatalf("cgroup: %v", err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		e.fatalf("cgroup: %v", err)
	}
	c := &Cgroup{Path: path}
	e.Defer("remove cgroup "+path, func() error {
		err := c.remove()
		_ = unix.Rmdir(base) // the run's directory, once its last cgroup is gone
		return err
	})
	return c
}

// AddPID moves the process pid into the cgroup and remembers it, through a
// pidfd, to kill it at cleanup. The test binary itself cannot be added: it
// would be killed at cleanup and would keep the cgroup busy.
func (c *Cgroup) AddPID(pid int) error {
	if pid <= 1 || pid == os.Getpid() {
		return fmt.Errorf("harness: refusing to move pid %d into test cgroup %s", pid, c.Path)
	}
	p, err := os.FindProcess(pid) // holds a pidfd: a later Kill cannot hit a recycled PID
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(c.Path, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
		_ = p.Release()
		return fmt.Errorf("harness: add pid %d to cgroup %s: %w", pid, c.Path, err)
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
}

// PIDs returns the processes currently in the cgroup (cgroup.procs).
func (c *Cgroup) PIDs() ([]int, error) { return readPIDs(filepath.Join(c.Path, "cgroup.procs")) }

func (c *Cgroup) remove() error {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()

	members, _ := c.PIDs()
	in := map[int]bool{}
	for _, pid := range members {
		in[pid] = true
	}
	for _, p := range procs {
		if in[p.Pid] {
			_ = p.Kill()
		}
	}
	for _, p := range procs {
		_ = p.Release()
	}
	if !waitUnpopulated(c.Path, time.Second) {
		// What is left are descendants of the processes we killed (the
		// cgroup is private to the test, nothing else can be in it); they
		// would keep the cgroup busy forever.
		killCgroupTree(c.Path)
		waitUnpopulated(c.Path, 3*time.Second)
	}
	return rmdirRetry(c.Path, 5*time.Second)
}

// killCgroupTree SIGKILLs every process in the cgroup dir and below, with
// cgroup.kill (Linux 5.14+) or else one by one. Only called for the harness's
// own private cgroups, whose processes were all started by tests.
func killCgroupTree(dir string) {
	if writeFile(filepath.Join(dir, "cgroup.kill"), "1") == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		pids, _ := readPIDs(filepath.Join(path, "cgroup.procs"))
		for _, pid := range pids {
			if pid <= 1 || pid == os.Getpid() {
				continue
			}
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
				_ = p.Release()
			}
		}
		return nil
	})
}

// waitUnpopulated waits until no live process is in the cgroup tree at dir
// (cgroup.events "populated 0"; zombies do not count) and reports whether
// that happened within timeout. A missing cgroup counts as unpopulated.
func waitUnpopulated(dir string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || !bytes.Contains(data, []byte("populated 1")) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroupTree kills the processes in a cgroup tree and removes its
// directories, children first (cgroupfs directories can only be rmdir'ed,
// never emptied with RemoveAll).
func removeCgroupTree(dir string) error {
	killCgroupTree(dir)
	waitUnpopulated(dir, 5*time.Second)
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- { // WalkDir is pre-order: reversed, children come first
		if err := rmdirRetry(dirs[i], 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// rmdirRetry removes a cgroup directory, retrying on EBUSY while the kernel
// finishes releasing exited processes. Already gone is success.
func rmdirRetry(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			pids, _ := readPIDs(filepath.Join(dir, "cgroup.procs"))
			return fmt.Errorf("rmdir %s: %w (processes: %v)", dir, err, pids)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readPIDs(file string) ([]int, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// writeFile writes to an existing kernel file (no O_CREATE/O_TRUNC).
func writeFile(path, data string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Output runs argv (with env added to this process's environment and stdin
// fed to it) as a process born in the cgroup: clone3 with
// CLONE_INTO_CGROUP, so cgroup BPF programs see its sockets from the first
// one. It returns stdout; stderr is in the error. Bound it with ctx.
func (c *Cgroup) Output(ctx context.Context, env []string, stdin string, argv ...string) ([]byte, error) {
	dir, err := os.Open(c.Path)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	cmd.Stdin = strings.NewReader(stdin)
	cmd.WaitDelay = waitDelay
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s (cgroup %s): %w: %s%s", quote(argv), c.Path, err, out, stderr.Bytes())
	}
	return out, nil
}

// Run runs argv inside network namespace n as a process born in the
// cgroup (see Output), feeding it stdin; it returns the output.
func (c *Cgroup) Run(ctx context.Context, n *NetNS, stdin string, argv ...string) (string, error) {
	out, err := c.Output(ctx, nil, stdin, append([]string{"nsenter", "--net=" + n.Path, "--"}, argv...)...)
	return string(out), err
}
