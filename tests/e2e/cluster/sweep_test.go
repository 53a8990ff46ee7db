package cluster_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/internal/mountinfo"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
)

// A cluster whose owner died (a killed test run) is removed by the next
// Sweep: every process (daemons, containerd shims and containers included),
// the mount and network namespaces, the cgroups and the directory.
func TestSweepRemovesAClusterWhoseOwnerDied(t *testing.T) {
	e := harness.New(t)
	harness.RequireTools(t, "etcd", "containerd", "runc", "ctr", "socat", "python3", "go", "sleep")
	ctx := ctxFor(t, 10*time.Minute)
	if _, err := k8s.EnsureBinaries(ctx, t.Logf); err != nil {
		t.Fatal(err)
	}
	// The owner: a process of its own, so the test can kill it.
	owner := exec.Command("sleep", "3600")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer owner.Process.Kill()
	c, err := k8s.Up(ctx, k8s.Options{Name: e.Prefix + "-s", Nodes: 1, Owner: owner.Process.Pid, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Down(c.Dir, t.Logf) }) // only if the sweep failed
	// A container (and its shim) that outlive the daemons: a hostNetwork
	// pod needs no CNI.
	zero := int64(0)
	_, err = c.Client().CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "survivor"},
		Spec: corev1.PodSpec{HostNetwork: true, NodeName: c.Nodes[0].Name, TerminationGracePeriodSeconds: &zero,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "app", Image: k8s.AppImage, ImagePullPolicy: corev1.PullNever, Args: []string{"pause"}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "hostNetwork pod running", 2*time.Minute, func() bool {
		p, err := c.Client().CoreV1().Pods("default").Get(ctx, "survivor", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	procs := cgroupProcs(t, c.CgroupDir())
	var app, shim int
	for _, pid := range procs {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		switch {
		case strings.HasPrefix(string(cmdline), k8s.AppBinary+"\x00pause"):
			app = pid
		case strings.Contains(string(cmdline), "containerd-shim-runc-v2"):
			shim = pid
		}
	}
	if app == 0 || shim == 0 {
		t.Fatalf("no container process or shim in the cluster's cgroup: %v", procs)
	}

	if err := owner.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = owner.Wait()
	if err := k8s.Sweep(t.Logf); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{app, shim} {
		if err := syscall.Kill(pid, 0); err == nil {
			if st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); !strings.Contains(string(st), ") Z ") {
				t.Errorf("process %d survived the sweep", pid)
			}
		}
	}
	for _, p := range []string{c.Dir, c.CgroupDir(), "/run/netns/" + c.Nodes[0].Name, "/run/netns/" + c.Name + "-net"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s survived the sweep", p)
		}
	}
	mounts, _ := mountinfo.Read()
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, c.Dir) {
			t.Errorf("mount %s survived the sweep", m.MountPoint)
		}
	}
	for _, h := range []string{"memory", "cpu", "pids"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", h, "warpnet-k8s", c.Name)); err == nil {
			t.Errorf("cgroup %s/warpnet-k8s/%s survived the sweep", h, c.Name)
		}
	}
}

func cgroupProcs(t *testing.T, dir string) []int {
	t.Helper()
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		return nil
	})
	return pids
}
