// Package install_test runs the node installer (bin/warp-install, and
// install/install.sh around it) against a fake host root in a temporary
// directory, and checks what it left there. The real-cluster tests
// (tests/e2e/cluster) run the same installer as the DaemonSet's init
// container.
package install_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// host is a fake node: <root>/opt/cni/bin and <root>/etc/cni/net.d, with
// another vendor's plugin and config already there.
type host struct {
	root, binDir, confDir  string
	otherPlugin, otherConf []byte
}

func newHost(t *testing.T) *host {
	t.Helper()
	h := &host{root: t.TempDir()}
	h.binDir = filepath.Join(h.root, "opt/cni/bin")
	h.confDir = filepath.Join(h.root, "etc/cni/net.d")
	for _, d := range []string{h.binDir, h.confDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.otherPlugin = []byte("#!/bin/sh\necho another vendor's plugin\n")
	h.otherConf = []byte(`{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"other"}]}`)
	writeFile(t, filepath.Join(h.binDir, "other"), h.otherPlugin, 0o755)
	writeFile(t, filepath.Join(h.confDir, "99-other.conflist"), h.otherConf, 0o644)
	return h
}

// install runs bin/warp-install against the host with extra flags and
// returns its output and exit code.
func (h *host) install(t *testing.T, extra ...string) (string, int) {
	t.Helper()
	bin := installer(t)
	args := append([]string{"--src", harness.BinDir(), "--cni-bin-dir", h.binDir, "--cni-conf-dir", h.confDir}, extra...)
	return run(t, exec.Command(bin, args...))
}

func installer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(harness.BinDir(), "warp-install")
	harness.RequireTools(t, bin) // built by make build
	return bin
}

func run(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%v: %v", cmd.Args, err)
		}
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

func conflist() string { return filepath.Join(harness.RepoRoot(), "cni-conf", "10-warpnet.conflist") }

func TestInstallsPluginsAndConflist(t *testing.T) {
	h := newHost(t)
	out, code := h.install(t, "--conflist", conflist())
	if code != 0 {
		t.Fatalf("warp-install: exit %d\n%s", code, out)
	}
	for _, p := range []string{"warp-ipam", "warp-veth", "warp-sriov", "loopback"} {
		want, _ := os.ReadFile(filepath.Join(harness.BinDir(), p))
		got, err := os.ReadFile(filepath.Join(h.binDir, p))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("installed %s differs from bin/%s (%v)", p, p, err)
		}
		if m := mode(t, filepath.Join(h.binDir, p)); m != 0o755 {
			t.Errorf("%s: mode %o, want 755", p, m)
		}
	}
	if m := mode(t, filepath.Join(h.confDir, "10-warpnet.conflist")); m != 0o644 {
		t.Errorf("conflist: mode %o, want 644", m)
	}
	want, _ := os.ReadFile(conflist())
	if got, _ := os.ReadFile(filepath.Join(h.confDir, "10-warpnet.conflist")); !bytes.Equal(got, want) {
		t.Errorf("installed conflist differs from the source")
	}
	h.checkOthersUntouched(t)
	noTempFiles(t, h.root)
	// The installed plugin answers the CNI VERSION command.
	cmd := exec.Command(filepath.Join(h.binDir, "warp-veth"))
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), "1.1.0") {
		t.Fatalf("installed warp-veth VERSION: %v %s", err, out)
	}
}

func (h *host) checkOthersUntouched(t *testing.T) {
	t.Helper()
	if got, _ := os.ReadFile(filepath.Join(h.binDir, "other")); !bytes.Equal(got, h.otherPlugin) {
		t.Error("another vendor's plugin was changed")
	}
	if got, _ := os.ReadFile(filepath.Join(h.confDir, "99-other.conflist")); !bytes.Equal(got, h.otherConf) {
		t.Error("another vendor's conflist was changed")
	}
}

// A restarted init container (or the next node boot) finds everything in
// place and writes nothing: same inodes, and the conflist's mtime stays, so
// the runtime sees no config event.
func TestSecondRunChangesNothing(t *testing.T) {
	h := newHost(t)
	if out, code := h.install(t, "--conflist", conflist()); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, out)
	}
	before := inodes(t, h.binDir, h.confDir)
	out, code := h.install(t, "--conflist", conflist())
	if code != 0 || !strings.Contains(out, "done: 0 written") {
		t.Fatalf("second run: exit %d, want 0 with nothing written:\n%s", code, out)
	}
	after := inodes(t, h.binDir, h.confDir)
	for f, st := range before {
		if a, ok := after[f]; !ok || a.Ino != st.Ino || a.Mtim != st.Mtim {
			t.Errorf("%s was rewritten by the second run", f)
		}
	}
}

// An upgrade replaces the plugins by rename: a plugin process still running
// the old file keeps it (same inode, old content), the path gives the new
// one, and an existing pod's configuration stays as it was.
func TestUpgradeReplacesBinariesByRename(t *testing.T) {
	h := newHost(t)
	if out, code := h.install(t, "--conflist", conflist()); code != 0 {
		t.Fatalf("v1 install: exit %d\n%s", code, out)
	}
	old, err := os.Open(filepath.Join(h.binDir, "warp-veth"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldContent, _ := os.ReadFile(filepath.Join(h.binDir, "warp-veth"))

	// "v2": every binary of bin/ with a different tail (still a valid ELF).
	v2 := t.TempDir()
	ents, _ := os.ReadDir(harness.BinDir())
	for _, e := range ents {
		if e.Type().IsRegular() {
			b, _ := os.ReadFile(filepath.Join(harness.BinDir(), e.Name()))
			writeFile(t, filepath.Join(v2, e.Name()), append(b, []byte("v2")...), 0o755)
		}
	}
	out, code := run(t, exec.Command(installer(t), "--src", v2, "--cni-bin-dir", h.binDir, "--cni-conf-dir", h.confDir, "--conflist", conflist()))
	if code != 0 {
		t.Fatalf("v2 install: exit %d\n%s", code, out)
	}
	got, _ := os.ReadFile(filepath.Join(h.binDir, "warp-veth"))
	if !bytes.HasSuffix(got, []byte("v2")) {
		t.Fatal("warp-veth was not upgraded")
	}
	var held bytes.Buffer
	if _, err := old.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := held.ReadFrom(old); err != nil || !bytes.Equal(held.Bytes(), oldContent) {
		t.Fatalf("the file a running plugin holds changed under it (%v): upgrade must rename, not overwrite", err)
	}
	// loopback is a helper: a copy already on the node is kept.
	if lo, _ := os.ReadFile(filepath.Join(h.binDir, "loopback")); bytes.HasSuffix(lo, []byte("v2")) {
		t.Error("loopback already on the node was replaced")
	}
	if !strings.Contains(out, "conflist: unchanged") && !strings.Contains(out, "10-warpnet.conflist: unchanged") {
		t.Errorf("the unchanged conflist was rewritten:\n%s", out)
	}
	cmd := exec.Command(filepath.Join(h.binDir, "warp-veth"))
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("upgraded warp-veth does not run: %v %s", err, out)
	}
	h.checkOthersUntouched(t)
	noTempFiles(t, h.root)
}

func TestMultusOwnsThePrimaryNetwork(t *testing.T) {
	h := newHost(t)
	multus := []byte(`{"cniVersion":"1.0.0","name":"multus-cni-network","type":"multus-shim"}`)
	writeFile(t, filepath.Join(h.confDir, "00-multus.conf"), multus, 0o644)
	ours := filepath.Join(h.confDir, "10-warpnet.conflist")

	out, code := h.install(t, "--conflist", conflist())
	if code != 0 || !strings.Contains(out, "Multus owns the primary network") {
		t.Fatalf("auto with Multus first: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(ours); !os.IsNotExist(err) {
		t.Fatalf("conflist written although Multus owns the primary network (%v)", err)
	}
	// Plugins are installed all the same: Multus delegates to them.
	if _, err := os.Stat(filepath.Join(h.binDir, "warp-veth")); err != nil {
		t.Fatal(err)
	}
	if out, code := h.install(t, "--conflist", conflist(), "--primary", "yes"); code != 0 {
		t.Fatalf("--primary=yes: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(ours); err != nil {
		t.Fatalf("--primary=yes did not write the conflist: %v", err)
	}
	out, code = h.install(t, "--conflist", conflist(), "--primary", "no")
	if code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("--primary=no: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(ours); !os.IsNotExist(err) {
		t.Fatal("--primary=no left our conflist")
	}
	if got, _ := os.ReadFile(filepath.Join(h.confDir, "00-multus.conf")); !bytes.Equal(got, multus) {
		t.Fatal("Multus's config was changed")
	}
	h.checkOthersUntouched(t)
}

// Every failure exits non-zero with a message that names the problem, and a
// conflist that cannot work never reaches the conf directory.
func TestFailuresAreClearAndLeaveNoConflist(t *testing.T) {
	h := newHost(t)
	dir := t.TempDir()
	badJSON := filepath.Join(dir, "10-warpnet.conflist")
	writeFile(t, badJSON, []byte(`{"cniVersion": "1.0.0", "name": `), 0o644)
	missingPlugin := filepath.Join(dir, "20-missing.conflist")
	writeFile(t, missingPlugin, []byte(`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"warp-veth","ipam":{"type":"no-such-ipam"}}]}`), 0o644)

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad JSON", []string{"--conflist", badJSON}, 1, "not a valid CNI network configuration list"},
		{"missing plugin", []string{"--conflist", missingPlugin}, 1, `needs plugin "no-such-ipam"`},
		{"missing source", []string{"--conflist", filepath.Join(dir, "nope.conflist")}, 1, "nope.conflist"},
		{"bad primary", []string{"--conflist", conflist(), "--primary", "maybe"}, 1, "want auto, yes or no"},
		{"bad flag", []string{"--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"extra argument", []string{"stray"}, 2, `unexpected argument "stray"`},
		{"no service account", []string{"--ipam-kubeconfig", filepath.Join(h.root, "etc/cni/net.d/warpnet.d/kubeconfig"), "--service-account-dir", dir}, 1, "no service account token"},
	} {
		out, code := h.install(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s", tc.name, code, tc.code, tc.want, out)
		}
	}
	for _, n := range []string{"10-warpnet.conflist", "20-missing.conflist"} {
		if _, err := os.Stat(filepath.Join(h.confDir, n)); !os.IsNotExist(err) {
			t.Errorf("%s reached the conf directory", n)
		}
	}
	// Plugins missing from --src.
	out, code := run(t, exec.Command(installer(t), "--src", t.TempDir(), "--cni-bin-dir", h.binDir))
	if code != 1 || !strings.Contains(out, "is --src the directory of the warpnet binaries?") {
		t.Errorf("empty --src: exit %d\n%s", code, out)
	}
	h.checkOthersUntouched(t)
	noTempFiles(t, h.root)

	if out, code := run(t, exec.Command(installer(t), "--help")); code != 0 || !strings.Contains(out, "Exit status") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
}

// install.sh is a thin wrapper: same flags, --src defaulting to bin/.
func TestInstallShWrapsTheInstaller(t *testing.T) {
	installer(t)
	h := newHost(t)
	script := filepath.Join(harness.RepoRoot(), "install", "install.sh")
	out, code := run(t, exec.Command("sh", script, "--cni-bin-dir", h.binDir, "--cni-conf-dir", h.confDir, "--conflist", conflist()))
	if code != 0 {
		t.Fatalf("install.sh: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(h.confDir, "10-warpnet.conflist")); err != nil {
		t.Fatal(err)
	}
	out, code = run(t, exec.Command("sh", script, "--src", t.TempDir(), "--cni-bin-dir", h.binDir))
	if code != 1 || !strings.Contains(out, "run make build") {
		t.Fatalf("empty --src: exit %d\n%s", code, out)
	}
}

// The kubeconfig for warp-ipam, built from a service account the way the
// init container sees it, authenticates against a real API server as that
// service account.
func TestIPAMKubeconfigFromServiceAccount(t *testing.T) {
	installer(t)
	s := apiserver.Start(t)
	c := s.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := c.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "warpnet"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, "warpnet", &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sa := t.TempDir()
	writeFile(t, filepath.Join(sa, "token"), []byte(tr.Status.Token), 0o600)
	ca, err := os.ReadFile(filepath.Join(s.Dir, "certs", "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(sa, "ca.crt"), ca, 0o644)

	h := newHost(t)
	kc := filepath.Join(h.confDir, "warpnet.d", "warp-ipam.kubeconfig")
	host, port, _ := strings.Cut(strings.TrimPrefix(s.URL, "https://"), ":")
	cmd := exec.Command(installer(t), "--src", harness.BinDir(), "--cni-bin-dir", h.binDir, "--cni-conf-dir", h.confDir,
		"--ipam-kubeconfig", kc, "--service-account-dir", sa)
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST="+host, "KUBERNETES_SERVICE_PORT="+port)
	if out, code := run(t, cmd); code != 0 {
		t.Fatalf("warp-install: exit %d\n%s", code, out)
	}
	if m := mode(t, kc); m != 0o600 {
		t.Errorf("kubeconfig mode %o, want 600 (it holds a token)", m)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Insecure || len(cfg.CAData) == 0 {
		t.Fatal("kubeconfig does not verify the server with the service account's CA")
	}
	kcs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	review, err := kcs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("API server call with the written kubeconfig: %v", err)
	}
	if u := review.Status.UserInfo.Username; u != "system:serviceaccount:default:warpnet" {
		t.Fatalf("authenticated as %q, want the service account", u)
	}
}

func writeFile(t *testing.T, path string, data []byte, m os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, m); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, m); err != nil {
		t.Fatal(err)
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func inodes(t *testing.T, dirs ...string) map[string]syscall.Stat_t {
	t.Helper()
	m := map[string]syscall.Stat_t{}
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(d, e.Name()), &st); err != nil {
				t.Fatal(err)
			}
			m[filepath.Join(d, e.Name())] = st
		}
	}
	return m
}

func noTempFiles(t *testing.T, root string) {
	t.Helper()
	_ = filepath.Walk(root, func(p string, _ os.FileInfo, _ error) error {
		if strings.Contains(filepath.Base(p), "warpnet-tmp") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}
