package bench

import (
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/warpnet/warpnet/tests/harness"
)

// startInCgroup starts argv inside network namespace n as a process born
// in cgroup cg (so that cgroup hooks see its sockets from the first one),
// with its output collected; it is killed at the end of the benchmark if
// still running.
func startInCgroup(b *testing.B, cg *harness.Cgroup, n *harness.NetNS, argv ...string) (*exec.Cmd, *harness.OutputBuffer) {
	dir, err := os.Open(cg.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path, "--"}, argv...)...)
	out := &harness.OutputBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %v: %v", argv, err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, out
}
