// Command warp-cluster runs a real Kubernetes cluster with warpnet on this
// machine, like kind but without docker: `make cluster` and `make
// cluster-down`. See tests/k8s for how the nodes are made.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/warpnet/warpnet/tests/k8s"
)

// defaultName of the cluster; its namespaces are warpnet-net, warpnet-node1, ...
const defaultName = "warpnet"

func usage() {
	fmt.Fprintf(os.Stderr, `Usage: warp-cluster up --image FILE --image-name REPO:TAG [--nodes N] [--name NAME]
       warp-cluster down [--name NAME]

up    starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler (%s) and N
      kubelet + containerd nodes (network namespaces %s-node1..N, each with its own
      mount namespace) on this machine, imports the warpnet image (make image) into
      every node and installs warpnet with its Helm chart. Prints how to use kubectl.
      The cluster keeps running until down.
down  stops every process of the cluster and removes its namespaces, mounts,
      cgroups and files.

--name names the cluster (default %s); --owner PID (tests) makes it a leftover for the
next sweep once that process is gone.
Needs root, and the Kubernetes binaries and helm (make kube helm; make cluster does it).
`, k8s.KubeVersion, defaultName, defaultName)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	log := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	switch os.Args[1] {
	case "down":
		fs := flag.NewFlagSet("down", flag.ExitOnError)
		fs.Usage = usage
		name := fs.String("name", defaultName, "the cluster's name")
		_ = fs.Parse(os.Args[2:])
		dir := filepath.Join(k8s.BaseDir(), *name)
		if _, err := os.Stat(dir); err != nil {
			fmt.Println("warp-cluster: no cluster is running")
			return
		}
		if err := k8s.Down(dir, log); err != nil {
			fmt.Fprintf(os.Stderr, "warp-cluster: down: %v\n", err)
			os.Exit(1)
		}
	case "up":
		fs := flag.NewFlagSet("up", flag.ExitOnError)
		fs.Usage = usage
		image := fs.String("image", "bin/warpnet-image.tar", "the warpnet image (make image)")
		imageName := fs.String("image-name", "", "its name, repository:tag (make image prints it)")
		nodes := fs.Int("nodes", 2, "number of nodes")
		name := fs.String("name", defaultName, "the cluster's name ([a-z0-9-], at most 20 characters)")
		owner := fs.Int("owner", 0, "PID whose death makes the cluster a leftover for the next sweep (tests); 0: kept until down")
		_ = fs.Parse(os.Args[2:])
		if *imageName == "" {
			fmt.Fprintln(os.Stderr, "warp-cluster: --image-name is required")
			os.Exit(2)
		}
		if err := up(*name, *image, *imageName, *nodes, *owner, log); err != nil {
			fmt.Fprintf(os.Stderr, "warp-cluster: %v\n", err)
			os.Exit(1)
		}
	case "-h", "--help", "help":
		usage()
	default:
		usage()
		os.Exit(2)
	}
}

func up(name, image, imageName string, nodes, owner int, log func(string, ...any)) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (namespaces, mounts, cgroups)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := k8s.Sweep(log); err != nil {
		log("warp-cluster: sweeping leftovers of killed test runs: %v", err)
	}
	helm, err := k8s.EnsureBinaries(ctx, log)
	if err != nil {
		return err
	}
	start := time.Now()
	c, err := k8s.Up(ctx, k8s.Options{Name: name, Nodes: nodes, Owner: owner, Detach: true, Log: log})
	if err != nil {
		return err
	}
	fail := func(err error) error {
		for _, l := range c.WarpnetLogs(ctx, 20) {
			log("%s", l)
		}
		log("warp-cluster: %v; taking the cluster down", err)
		_ = k8s.Down(c.Dir, log)
		return err
	}
	out, err := c.InstallWarpnet(ctx, helm, image, imageName)
	if err != nil {
		return fail(err)
	}
	log("%s", out)
	if err := c.WaitDaemonSet(ctx, imageName, 5*time.Minute); err != nil {
		return fail(err)
	}
	if err := c.WaitNodesReady(ctx, 3*time.Minute); err != nil {
		return fail(err)
	}
	downCmd := "make cluster-down"
	if name != defaultName {
		downCmd = "go run ./tests/k8s/cmd/warp-cluster down --name " + name
	}
	kubectl := "kubectl"
	if _, err := exec.LookPath("kubectl"); err != nil {
		kubectl = k8s.KubeBinary("kubectl") // built with the cluster's binaries
		fmt.Printf("\n(no kubectl in PATH: use %s, e.g. ln -s it into /usr/local/bin)\n", kubectl)
	}
	fmt.Printf(`
Cluster %q is up (%.0fs): %d nodes, warpnet %s installed with helm (release warpnet, namespace %s).

  export KUBECONFIG=%s
  kubectl get nodes -o wide
  kubectl -n %s get pods -o wide
  kubectl run web --image=%s --image-pull-policy=Never -- serve :8080
  kubectl expose pod web --port=80 --target-port=8080
  kubectl run client --image=%s --image-pull-policy=Never -- pause
  kubectl wait --for=condition=Ready pod/web pod/client
  kubectl exec client -- %s get http://$(kubectl get svc web -o jsonpath='{.spec.clusterIP}')/ 10

Nodes are network namespaces (the machine's own network is never touched):
  nsenter --net=/run/netns/%s ip route
helm: %s --kubeconfig %s list -A
Remove everything: %s
`, name, time.Since(start).Seconds(), len(c.Nodes), imageName, k8s.Namespace, c.Kubeconfig, k8s.Namespace,
		k8s.AppImage, k8s.AppImage, k8s.AppBinary, c.Nodes[0].Name, helm, c.Kubeconfig, downCmd)
	return nil
}
