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
	ipamSamples  = 1000 // ADD+DEL pairs measured per configuration (a p99 needs 1000)
	probeSamples = 20   // each waits a whole probe window: reported as p50 and max
	ipamNetwork  = "bench"
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

// ipamRun is one plugin set up with prefilled reservations, ready to sample.
type ipamRun struct {
	b        *testing.B
	plugin   *harness.Plugin
	pod      *harness.NetNS
	conf     []byte
	dataDir  string
	existing int
	lat      latency
}

// newIPAMRun prefills a data directory and runs one unmeasured ADD+DEL, which
// lets each plugin settle its directory (warp-ipam indexes the prefilled
// files there, once).
func newIPAMRun(b *testing.B, env *harness.Env, pod *harness.NetNS, plugin string, existing int, probe bool) *ipamRun {
	dataDir, err := os.MkdirTemp(env.TempDir, plugin+"-")
	if err != nil {
		b.Fatal(err)
	}
	prefill(b, dataDir, existing)
	ipam := map[string]any{"type": plugin, "dataDir": dataDir, "ranges": [][]map[string]any{{{"subnet": "10.88.0.0/16"}}}}
	if plugin == "warp-ipam" {
		// host-local has no probe: compare the allocators, and measure
		// the probe's cost separately.
		ipam["detectConflicts"] = probe
	}
	r := &ipamRun{b: b, plugin: env.Plugin(b, plugin), pod: pod, dataDir: dataDir, existing: existing,
		// cniVersion 1.0.0: Debian's host-local predates 1.1.0.
		conf: harness.ConfigJSON(b, harness.NetConf(ipamNetwork, "bench", map[string]any{"cniVersion": "1.0.0", "ipam": ipam}))}
	r.run("ADD", "warmup")
	r.run("DEL", "warmup")
	return r
}

func (r *ipamRun) run(cmd, id string) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	o, err := r.plugin.Exec(ctx, harness.Call{Command: cmd, ContainerID: id, Netns: r.pod.Path, IfName: "eth0", Config: r.conf})
	elapsed := time.Since(start)
	if err != nil || o.ExitCode != 0 {
		r.b.Fatalf("%s %s %s: %v %v", r.plugin.Name, cmd, id, err, o)
	}
	return elapsed
}

// sample runs ADD then DEL for a fresh container, so the number of existing
// reservations stays at what prefill wrote.
func (r *ipamRun) sample(i int) {
	id := fmt.Sprintf("bench%d", i)
	r.lat.add = append(r.lat.add, r.run("ADD", id))
	r.lat.del = append(r.lat.del, r.run("DEL", id))
}

func (r *ipamRun) check() {
	if got := len(harness.IPAMReservations(r.dataDir, ipamNetwork)); got != r.existing {
		r.b.Fatalf("%s: %d reservations after the run, want %d", r.plugin.Name, got, r.existing)
	}
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
		// Samples interleave the plugins, and which goes first alternates
		// (going first after the other plugin's run costs ~0.4ms here), so
		// warm-up, drift and position hit both alike.
		b.Run(fmt.Sprintf("existing=%d", existing), func(b *testing.B) {
			var runs []*ipamRun
			for _, plugin := range plugins {
				runs = append(runs, newIPAMRun(b, env, pod, plugin, existing, false))
			}
			for i := 0; i < ipamSamples; i++ {
				for j := range runs {
					runs[(i+j)%len(runs)].sample(i)
				}
			}
			for _, r := range runs {
				r.check()
				results[fmt.Sprintf("%s/existing=%d", r.plugin.Name, existing)] = r.lat
				b.ReportMetric(float64(pct(r.lat.add, 0.5).Microseconds()), r.plugin.Name+"-add-p50-us")
			}
		})
	}

	// Conflict detection waits out one probe window per ADD when nobody
	// answers (all of a dual-stack pod's addresses share it). Measured on a
	// pod whose eth0 is a veth to a silent peer.
	withProbe := env.NetNS("probe")
	env.Veth(withProbe, "eth0", env.NetNS("peer"), "p0")
	var probed latency
	b.Run("warp-ipam+probe/existing=10", func(b *testing.B) {
		r := newIPAMRun(b, env, withProbe, "warp-ipam", 10, true)
		for i := 0; i < probeSamples; i++ {
			r.sample(i)
		}
		r.check()
		probed = r.lat
		b.ReportMetric(float64(pct(probed.add, 0.5).Microseconds()), "add-p50-us")
	})

	hi, q := quantile(ipamSamples)
	var out strings.Builder
	fmt.Fprintf(&out, "warp-ipam vs host-local: ADD and DEL latency of the whole plugin process (as a runtime sees it), "+
		"%d ADD+DEL pairs per plugin and size, interleaved, alternating which plugin goes first; lower is better.\n\n", ipamSamples)
	fmt.Fprintf(&out, "| existing reservations | plugin | ADD p50 | ADD %s | DEL p50 | DEL %s |\n|---:|---|---:|---:|---:|---:|\n", hi, hi)
	for _, existing := range []int{10, 5000} {
		for _, plugin := range plugins {
			l := results[fmt.Sprintf("%s/existing=%d", plugin, existing)]
			if l.add == nil {
				continue
			}
			fmt.Fprintf(&out, "| %d | %s | %s | %s | %s | %s |\n", existing, plugin,
				round(pct(l.add, 0.5)), round(pct(l.add, q)), round(pct(l.del, 0.5)), round(pct(l.del, q)))
		}
		w, h := results[fmt.Sprintf("warp-ipam/existing=%d", existing)], results[fmt.Sprintf("host-local/existing=%d", existing)]
		if w.add != nil && h.add != nil {
			fmt.Fprintf(&out, "| %d | **host-local / warp-ipam** | **%.2fx** | **%.2fx** | **%.2fx** | **%.2fx** |\n", existing,
				ratio(h.add, w.add, 0.5), ratio(h.add, w.add, q), ratio(h.del, w.del, 0.5), ratio(h.del, w.del, q))
		}
	}
	publish(b, "ipam", out.String())
	if probed.add != nil {
		phi, pq := quantile(probeSamples)
		publish(b, "ipam-probe", fmt.Sprintf("warp-ipam ADD with `detectConflicts` (default `probeTimeout` 200ms) on a pod "+
			"interface whose peer never answers, %d samples: p50 %s, %s %s (every ADD waits out one probe window).\n",
			probeSamples, round(pct(probed.add, 0.5)), phi, round(pct(probed.add, pq))))
	}
}

func ratio(a, b []time.Duration, p float64) float64 {
	return float64(pct(a, p)) / float64(pct(b, p))
}

func round(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
