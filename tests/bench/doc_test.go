package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/tests/harness"
)

// Every figure in docs/benchmarks.md comes from a bench run of the current
// code: each benchmark publishes its results into the document between the
// markers
//
//	<!-- bench:NAME -->
//	...generated...
//	<!-- /bench:NAME -->
//
// stamped with the date, the commit and the machine. Prose around the
// markers says what is measured and why the results are what they are; it
// quotes no number that the block does not show. `make bench` sets
// WARP_BENCH_DOC=1; an ad hoc `go test -bench` only prints.

// docEnv turns publishing into docs/benchmarks.md on.
const docEnv = "WARP_BENCH_DOC"

// publish prints markdown and, under WARP_BENCH_DOC=1, replaces the block
// named name in docs/benchmarks.md with it (appending the block if the
// document has none yet).
func publish(b *testing.B, name, markdown string) {
	b.Helper()
	block := fmt.Sprintf("<!-- bench:%s -->\n%s\n%s\n<!-- /bench:%s -->", name, stamp(), strings.TrimSpace(markdown), name)
	fmt.Println()
	fmt.Println(block)
	if os.Getenv(docEnv) != "1" {
		return
	}
	path := filepath.Join(harness.RepoRoot(), "docs", "benchmarks.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("publish %s: %v", name, err)
	}
	start, end := []byte("<!-- bench:"+name+" -->"), []byte("<!-- /bench:"+name+" -->")
	i, j := bytes.Index(doc, start), bytes.Index(doc, end)
	switch {
	case i >= 0 && j > i:
		doc = append(append(append([]byte{}, doc[:i]...), block...), doc[j+len(end):]...)
	case i < 0 && j < 0:
		doc = append(bytes.TrimRight(doc, "\n"), []byte("\n\n"+block+"\n")...)
	default:
		b.Fatalf("publish %s: docs/benchmarks.md has a broken %s block", name, name)
	}
	if err := os.WriteFile(path, doc, 0o644); err != nil {
		b.Fatalf("publish %s: %v", name, err)
	}
}

// stamp says when, from which commit and on what machine a block was made.
func stamp() string {
	commit := "unknown commit"
	if out, err := exec.Command("git", "-C", harness.RepoRoot(), "describe", "--always", "--dirty").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown kernel"
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("_Run of %s, commit `%s`, %d × %s, Linux %s, %s._\n",
		time.Now().UTC().Format("2006-01-02"), commit, runtime.NumCPU(), cpu, kernel, runtime.Version())
}

// quantile names the high percentile honestly: a p99 needs 1000 samples or
// more; over fewer it is the maximum and is called so.
func quantile(samples int) (label string, q float64) {
	if samples >= 1000 {
		return "p99", 0.99
	}
	return "max", 1
}
