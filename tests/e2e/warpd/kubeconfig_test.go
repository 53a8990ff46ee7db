package warpd_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/internal/kubeconfig"
	"github.com/warpnet/warpnet/tests/harness"
)

// warp-ipam's kubeconfig carries the pod's service account token, which
// the kubelet rotates; warpd copies each new token in, and says so when it
// cannot.
func TestIPAMKubeconfigTokenKeptCurrent(t *testing.T) {
	c := newCluster(t, "file", "a")
	c.writeServices("a")
	sa := filepath.Join(c.env.TempDir, "serviceaccount")
	os.MkdirAll(sa, 0o755)
	writeToken := func(token string) {
		t.Helper()
		// as the kubelet's atomic writer does: a new file renamed in
		tmp := filepath.Join(sa, ".token.tmp")
		if err := os.WriteFile(tmp, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(sa, "token")); err != nil {
			t.Fatal(err)
		}
	}
	writeToken("token-one")
	os.WriteFile(filepath.Join(sa, "ca.crt"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	path := filepath.Join(c.env.TempDir, "net.d", "warpnet.d", "warp-ipam.kubeconfig")
	os.MkdirAll(filepath.Dir(path), 0o755)
	kc, err := kubeconfig.FromServiceAccount(sa, "https://10.96.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, kc, kubeconfig.Mode)

	cmd := c.startWarpd("--ipam-kubeconfig", path, "--service-account-dir", sa, "--ipam-token-check", "100ms")
	has := func(token string) bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), `"token": "`+token+`"`)
	}
	writeToken("token-two")
	harness.WaitFor(t, "warpd to copy the rotated token", 30*time.Second, func() bool { return has("token-two") })
	c.waitLog(cmd, "rotated service account token", 0)
	if !strings.Contains(func() string { b, _ := os.ReadFile(path); return string(b) }(), "https://10.96.0.1:443") {
		t.Fatal("the refresh lost the API server address")
	}

	// No token to copy: said once, and the kubeconfig is left as it was.
	os.Remove(filepath.Join(sa, "token"))
	c.waitLog(cmd, "cannot keep warp-ipam's kubeconfig token current", 0)
	if !has("token-two") {
		t.Fatal("a missing token changed the kubeconfig")
	}
	writeToken("token-three")
	harness.WaitFor(t, "warpd to recover", 30*time.Second, func() bool { return has("token-three") })
	if n := logCount(cmd, "cannot keep warp-ipam's kubeconfig token current"); n != 1 {
		t.Fatalf("the failure was logged %d times, want once", n)
	}
}
