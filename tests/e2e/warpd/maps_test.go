package warpd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/tests/harness"
)

// A start warpd refuses leaves nothing behind on bpffs.
func TestRefusedStartLeavesNoPins(t *testing.T) {
	c := newCluster(t, "file")
	c.writeServices()
	for _, flag := range []string{"--map-services=-1", "--map-affinity=99999999999"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := c.node.Run(ctx, append(slices.Clone(c.warpd), flag)...)
		cancel()
		if err == nil {
			t.Fatalf("warpd %s started:\n%s", flag, out)
		}
		if _, err := os.Stat(servicelb.Dir(c.bpffs)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("warpd %s was refused (%s) but left %s behind", flag, strings.TrimSpace(out), servicelb.Dir(c.bpffs))
		}
	}
}

// warpd restarted with other map sizes rebuilds the maps (it used to refuse
// to start until the pins were removed by hand) while a client keeps
// connecting through the ClusterIP: no connect fails, and the new
// capacities are in force afterwards.
func TestMapSizeChangeRebuildsWithZeroFailures(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	first := c.node.Start(t, c.warpd...)
	c.waitBackends(2)

	// The client loop marks its progress in files: the test waits for
	// events, not for time. Bounded: 3000 connects or a stop file.
	dir := filepath.Join(c.env.TempDir, "loop")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	progress := func() int {
		b, _ := os.ReadFile(filepath.Join(dir, "progress"))
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		loop := fmt.Sprintf(`ok=0; for i in $(seq 3000); do [ -e %[1]s/stop ] && break
			echo hi | socat -T1 - TCP:%[2]s:80 >/dev/null 2>&1 && ok=$((ok+1)) || echo FAIL $i
			echo $i > %[1]s/progress.new && mv %[1]s/progress.new %[1]s/progress; done; echo OK $ok`, dir, clusterIP)
		out, err := c.pods.Run(ctx, c.clientPod, "", "bash", "-c", loop)
		done <- result{out, err}
	}()
	stop := func() result {
		os.WriteFile(filepath.Join(dir, "stop"), nil, 0o644)
		return <-done
	}
	harness.WaitFor(t, "the client loop to connect", 20*time.Second, func() bool { return progress() >= 5 })

	first.Process.Kill()
	first.Wait()
	sizes := servicelb.Sizes{Services: 1000, Backends: 2000, Affinity: 4000}
	c.node.Start(t, append(slices.Clone(c.warpd), "--map-services=1000", "--map-backends=2000",
		"--map-affinity=4000")...)
	harness.WaitFor(t, "warpd to rebuild the maps with the new sizes", 30*time.Second, func() bool {
		lb, err := servicelb.OpenReadOnly(c.bpffs)
		if err != nil {
			return false
		}
		defer lb.Close()
		return lb.Sizes() == sizes
	})
	at := progress()
	harness.WaitFor(t, "more connects after the rebuild", 30*time.Second, func() bool { return progress() >= at+20 })
	r := stop()
	if r.err != nil || strings.Contains(r.out, "FAIL") || !strings.Contains(r.out, "OK ") {
		t.Fatalf("connections across the rebuild: %v\n%s", r.err, r.out)
	}
	t.Logf("%s connects across the rebuild", strings.TrimSpace(r.out))
	c.waitBackends(2)
	if seen := c.answeredBy("tcp", "80", 20); seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Errorf("after the rebuild: answers %v", seen)
	}
}

// warpd's periodic resync removes map entries no service refers to, such
// as those an update cut short by a crash leaves behind.
func TestResyncCollectsGarbage(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	c.writeServices("pod1")
	c.node.Start(t, append(slices.Clone(c.warpd), "--resync", "200ms")...)
	c.waitBackends(1)
	// A backend no slot refers to, written behind warpd's back.
	backends, err := ebpf.LoadPinnedMap(filepath.Join(servicelb.Dir(c.bpffs), "maps", "lb_backends"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer backends.Close()
	const orphan = uint32(0xdead)
	if err := backends.Put(orphan, make([]byte, backends.ValueSize())); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "the resync to remove the orphaned backend", 20*time.Second, func() bool {
		var v []byte
		return errors.Is(backends.Lookup(orphan, &v), ebpf.ErrKeyNotExist)
	})
	c.waitBackends(1)
	if seen := c.answeredBy("tcp", "80", 5); seen["pod1"] != 5 {
		t.Errorf("after the collection: answers %v", seen)
	}
}
