package k8s

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/tests/harness"
)

// Namespace is where the cluster's warpnet release lives.
const Namespace = "warpnet"

// Chart is the path of warpnet's Helm chart.
func Chart() string { return filepath.Join(harness.RepoRoot(), "install", "chart", "warpnet") }

// PodCIDRs waits until the controller-manager has given the node its
// spec.podCIDRs (IPv4, IPv6) and returns them.
func (c *Cluster) PodCIDRs(ctx context.Context, node string) ([]string, error) {
	var cidrs []string
	err := waitUntil(ctx, 2*time.Minute, "podCIDRs of "+node, func() error {
		n, err := c.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cidrs = n.Spec.PodCIDRs; len(cidrs) < 2 {
			return fmt.Errorf("spec.podCIDRs %v, want one per family", cidrs)
		}
		return nil
	})
	return cidrs, err
}

// HelmValues are the chart values this cluster needs besides the image:
// the API server's real address (no kube-proxy), the cgroup of each node's
// pods for warpd (all nodes share the machine's cgroup2 mount; each node's
// pods are below its own directory there, named like the node), and the
// cluster's pod and service CIDRs for warpd's cluster network. Pod
// addresses come from each node's spec.podCIDR (the chart's default
// "subnet": "podCIDR", through warpd's node facts).
func (c *Cluster) HelmValues() []string {
	return []string{
		"--set", "apiServer.host=127.0.0.1", "--set", fmt.Sprintf("apiServer.port=%d", c.APIPort),
		"--set", "warpd.cgroupHostPath=" + c.CgroupDir(), "--set", "warpd.cgroupSubPath=$(NODE_NAME)",
		"--set-json", fmt.Sprintf("network.clusterCIDRs=[%q,%q]", ClusterCIDR, ClusterCIDR6),
		"--set-json", fmt.Sprintf("network.serviceCIDRs=[%q,%q]", ServiceCIDR, ServiceCIDR6),
	}
}

// InstallWarpnet imports the warpnet image tar (make image) into every node
// and runs `helm install warpnet` with it, plus extra helm arguments. It
// does not wait: nodes turn Ready once the DaemonSet's init container ran.
func (c *Cluster) InstallWarpnet(ctx context.Context, helm, imageTar, image string, extra ...string) (string, error) {
	if err := c.ImportImage(imageTar); err != nil {
		return "", err
	}
	repo, tag, ok := strings.Cut(image, ":")
	if !ok {
		return "", fmt.Errorf("image %q: want repository:tag", image)
	}
	args := append([]string{"install", "warpnet", Chart(), "--namespace", Namespace, "--create-namespace",
		"--set", "image.repository=" + repo, "--set", "image.tag=" + tag}, c.HelmValues()...)
	return c.Helm(ctx, helm, append(args, extra...)...)
}

// WaitNodesReady waits until every node is Ready.
func (c *Cluster) WaitNodesReady(ctx context.Context, timeout time.Duration) error {
	return waitUntil(ctx, timeout, "nodes Ready", func() error {
		for _, n := range c.Nodes {
			cond, err := c.NodeReady(ctx, n.Name)
			if err != nil {
				return err
			}
			if cond.Status != "True" {
				return fmt.Errorf("%s: %s: %s", n.Name, cond.Reason, cond.Message)
			}
		}
		return nil
	})
}

// WaitDaemonSet waits until the warpnet DaemonSet's pods run the image on
// every node and are ready.
func (c *Cluster) WaitDaemonSet(ctx context.Context, image string, timeout time.Duration) error {
	return waitUntil(ctx, timeout, "warpnet DaemonSet ready with "+image, func() error {
		ds, err := c.Client().AppsV1().DaemonSets(Namespace).Get(ctx, "warpnet", metav1.GetOptions{})
		if err != nil {
			return err
		}
		s := ds.Status
		if ds.Spec.Template.Spec.Containers[0].Image != image {
			return fmt.Errorf("template has image %s", ds.Spec.Template.Spec.Containers[0].Image)
		}
		if s.ObservedGeneration < ds.Generation || s.UpdatedNumberScheduled != s.DesiredNumberScheduled ||
			s.NumberReady != s.DesiredNumberScheduled || s.DesiredNumberScheduled != int32(len(c.Nodes)) || s.NumberUnavailable > 0 {
			return fmt.Errorf("desired %d, updated %d, ready %d, unavailable %d", s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady, s.NumberUnavailable)
		}
		return nil
	})
}

// WarpnetLogs returns the last lines of every warpnet pod's containers (for
// a failure report).
func (c *Cluster) WarpnetLogs(ctx context.Context, lines int64) []string {
	pods, err := c.Client().CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, p := range pods.Items {
		for _, ctr := range append(p.Spec.InitContainers, p.Spec.Containers...) {
			b, err := c.Client().CoreV1().Pods(Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: ctr.Name, TailLines: &lines}).DoRaw(ctx)
			out = append(out, fmt.Sprintf("--- %s/%s on %s (%v):\n%s", p.Name, ctr.Name, p.Spec.NodeName, err, b))
		}
	}
	return out
}
