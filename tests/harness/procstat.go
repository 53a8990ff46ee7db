package harness

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcStat is what /proc/<pid>/stat tells tests and benchmarks about a
// process.
type ProcStat struct {
	State byte // R, S, D, Z (exited, not reaped), ...
	// CPU is the process's user and system time so far; ChildrenCPU that of
	// its children it has waited for (kube-proxy's iptables-restore runs).
	CPU, ChildrenCPU time.Duration
}

// ReadProcStat reads process pid's /proc/<pid>/stat.
func ReadProcStat(pid int) (ProcStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	// The fields after the command name, which is in parentheses and may
	// itself hold ") ": state is the first of them; utime, stime, cutime
	// and cstime the 12th to 15th, in clock ticks (USER_HZ, 100 on Linux).
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:]))
	if i < 0 || len(f) < 15 || len(f[0]) != 1 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, data)
	}
	var ticks [4]time.Duration
	for j := range ticks {
		n, err := strconv.ParseInt(f[11+j], 10, 64)
		if err != nil {
			return ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks[j] = time.Duration(n) * time.Second / 100
	}
	return ProcStat{State: f[0][0], CPU: ticks[0] + ticks[1], ChildrenCPU: ticks[2] + ticks[3]}, nil
}
