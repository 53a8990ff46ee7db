package faultpoint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A faultpoints build logs every point and dies with SIGKILL at the chosen one.
func TestFaultpointsBuild(t *testing.T) {
	if os.Getenv("FP_CHILD") != "" {
		Hit("test.one")
		Hit("test.two")
		Hit("test.three")
		os.Exit(0)
	}
	if !Enabled {
		bin := filepath.Join(t.TempDir(), "fp.test")
		build := exec.Command("go", "test", "-c", "-tags", "faultpoints", "-o", bin, ".")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build with -tags faultpoints: %v\n%s", err, out)
		}
		log := filepath.Join(t.TempDir(), "log")
		cmd := exec.Command(bin, "-test.run=^TestFaultpointsBuild$")
		cmd.Env = append(os.Environ(), "FP_CHILD=1", EnvCrash+"=test.two", EnvLog+"="+log)
		err := cmd.Run()
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("child: %v, want death by SIGKILL", err)
		}
		got, _ := os.ReadFile(log)
		if strings.TrimSpace(string(got)) != "test.one\ntest.two" {
			t.Fatalf("log = %q, want the points up to the crash", got)
		}
	}
}

// In a normal build Hit does nothing.
func TestOffIsNoop(t *testing.T) {
	if Enabled {
		t.Skip("faultpoints build")
	}
	t.Setenv(EnvCrash, "x")
	Hit("x")
}
