package k8s

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/warpnet/warpnet/tests/harness"
)

// RESTConfig is the admin's client configuration.
func (c *Cluster) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", c.APIPort),
		BearerToken:     c.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             100, Burst: 200, Timeout: 60 * time.Second,
	}
}

// Client is an admin clientset.
func (c *Cluster) Client() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(c.RESTConfig())
}

// waitRegistered waits until every node is registered and the controller
// manager has made what every pod needs: the default namespace's
// ServiceAccount and the kube-root-ca.crt ConfigMap (before them, pods are
// refused or stuck).
func (c *Cluster) waitRegistered(ctx context.Context) error {
	cl := c.Client()
	return waitUntil(ctx, 3*time.Minute, "nodes registered", func() error {
		for _, n := range c.Nodes {
			if _, err := cl.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{}); err != nil {
				return fmt.Errorf("%s: %w\n%s", n.Name, err, tail(c.LogPath(fmt.Sprintf("node%d-kubelet", n.Index)), 10))
			}
		}
		if _, err := cl.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
		if _, err := cl.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
		return nil
	})
}

// NodeReady returns a node's Ready condition.
func (c *Cluster) NodeReady(ctx context.Context, name string) (corev1.NodeCondition, error) {
	n, err := c.Client().CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return corev1.NodeCondition{}, err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond, nil
		}
	}
	return corev1.NodeCondition{}, fmt.Errorf("node %s has no Ready condition yet", name)
}

// Helm runs the cached helm against the cluster and returns its output.
func (c *Cluster) Helm(ctx context.Context, helm string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, helm, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+c.Dir+"/helm/cache", "HELM_CONFIG_HOME="+c.Dir+"/helm/config", "HELM_DATA_HOME="+c.Dir+"/helm/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Exec runs argv in a pod's container through the API server, the egress
// proxy and the node's kubelet (kubectl exec), and returns stdout, stderr.
func (c *Cluster) Exec(ctx context.Context, namespace, pod, container string, argv ...string) (string, string, error) {
	cfg := c.RESTConfig()
	req := c.Client().CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return "", "", err
	}
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	return stdout.String(), stderr.String(), err
}

// Logs returns a container's log through the API server (kubectl logs).
func (c *Cluster) Logs(ctx context.Context, namespace, pod, container string) (string, error) {
	b, err := c.Client().CoreV1().Pods(namespace).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
	return string(b), err
}

// Node returns the node named name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Kubectl runs the cached kubectl against the cluster with stdin and returns
// its output.
func (c *Cluster) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, KubeBinary("kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Run runs argv in the node's network namespace (and mount namespace),
// e.g. `ip -o link` to see the node's links.
func (n *Node) Run(ctx context.Context, argv ...string) (string, error) {
	full := n.inMount(argv...)
	out, err := exec.CommandContext(ctx, full[0], full[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %w\n%s", strings.Join(argv, " "), n.Name, err, out)
	}
	return string(out), nil
}

// ---------------------------------------------------------------- tests

var sweepOnce sync.Once

// Start brings up a cluster for a test and takes it down at the test's
// cleanup; skips (fails under WARP_E2E_REQUIRED=1) without root or tools,
// builds missing Kubernetes binaries and helm first. It returns the cluster
// and helm's path. Leftovers of killed runs are swept first.
func Start(t *testing.T, nodes int, images ...string) (*Cluster, string) {
	t.Helper()
	return StartWith(t, Options{Nodes: nodes, Images: images})
}

// StartWith is Start with more options (Name, Owner and Log are set here).
func StartWith(t *testing.T, o Options) (*Cluster, string) {
	t.Helper()
	e := harness.New(t) // root check; the harness's own sweep; a run-unique prefix
	harness.RequireTools(t, "etcd", "containerd", "runc", "ctr", "socat", "python3", "go")
	logf := func(format string, args ...any) { t.Logf(format, args...) }
	sweepOnce.Do(func() {
		if err := Sweep(logf); err != nil {
			t.Logf("k8s: sweeping leftovers: %v", err)
		}
	})
	ctx := t.Context()
	helm, err := EnsureBinaries(ctx, logf)
	if err != nil {
		t.Fatalf("k8s: %v", err)
	}
	start := time.Now()
	o.Name, o.Owner, o.Log = e.Prefix+"-k", os.Getpid(), logf
	c, err := Up(ctx, o)
	if err != nil {
		t.Fatalf("k8s: %v", err)
	}
	t.Logf("k8s: cluster %s up in %.1fs (kubeconfig %s)", c.Name, time.Since(start).Seconds(), c.Kubeconfig)
	t.Cleanup(func() {
		if t.Failed() {
			for _, what := range []string{"node1-kubelet", "node1-containerd", "node2-kubelet", "node2-containerd", "kube-controller-manager", "kube-scheduler"} {
				t.Logf("k8s: last lines of %s:\n%s", what, tail(c.LogPath(what), 15))
			}
		}
		start := time.Now()
		if err := Down(c.Dir, logf); err != nil {
			t.Errorf("k8s: %v", err)
		}
		t.Logf("k8s: cluster down in %.1fs", time.Since(start).Seconds())
	})
	return c, helm
}
