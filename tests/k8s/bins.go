package k8s

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// KubeVersion is the version of every Kubernetes binary the cluster runs
// (pinned by tests/apiserver/build/go.mod).
const KubeVersion = apiserver.Version

// KubeBinaries are the Kubernetes binaries a cluster runs, and kubectl for
// the people (and README tests) using it.
var KubeBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"}

// CacheDir is where hack/build-kube.sh and hack/build-helm.sh put binaries.
func CacheDir() string {
	if v := os.Getenv("WARP_KUBE_CACHE"); v != "" {
		return v
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "warpnet")
}

// KubeBinary returns the cached binary name (e.g. "kubelet").
func KubeBinary(name string) string {
	if name == "kube-apiserver" {
		return apiserver.BinaryPath()
	}
	return filepath.Join(CacheDir(), name+"-"+KubeVersion)
}

// HelmVersion is the helm release tests/helm/build pins.
func HelmVersion() (string, error) { return buildModuleVersion("helm", "helm.sh/helm/v3") }

// buildModuleVersion returns the version of module that the build-only
// module tests/NAME/build pins.
func buildModuleVersion(name, module string) (string, error) {
	gomod := filepath.Join(harness.RepoRoot(), "tests", name, "build", "go.mod")
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require ")); len(fs) >= 2 && fs[0] == module {
			return fs[1], nil
		}
	}
	return "", fmt.Errorf("no %s in %s", module, gomod)
}

// Multus is Multus's thin plugin and its installer, built from the module
// proxy (hack/build-multus.sh).
type Multus struct {
	Version    string
	Plugin     string // the multus CNI binary
	Entrypoint string // thin_entrypoint: copies the plugin, writes 00-multus.conflist
}

// EnsureMultus builds Multus into the cache unless it is there (once, about
// a minute cold) and returns it.
func EnsureMultus(ctx context.Context, log func(string, ...any)) (Multus, error) {
	v, err := buildModuleVersion("multus", "gopkg.in/k8snetworkplumbingwg/multus-cni.v4")
	if err != nil {
		return Multus{}, err
	}
	m := Multus{Version: v, Plugin: filepath.Join(CacheDir(), "multus-"+v), Entrypoint: filepath.Join(CacheDir(), "multus-thin-entrypoint-"+v)}
	if !executable(m.Plugin) || !executable(m.Entrypoint) {
		buildMu.Lock()
		defer buildMu.Unlock()
		if err := runScript(ctx, log, "build-multus.sh"); err != nil {
			return Multus{}, err
		}
	}
	return m, nil
}

// EnsureCoreDNS builds CoreDNS into the cache unless it is there (once,
// several minutes cold) and returns its path and version.
func EnsureCoreDNS(ctx context.Context, log func(string, ...any)) (path, version string, err error) {
	if version, err = buildModuleVersion("coredns", "github.com/coredns/coredns"); err != nil {
		return "", "", err
	}
	path = filepath.Join(CacheDir(), "coredns-"+version)
	if !executable(path) {
		buildMu.Lock()
		defer buildMu.Unlock()
		if err := runScript(ctx, log, "build-coredns.sh"); err != nil {
			return "", "", err
		}
	}
	return path, version, nil
}

var buildMu sync.Mutex

// EnsureBinaries builds the Kubernetes binaries and helm that are not in the
// cache yet (hack/build-kube.sh, hack/build-helm.sh; once, about 15 minutes
// cold, serialized across processes with flock) and returns helm's path.
// Progress lines go to log.
func EnsureBinaries(ctx context.Context, log func(string, ...any)) (helm string, err error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	v, err := HelmVersion()
	if err != nil {
		return "", err
	}
	helm = filepath.Join(CacheDir(), "helm-"+v)
	var missing []string
	for _, b := range KubeBinaries {
		if !executable(KubeBinary(b)) {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		log("k8s: %v not built yet: hack/build-kube.sh (once; about 12 minutes cold, `make kube` does it ahead of time)", missing)
		if err := runScript(ctx, log, "build-kube.sh", missing...); err != nil {
			return "", err
		}
	}
	if !executable(helm) {
		if err := runScript(ctx, log, "build-helm.sh"); err != nil {
			return "", err
		}
	}
	return helm, nil
}

func runScript(ctx context.Context, log func(string, ...any), script string, args ...string) error {
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(harness.RepoRoot(), "hack", script)}, args...)...)
	// SIGTERM, not SIGKILL: the script then stops its go build as well.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		log("%s", sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("hack/%s failed: %w", script, err)
	}
	return nil
}

func executable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
