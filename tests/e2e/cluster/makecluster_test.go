package cluster_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warpnet/warpnet/internal/mountinfo"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
)

// make cluster / make cluster-down (tests/k8s/cmd/warp-cluster), under a
// name of this run: the cluster outlives the command, warpnet is installed
// and every node Ready, the printed kubeconfig works, and down removes
// everything.
func TestMakeClusterUpAndDown(t *testing.T) {
	e := harness.New(t)
	harness.RequireTools(t, filepath.Join(harness.BinDir(), "warpd"), "go")
	ctx := ctxFor(t, 15*time.Minute)
	if _, err := k8s.EnsureBinaries(ctx, t.Logf); err != nil {
		t.Fatal(err)
	}
	name := e.Prefix + "-m"
	dir := filepath.Join(k8s.BaseDir(), name)
	t.Cleanup(func() { _ = k8s.Down(dir, t.Logf) }) // only if down failed
	tar, image := buildImage(t, harness.BinDir(), "make-cluster")
	warpCluster := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "go", append([]string{"run", "./tests/k8s/cmd/warp-cluster"}, args...)...)
		cmd.Dir = harness.RepoRoot()
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("warp-cluster %v: %v\n%s", args, err, out)
		}
		t.Logf("warp-cluster %s: %.1fs", args[0], time.Since(start).Seconds())
		return string(out)
	}
	out := warpCluster("up", "--name", name, "--image", tar, "--image-name", image, "--owner", strconv.Itoa(os.Getpid()))
	m := regexp.MustCompile(`export KUBECONFIG=(\S+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "warp-cluster down --name "+name) {
		t.Fatalf("up did not say how to use the cluster:\n%s", out)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", m[1])
	if err != nil {
		t.Fatal(err)
	}
	cl := kubernetes.NewForConfigOrDie(cfg)
	nodes, err := cl.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 2 {
		t.Fatalf("nodes after up: %v %v", err, nodes)
	}
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				t.Errorf("%s not Ready after up: %s", n.Name, c.Message)
			}
		}
	}
	ds, err := cl.AppsV1().DaemonSets(k8s.Namespace).Get(ctx, "warpnet", metav1.GetOptions{})
	if err != nil || ds.Status.NumberReady != 2 || ds.Spec.Template.Spec.Containers[0].Image != image {
		t.Fatalf("warpnet DaemonSet after up: %v %+v", err, ds.Status)
	}

	cgroups, err := mountinfo.Cgroup2()
	if err != nil {
		t.Fatal(err)
	}
	warpCluster("down", "--name", name)
	for _, p := range []string{dir, "/run/netns/" + name + "-node1", "/run/netns/" + name + "-net", filepath.Join(cgroups, "warpnet-k8s", name)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s survived down", p)
		}
	}
}
