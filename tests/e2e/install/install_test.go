// Package install_test runs install/install.sh, the node installer, into
// temporary directories and checks that what it installed works.
package install_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/tests/harness"
)

func TestInstallsBinariesAndConflist(t *testing.T) {
	root := harness.RepoRoot()
	src := harness.BinDir()
	harness.RequireTools(t, filepath.Join(src, "warp-ipam")) // built by make build
	dir := t.TempDir()
	binDir, confDir := filepath.Join(dir, "opt-cni-bin"), filepath.Join(dir, "net.d")
	conflist := filepath.Join(root, "cni-conf", "10-bridge-warp-ipam.conflist")
	out, err := exec.Command("sh", filepath.Join(root, "install", "install.sh"),
		"--src", src, "--cni-bin-dir", binDir, "--cni-conf-dir", confDir, "--conflist", conflist).CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	want, _ := os.ReadFile(filepath.Join(src, "warp-ipam"))
	got, err := os.ReadFile(filepath.Join(binDir, "warp-ipam"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("installed warp-ipam differs from bin/warp-ipam (%v)", err)
	}
	if fi, _ := os.Stat(filepath.Join(binDir, "warp-ipam")); fi.Mode()&0o111 == 0 {
		t.Fatal("installed warp-ipam is not executable")
	}
	if _, err := os.Stat(filepath.Join(confDir, "10-bridge-warp-ipam.conflist")); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(binDir, "*warpnet-tmp*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// The installed plugin answers the CNI VERSION command.
	cmd := exec.Command(filepath.Join(binDir, "warp-ipam"))
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), "1.1.0") {
		t.Fatalf("installed warp-ipam VERSION: %v %s", err, out)
	}
	// Running it again (an init container restarting) replaces in place.
	if out, err := exec.Command("sh", filepath.Join(root, "install", "install.sh"), "--src", src, "--cni-bin-dir", binDir).CombinedOutput(); err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
}

func TestRejectsUnknownArgumentsAndEmptySource(t *testing.T) {
	script := filepath.Join(harness.RepoRoot(), "install", "install.sh")
	out, err := exec.Command("sh", script, "--bogus").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "unknown argument --bogus") {
		t.Fatalf("--bogus: %v %s", err, out)
	}
	out, err = exec.Command("sh", script, "--src", t.TempDir(), "--cni-bin-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "run make build") {
		t.Fatalf("empty --src: %v %s", err, out)
	}
}
