// Package bench holds `make bench`: warpnet's components measured side by
// side with the reference implementations they replace, in one run, so the
// ratios are fair to both (same machine, same moment).
package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/tests/harness"
)

const (
	ipamSamples = 200 // ADD+DEL pairs measured per configuration
	ipamNetwork = "bench"
)

type latency struct{ add, del []time.Duration }

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// prefill writes existing reservations in the on-disk format both plugins
// share (host-local's: one file per address holding "containerID\r\nifname",
// plus the allocation cursor). Doing it through ADD would take minutes for
// host-local alone, because its ADD reads every reservation file.
func prefill(b *testing.B, dir string, n int) {
	d := filepath.Join(dir, ipamNetwork)
	if err := os.MkdirAll(d, 0o755); err != nil {
		b.Fatal(err)
	}
	ip := netip.MustParseAddr("10.88.0.1")
	for i := 0; i < n; i++ {
		ip = ip.Next()
		if err := os.WriteFile(filepath.Join(d, ip.String()), fmt.Appendf(nil, "prefill%d\r\neth0", i), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(d, "last_reserved_ip.0"), []byte(ip.String()), 0o644)
}

// measureIPAM runs ADD then DEL for fresh containers, so the number of
// existing reservations stays at what prefill wrote. One unmeasured pair
// first lets each plugin settle its directory (warp-ipam indexes the
// prefilled files there, once).
func measureIPAM(b *testing.B, env *harness.Env, pod *harness.NetNS, plugin string, existing int) latency {
	p := env.Plugin(b, plugin)
	dataDir, err := os.MkdirTemp(env.TempDir, plugin+"-")
	if err != nil {
		b.Fatal(err)
	}
	prefill(b, dataDir, existing)
	ipam := map[string]any{"type": plugin, "dataDir": dataDir, "ranges": [][]map[string]any{{{"subnet": "10.88.0.0/16"}}}}
	if plugin == "warp-ipam" {
		ipam["detectConflicts"] = false // host-local has no probe; compare the allocators
	}
	// cniVersion 1.0.0: Debian's host-local predates 1.1.0.
	conf := harness.ConfigJSON(b, harness.NetConf(ipamNetwork, "bench", map[string]any{"cniVersion": "1.0.0", "ipam": ipam}))
	run := func(cmd, id string) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		o, err := p.Exec(ctx, harness.Call{Command: cmd, ContainerID: id, Netns: pod.Path, IfName: "eth0", Config: conf})
		elapsed := time.Since(start)
		if err != nil || o.ExitCode != 0 {
			b.Fatalf("%s %s %s: %v %v", plugin, cmd, id, err, o)
		}
		return elapsed
	}
	run("ADD", "warmup")
	run("DEL", "warmup")
	var l latency
	for i := 0; i < ipamSamples; i++ {
		id := fmt.Sprintf("bench%d", i)
		l.add = append(l.add, run("ADD", id))
		l.del = append(l.del, run("DEL", id))
	}
	if got := countReservations(b, dataDir); got != existing {
		b.Fatalf("%s: %d reservations after the run, want %d", plugin, got, existing)
	}
	return l
}

func countReservations(b *testing.B, dataDir string) int {
	entries, err := os.ReadDir(filepath.Join(dataDir, ipamNetwork))
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			n++
		}
	}
	return n
}

// BenchmarkIPAM compares warp-ipam with the reference host-local plugin:
// ADD and DEL latency (whole plugin process, as a runtime sees it) with 10
// and with 5000 existing reservations. Run with -benchtime 1x: each
// configuration measures a fixed ipamSamples pairs itself.
func BenchmarkIPAM(b *testing.B) {
	harness.RequireTools(b, "/usr/lib/cni/host-local")
	env := harness.New(b)
	pod := env.NetNS("bench")
	plugins := []string{"warp-ipam", "host-local"}
	results := map[string]latency{}
	for _, existing := range []int{10, 5000} {
		for _, plugin := range plugins {
			name := fmt.Sprintf("%s/existing=%d", plugin, existing)
			b.Run(name, func(b *testing.B) {
				l := measureIPAM(b, env, pod, plugin, existing)
				results[name] = l
				b.ReportMetric(float64(pct(l.add, 0.5).Microseconds()), "add-p50-us")
				b.ReportMetric(float64(pct(l.add, 0.99).Microseconds()), "add-p99-us")
				b.ReportMetric(float64(pct(l.del, 0.5).Microseconds()), "del-p50-us")
			})
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "\nIPAM ADD/DEL latency, %d samples each (whole plugin process; lower is better)\n", ipamSamples)
	fmt.Fprintf(&out, "%-10s %-11s %10s %10s %10s %10s\n", "existing", "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99")
	for _, existing := range []int{10, 5000} {
		for _, plugin := range plugins {
			l := results[fmt.Sprintf("%s/existing=%d", plugin, existing)]
			if l.add == nil {
				continue
			}
			fmt.Fprintf(&out, "%-10d %-11s %10s %10s %10s %10s\n", existing, plugin,
				round(pct(l.add, 0.5)), round(pct(l.add, 0.99)), round(pct(l.del, 0.5)), round(pct(l.del, 0.99)))
		}
		w, h := results[fmt.Sprintf("warp-ipam/existing=%d", existing)], results[fmt.Sprintf("host-local/existing=%d", existing)]
		if w.add != nil && h.add != nil {
			fmt.Fprintf(&out, "%-10d %-11s %9.2fx %9.2fx %9.2fx %9.2fx   (host-local / warp-ipam)\n", existing, "ratio",
				ratio(h.add, w.add, 0.5), ratio(h.add, w.add, 0.99), ratio(h.del, w.del, 0.5), ratio(h.del, w.del, 0.99))
		}
	}
	fmt.Print(out.String())
}

func ratio(a, b []time.Duration, p float64) float64 {
	return float64(pct(a, p)) / float64(pct(b, p))
}

func round(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
