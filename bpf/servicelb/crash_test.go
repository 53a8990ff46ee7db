package servicelb

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/warpnet/warpnet/bpf/internal/topo"
	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// Crash tests: the test binary, built again with -tags faultpoints, is
// killed (SIGKILL) at a chosen step of Upsert or Commit, and the test checks
// what the next process makes of what it left behind.

// helperRequest is what the "upsert" helper does: open root with sizes,
// upsert the services, and commit if the LB was staged.
type helperRequest struct {
	Root     string
	Sizes    Sizes
	Services []Service
}

const helperRequestEnv = "WARP_SERVICELB_TEST_REQUEST"

func upsertHelper() int {
	var req helperRequest
	if err := json.Unmarshal([]byte(os.Getenv(helperRequestEnv)), &req); err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	l, err := Open(req.Root, req.Sizes)
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	defer l.Close()
	for _, s := range req.Services {
		if err := l.Upsert(s); err != nil {
			fmt.Println("ERROR", err)
			return 1
		}
	}
	if err := l.Commit(); err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	return 0
}

var (
	faultBinOnce sync.Once
	faultBin     string // in a directory TestMain removes
	faultBinErr  error
)

// faultpointsBinary builds this package's test binary with crash points.
func faultpointsBinary(t *testing.T) string {
	t.Helper()
	harness.RequireTools(t, "go")
	faultBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "servicelb-faultpoints-")
		if err != nil {
			faultBinErr = err
			return
		}
		faultBin = filepath.Join(dir, "servicelb.test")
		out, err := exec.Command("go", "test", "-c", "-tags", "faultpoints", "-o", faultBin, ".").CombinedOutput()
		if err != nil {
			faultBinErr = fmt.Errorf("go test -c -tags faultpoints: %v\n%s", err, out)
		}
	})
	if faultBinErr != nil {
		t.Fatal(faultBinErr)
	}
	return faultBin
}

// crashAt runs the helper for req in the node namespace and expects it to
// die by SIGKILL at point.
func crashAt(t *testing.T, n *harness.NetNS, point string, req helperRequest) {
	t.Helper()
	bin := faultpointsBinary(t)
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	err = n.Do(func() error {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=upsert", helperRequestEnv+"="+string(b), faultpoint.EnvCrash+"="+point)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return fmt.Errorf("helper did not crash at %s: %v\n%s", point, err, out)
		}
		if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			return fmt.Errorf("helper ended with %v, not SIGKILL at %s\n%s", err, point, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// entries counts the entries of lb_services and lb_backends.
func entries(t *testing.T, l *LB) (services, backends int) {
	t.Helper()
	var k lbSvcKey
	var v lbSvc
	it := l.objs.LbServices.Iterate()
	for it.Next(&k, &v) {
		services++
	}
	var id uint32
	var b lbBackend
	bit := l.objs.LbBackends.Iterate()
	for bit.Next(&id, &b) {
		backends++
	}
	if err := errors.Join(it.Err(), bit.Err()); err != nil {
		t.Fatal(err)
	}
	return services, backends
}

// TestLBGCAfterCrash kills Upsert at each of its steps and checks that the
// service is complete (the old version before the header switched, the new
// one after), that the crash left entries behind, and that GC removes
// exactly those.
func TestLBGCAfterCrash(t *testing.T) {
	e := harness.New(t)
	root := topo.PinDir(e)
	node := e.NetNS("node")
	l, err := Open(root, Sizes{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fe := Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: l4.TCP}
	be := func(i int) Backend { return Backend{Addr: netip.AddrFrom4([4]byte{10, 244, 0, byte(i)}), Port: 8080} }
	before := Service{Frontend: fe, ID: 1, Backends: []Backend{be(1), be(2)}}
	after := Service{Frontend: fe, ID: 1, Backends: []Backend{be(2), be(3), be(4)}}
	other := Service{Frontend: Frontend{Addr: fe.Addr, Port: 53, Proto: l4.UDP}, ID: 2, Backends: []Backend{be(5)}}
	if err := l.Upsert(other); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		point string
		want  Service
	}{
		{fpUpsertBackends, before},
		{fpUpsertSlots, before},
		{fpUpsertHeader, after},
	} {
		t.Run(c.point, func(t *testing.T) {
			if err := l.Upsert(before); err != nil {
				t.Fatal(err)
			}
			if _, err := l.GC(); err != nil {
				t.Fatal(err)
			}
			crashAt(t, node, c.point, helperRequest{Root: root, Services: []Service{after}})

			got, err := l.Services()
			if err != nil {
				t.Fatal(err)
			}
			if !servicesEqual(got, []Service{other, c.want}) {
				t.Fatalf("after a crash at %s: %+v, want %+v", c.point, got, c.want)
			}
			clean := func() (int, int) {
				return 2 + len(c.want.Backends) + len(other.Backends), len(c.want.Backends) + len(other.Backends)
			}
			wantSvc, wantBe := clean()
			nSvc, nBe := entries(t, l)
			if nSvc+nBe <= wantSvc+wantBe {
				t.Fatalf("the crash left nothing behind (%d service entries, %d backends): it did not run", nSvc, nBe)
			}
			n, err := l.GC()
			if err != nil {
				t.Fatal(err)
			}
			if n != nSvc+nBe-wantSvc-wantBe {
				t.Errorf("GC removed %d entries, want %d", n, nSvc+nBe-wantSvc-wantBe)
			}
			if nSvc, nBe := entries(t, l); nSvc != wantSvc || nBe != wantBe {
				t.Errorf("after GC: %d service entries and %d backends, want %d and %d", nSvc, nBe, wantSvc, wantBe)
			}
			if got, _ := l.Services(); !servicesEqual(got, []Service{other, c.want}) {
				t.Errorf("GC changed the services: %+v", got)
			}
			// The next update works on what is left.
			if err := l.Upsert(after); err != nil {
				t.Fatal(err)
			}
			if n, _ := l.GC(); n != 0 {
				t.Errorf("GC after a clean Upsert removed %d entries", n)
			}
		})
	}
}

// TestOpenLeavesNoDirs: a refused Open (invalid sizes, or a pin directory
// that is not on bpffs) leaves no directory behind it did not find.
func TestOpenLeavesNoDirs(t *testing.T) {
	e := harness.New(t)
	root := topo.PinDir(e)
	if _, err := Open(root, Sizes{Services: -1}); err == nil {
		t.Fatal("Open with Services -1 succeeded")
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused Open left %s: %v", root, err)
	}
	plain := filepath.Join(e.TempDir, "plain")
	_, err := Open(filepath.Join(plain, "warpnet"), Sizes{})
	if err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Open on a plain directory: %v", err)
	}
	if _, err := os.Stat(plain); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Open left %s: %v", plain, err)
	}
	// What it did not create stays.
	if err := os.MkdirAll(filepath.Join(plain, "warpnet"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(plain, "warpnet"), Sizes{}); err == nil {
		t.Fatal("Open on a plain directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(plain, "warpnet")); err != nil {
		t.Errorf("Open removed a directory it found: %v", err)
	}
	if _, err := os.Stat(filepath.Join(plain, "warpnet", "lb")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Open left lb/: %v", err)
	}
}
