package bench

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/loadgen/report"
)

var (
	loadgenOnce sync.Once
	loadgenPath string
	loadgenErr  error
)

// loadgen builds tests/loadgen once per bench process and returns its path.
func loadgen(b *testing.B) string {
	loadgenOnce.Do(func() {
		dir, err := filepath.Abs(filepath.Join(harness.BinDir(), "test-tools"))
		if err != nil {
			loadgenErr = err
			return
		}
		loadgenPath = filepath.Join(dir, "loadgen")
		cmd := exec.Command("go", "build", "-o", loadgenPath, "./tests/loadgen")
		cmd.Dir = harness.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			loadgenErr = err
			loadgenPath = string(out)
		}
	})
	if loadgenErr != nil {
		b.Fatalf("build tests/loadgen: %v\n%s", loadgenErr, loadgenPath)
	}
	return loadgenPath
}

// serveLoadgen starts loadgen's TCP and UDP echo servers in n on port,
// waits until they listen and returns the server's process.
func serveLoadgen(b *testing.B, n *harness.NetNS, port string) *os.Process {
	cmd := n.Start(b, loadgen(b), "serve", "--tcp", ":"+port, "--udp", ":"+port)
	harness.WaitFor(b, "loadgen serve in "+n.Name, 10*time.Second, func() bool {
		return strings.Contains(harness.Output(cmd), "ready")
	})
	return cmd.Process
}

// runLoadgen runs a loadgen client (mode rr, crr or udprr) in n and returns
// its report; errors fail the benchmark.
func runLoadgen(b *testing.B, n *harness.NetNS, mode, addr string, samples int) report.Report {
	r, _ := runLoadgenCPU(b, n, mode, addr, samples)
	return r
}

// runLoadgenCPU is runLoadgen that also returns the client's CPU time.
func runLoadgenCPU(b *testing.B, n *harness.NetNS, mode, addr string, samples int) (report.Report, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, cpu, err := n.RunCPU(ctx, loadgen(b), mode, "--addr", addr, "--n", strconv.Itoa(samples), "--timeout", "2m")
	var r report.Report
	i := strings.Index(out, "{")
	if err != nil || i < 0 || json.Unmarshal([]byte(out[i:]), &r) != nil || r.Errors > 0 {
		b.Fatalf("loadgen %s %s in %s: %v\n%s", mode, addr, n.Name, err, out)
	}
	return r, cpu
}

// processCPU is the CPU time (user and system) process pid has used so
// far (in clock ticks of 10 ms).
func processCPU(b *testing.B, pid int) time.Duration {
	st, err := harness.ReadProcStat(pid)
	if err != nil {
		b.Fatal(err)
	}
	return st.CPU
}
