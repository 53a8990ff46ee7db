package kubeconfig

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func TestRefreshToken(t *testing.T) {
	sa := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(sa, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token", "first\n")
	write("ca.crt", "-----BEGIN CERTIFICATE-----\n")
	path := filepath.Join(t.TempDir(), "warp-ipam.kubeconfig")

	// Nothing written yet: nothing to refresh.
	if changed, err := RefreshToken(path, sa); changed || err != nil {
		t.Fatalf("missing kubeconfig: changed %v err %v", changed, err)
	}
	kc, err := FromServiceAccount(sa, "https://10.0.0.1:6443")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, kc, Mode); err != nil {
		t.Fatal(err)
	}
	token := func() string {
		t.Helper()
		cfg, err := clientcmd.LoadFromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Clusters["local"].Server != "https://10.0.0.1:6443" {
			t.Fatalf("server lost: %+v", cfg.Clusters["local"])
		}
		return cfg.AuthInfos["warpnet"].Token
	}
	if got := token(); got != "first" {
		t.Fatalf("token %q", got)
	}
	if changed, err := RefreshToken(path, sa); changed || err != nil {
		t.Fatalf("same token: changed %v err %v", changed, err)
	}
	write("token", "rotated")
	if changed, err := RefreshToken(path, sa); !changed || err != nil {
		t.Fatalf("rotated token: changed %v err %v", changed, err)
	}
	if got := token(); got != "rotated" {
		t.Fatalf("token after rotation %q", got)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != Mode {
		t.Fatalf("mode %v", st.Mode())
	}
	// Something else at the path is reported, and left alone.
	os.WriteFile(path, []byte("apiVersion: v1\n"), Mode)
	if _, err := RefreshToken(path, sa); err == nil {
		t.Fatal("a file the installer did not write was accepted")
	}
}
