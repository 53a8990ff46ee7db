// Package cluster_test installs warpnet the way operators do (helm install
// of install/chart/warpnet, the image from `make image` imported into each
// node's containerd) into a real Kubernetes cluster on this machine
// (tests/k8s: control plane + 2 kubelet/containerd nodes in namespaces, no
// kube-proxy, no CNI preinstalled), and proves it under its real callers:
// the kubelet, containerd's CRI, the scheduler, the DaemonSet controller.
// The cluster is dual-stack. Pods run on both nodes: an address of each
// family from each node's spec.podCIDRs, pod to pod and ClusterIPs across
// nodes (IPv4 and IPv6) through warpd's cluster network and socket LB;
// NodePort and LoadBalancer Services from a client outside the cluster
// through warpd's north-south load balancer (northsouth_test.go).
// CoreDNS (built from the module proxy) serves the cluster's DNS through
// that socket LB, and Multus (likewise) delegates eth0 to warp-veth and
// net1 to warp-sriov on each node's simulated SR-IOV NIC, with VFs
// allocated by the kubelet from a device plugin and net1's address from an
// IPPool through warp-ipam's kubernetes store (addons_test.go).
package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
)

const ns = "default"

// TestWarpnetOnRealCluster runs the scenarios in order on one cluster
// (starting one costs about a minute); each subtest needs the ones before
// it.
func TestWarpnetOnRealCluster(t *testing.T) {
	harness.RequireTools(t, filepath.Join(harness.BinDir(), "warpd"), "bpftool")
	// Every node with a simulated SR-IOV NIC of 4 VFs (for the Multus case).
	c, helm := k8s.StartWith(t, k8s.Options{Nodes: 2, SRIOVVFs: 4})
	w := &world{t: t, c: c, helm: helm, podCIDR: map[string][]netip.Prefix{}, long: map[string]string{}}
	for _, st := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"NodesReadyOnceInstallerWroteConflist", w.nodesReadyAfterInstall},
		{"ReadmeTryItCommands", w.readme},
		{"PodsOnBothNodesReachPodsAndClusterIPsAcrossNodes", w.podNetworking},
		{"LogsAndExecThroughEgressProxy", w.logsAndExec},
		{"TwentyPodsInARowThenTenAtOnce", w.churn},
		{"HelmUpgradeKeepsConnectionsAndNewPodsWork", w.upgrade},
		{"CoreDNSResolvesServiceNamesOverUDPThroughTheSocketLB", w.coreDNS},
		{"NodePortAndLoadBalancerFromOutsideWithoutKubeProxy", w.northSouth},
		{"MultusDelegatesEth0ToWarpVethAndNet1ToWarpSRIOVOnTheAllocatedVF", w.multusSRIOV},
	} {
		start := time.Now()
		ok := t.Run(st.name, st.fn)
		t.Logf("%s: %.1fs", st.name, time.Since(start).Seconds())
		if !ok {
			t.FailNow()
		}
	}
}

type world struct {
	t    *testing.T
	c    *k8s.Cluster
	helm string

	image               string
	podCIDR             map[string][]netip.Prefix // node name -> spec.podCIDRs (IPv4, IPv6)
	serverIP, serverIP6 string                    // the web pod (on node 1)
	clusterIP           string                    // its Service
	long                map[string]string         // pods that live across subtests -> their node
}

// node returns the i-th node (0-based).
func (w *world) node(i int) *k8s.Node { return w.c.Nodes[i] }

// poll reports whether cond comes to hold within timeout (routes and map
// entries appear asynchronously).
func poll(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// buildImage runs what `make image` runs, with the given tag, on the
// binaries in binDir.
func buildImage(t *testing.T, binDir, tag string) (tar, name string) {
	t.Helper()
	tar = filepath.Join(t.TempDir(), "warpnet-"+tag+".tar")
	cmd := exec.Command("go", "run", "./install/mkimage", "--bin", binDir, "--tag", tag, "--out", tar)
	cmd.Dir = harness.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, out)
	} else {
		t.Logf("%s", strings.TrimSpace(string(out)))
	}
	return tar, "localhost/warpnet:" + tag
}

func (w *world) nodesReadyAfterInstall(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	// Before: no CNI, so every node is NotReady for that reason.
	for _, n := range w.c.Nodes {
		cond, err := w.c.NodeReady(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if cond.Status == corev1.ConditionTrue || !strings.Contains(strings.ToLower(cond.Message), "cni") {
			t.Fatalf("%s before install: Ready=%s %q, want NotReady for lack of a CNI", n.Name, cond.Status, cond.Message)
		}
		if ents, _ := os.ReadDir(n.Root + "/etc/cni/net.d"); len(ents) != 0 {
			t.Fatalf("%s has CNI config before install: %v", n.Name, ents)
		}
	}
	tar, image := buildImage(t, harness.BinDir(), "e2e-1")
	w.image = image
	start := time.Now()
	// XDP on: pods get warp-veth's XDP datapath too, so the churn below
	// also proves its map entries are removed with the pods. The
	// north-south load balancer on (tc: the nodes' eth0 is a veth), as
	// README's "Running without kube-proxy" says: every subtest runs with
	// its programs attached, and northSouth tests it from outside.
	out, err := w.c.InstallWarpnet(ctx, w.helm, tar, image, "--set", "cni.xdp=true", "--set", "warpd.lb.attach=tc")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install:\n%s", out)
	if err := w.c.WaitDaemonSet(ctx, image, 5*time.Minute); err != nil {
		w.dumpWarpnetPods(t)
		t.Fatal(err)
	}
	if err := w.c.WaitNodesReady(ctx, 3*time.Minute); err != nil {
		w.dumpWarpnetPods(t)
		t.Fatal(err)
	}
	t.Logf("DaemonSet ready and nodes Ready %.1fs after helm install", time.Since(start).Seconds())
	// helm installed the chart's CRDs (warp-ipam's kubernetes store) first.
	if out, err := w.c.Kubectl(ctx, "", "get", "crd", "ippools.ipam.warpnet.io", "ipallocations.ipam.warpnet.io", "-o", "name"); err != nil {
		t.Errorf("the chart's CRDs: %v", err)
	} else {
		t.Logf("CRDs: %s", strings.Join(strings.Fields(out), " "))
	}

	pods := w.warpnetPods(t, ctx)
	for _, n := range w.c.Nodes {
		conflist := n.Root + "/etc/cni/net.d/10-warpnet.conflist"
		if _, err := os.Stat(conflist); err != nil {
			t.Errorf("%s: no conflist: %v", n.Name, err)
		}
		for _, p := range []string{"warp-veth", "warp-ipam", "warp-sriov", "loopback"} {
			if _, err := os.Stat(n.Root + "/opt/cni/bin/" + p); err != nil {
				t.Errorf("%s: %s not installed: %v", n.Name, p, err)
			}
		}
		if _, err := os.Stat(n.Root + "/etc/cni/net.d/warpnet.d/warp-ipam.kubeconfig"); err != nil {
			t.Errorf("%s: warp-ipam kubeconfig: %v", n.Name, err)
		}
		// The node turned Ready after (not before) its installer finished.
		p, ok := pods[n.Name]
		if !ok {
			t.Fatalf("no warpnet pod on %s", n.Name)
		}
		term := p.Status.InitContainerStatuses[0].State.Terminated
		if term == nil || term.ExitCode != 0 {
			t.Fatalf("%s: install-cni did not succeed: %+v", n.Name, p.Status.InitContainerStatuses[0].State)
		}
		cond, _ := w.c.NodeReady(ctx, n.Name)
		// (API timestamps have whole seconds.)
		if cond.LastTransitionTime.Add(time.Second).Before(term.FinishedAt.Time) {
			t.Errorf("%s Ready at %v, before its installer finished at %v", n.Name, cond.LastTransitionTime, term.FinishedAt)
		}
	}
	for _, p := range []string{"/opt/cni/bin/warp-veth", "/etc/cni/net.d/10-warpnet.conflist"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the installer wrote %s on the machine itself", p)
		}
	}
	for _, n := range w.c.Nodes {
		cidrs, err := w.c.PodCIDRs(ctx, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cidrs {
			w.podCIDR[n.Name] = append(w.podCIDR[n.Name], netip.MustParsePrefix(c))
		}
	}
	// warpd published each node's own pod CIDRs (dual-stack) for the plugins.
	for _, n := range w.c.Nodes {
		var facts struct {
			PodCIDRs []string `json:"podCIDRs"`
		}
		harness.WaitFor(t, "node facts of "+n.Name, time.Minute, func() bool {
			b, err := os.ReadFile(n.Root + "/run/warpnet/node.json")
			return err == nil && json.Unmarshal(b, &facts) == nil && len(facts.PodCIDRs) > 0
		})
		if fmt.Sprint(facts.PodCIDRs) != fmt.Sprint(w.podCIDR[n.Name]) {
			t.Errorf("%s: node facts say pod CIDRs %v, spec.podCIDRs are %v", n.Name, facts.PodCIDRs, w.podCIDR[n.Name])
		}
	}
}

// The kubectl lines of README.md's "Try it on a real cluster", as written,
// with the kubectl built with the cluster's binaries.
func (w *world) readme(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	readme, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## Try it on a real cluster")
	_, block, ok2 := strings.Cut(section, "```sh\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no sh block under \"## Try it on a real cluster\"")
	}
	bin := t.TempDir()
	if err := os.Symlink(k8s.KubeBinary("kubectl"), filepath.Join(bin, "kubectl")); err != nil {
		t.Fatal(err)
	}
	var last string
	n := 0
	for _, line := range strings.Split(block, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); !strings.HasPrefix(line, "kubectl ") {
			continue
		}
		cmd := exec.CommandContext(ctx, "bash", "-c", line)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+w.c.Kubeconfig, "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README: %s: %v\n%s", line, err, out)
		}
		last, n = string(out), n+1
	}
	if n < 5 || !strings.HasPrefix(last, "web ") {
		t.Fatalf("README: ran %d kubectl lines; the last said %q, want the web pod's answer through its ClusterIP", n, last)
	}
	// Out of the way of the next subtests.
	cl := w.c.Client()
	if err := cl.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.deletePods(t, ctx, "web", "client")
}

func (w *world) warpnetPods(t *testing.T, ctx context.Context) map[string]corev1.Pod {
	t.Helper()
	list, err := w.c.Client().CoreV1().Pods(k8s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=warpnet"})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]corev1.Pod{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			m[p.Spec.NodeName] = p
		}
	}
	return m
}

func (w *world) dumpWarpnetPods(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	for _, l := range w.c.WarpnetLogs(ctx, 30) {
		t.Log(l)
	}
	ev, _ := w.c.Client().CoreV1().Events("").List(ctx, metav1.ListOptions{})
	for _, e := range ev.Items {
		if e.Type != corev1.EventTypeNormal {
			t.Logf("event %s/%s: %s %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
}

// pod is an app pod. The scheduler places it: on node (a nodeSelector)
// unless node is nil.
func (w *world) pod(name string, node *k8s.Node, labels map[string]string, args ...string) *corev1.Pod {
	zero := int64(0)
	var sel map[string]string
	if node != nil {
		sel = map[string]string{"kubernetes.io/hostname": node.Name}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeSelector:                  sel,
			TerminationGracePeriodSeconds: &zero,
			RestartPolicy:                 corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "app", Image: k8s.AppImage, ImagePullPolicy: corev1.PullNever, Args: args,
			}},
		},
	}
}

// placed is where a pod runs: its IPv4 and IPv6 addresses and its node.
type placed struct{ IP, IP6, Node string }

// runPods creates the pods and waits until each runs with an IP from its
// node's pod CIDR.
func (w *world) runPods(t *testing.T, ctx context.Context, pods ...*corev1.Pod) map[string]placed {
	t.Helper()
	cl := w.c.Client().CoreV1().Pods(ns)
	for _, p := range pods {
		if _, err := cl.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ips := map[string]placed{}
	for _, p := range pods {
		var last *corev1.Pod
		harness.WaitFor(t, "pod "+p.Name+" running with an IP", 3*time.Minute, func() bool {
			got, err := cl.Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			last = got
			return got.Status.Phase == corev1.PodRunning && got.Status.PodIP != ""
		})
		if want := p.Spec.NodeSelector["kubernetes.io/hostname"]; want != "" && last.Spec.NodeName != want {
			t.Fatalf("pod %s scheduled to %s, want %s", p.Name, last.Spec.NodeName, want)
		}
		// One address per family, each from that node's pod CIDR of the family.
		cidrs := w.podCIDR[last.Spec.NodeName]
		var got []string
		for i, pip := range last.Status.PodIPs {
			got = append(got, pip.IP)
			ip, err := netip.ParseAddr(pip.IP)
			if err != nil || i >= len(cidrs) || !cidrs[i].Contains(ip) {
				got = nil
				break
			}
		}
		if len(got) != len(cidrs) {
			t.Fatalf("pod %s on %s got %v, want one address in each of %v (that node's spec.podCIDRs)", p.Name, last.Spec.NodeName, last.Status.PodIPs, cidrs)
		}
		ips[p.Name] = placed{IP: got[0], IP6: got[1], Node: last.Spec.NodeName}
	}
	return ips
}

func (w *world) deletePods(t *testing.T, ctx context.Context, names ...string) {
	t.Helper()
	cl := w.c.Client().CoreV1().Pods(ns)
	zero := int64(0)
	for _, n := range names {
		if err := cl.Delete(ctx, n, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		harness.WaitFor(t, "pod "+n+" gone", 2*time.Minute, func() bool {
			_, err := cl.Get(ctx, n, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
	}
}

func (w *world) exec(t *testing.T, ctx context.Context, pod string, argv ...string) string {
	t.Helper()
	stdout, stderr, err := w.c.Exec(ctx, ns, pod, "app", argv...)
	if err != nil {
		t.Fatalf("exec in %s: %v: %v\nstdout: %s\nstderr: %s", pod, argv, err, stdout, stderr)
	}
	return stdout
}

func (w *world) service(t *testing.T, ctx context.Context, name string, selector map[string]string, port, target int32) string {
	t.Helper()
	svc, err := w.c.Client().CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{{
			Port: port, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// dualStackService makes a Service with a ClusterIP of each family and
// returns them (IPv4 first).
func (w *world) dualStackService(t *testing.T, ctx context.Context, name string, selector map[string]string, port, target int32) []string {
	t.Helper()
	policy := corev1.IPFamilyPolicyRequireDualStack
	svc, err := w.c.Client().CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: selector, IPFamilyPolicy: &policy, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			Ports: []corev1.ServicePort{{Port: port, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("Service %s has ClusterIPs %v, want one per family", name, svc.Spec.ClusterIPs)
	}
	return svc.Spec.ClusterIPs
}

func (w *world) podNetworking(t *testing.T) {
	ctx := ctxFor(t, 6*time.Minute)
	n1, n2 := w.node(0), w.node(1)
	web := map[string]string{"app": "web"}
	ips := w.runPods(t, ctx,
		w.pod("web", n1, web, "serve", ":8080"), w.pod("udp", n1, nil, "echo", ":7001"),
		w.pod("client", n1, nil, "pause"), w.pod("remote", n2, nil, "pause"))
	for name, p := range ips {
		w.long[name] = p.Node
	}
	w.serverIP, w.serverIP6 = ips["web"].IP, ips["web"].IP6
	seen := map[string]string{}
	for name, p := range ips {
		if other, dup := seen[p.IP]; dup {
			t.Fatalf("%s and %s share %s", name, other, p.IP)
		}
		seen[p.IP] = name
	}
	// warp-veth made the pod's host end in its node's namespace, with a /32
	// route to the pod; the other node routes the whole pod CIDR to it
	// (warpd's cluster network, native on the shared underlay).
	routes, err := n1.Run(ctx, "ip", "-4", "route", "show", w.serverIP+"/32")
	if err != nil || !strings.Contains(routes, "dev warp") {
		t.Fatalf("no warp-veth route to %s on %s: %q %v", w.serverIP, n1.Name, routes, err)
	}
	for i, via := range []string{n1.IP, n1.IP6} {
		cidr := w.podCIDR[n1.Name][i].String()
		fam := []string{"-4", "-6"}[i]
		if !poll(30*time.Second, func() bool {
			routes, err = n2.Run(ctx, "ip", fam, "route", "show", cidr)
			return err == nil && strings.Contains(routes, "via "+via)
		}) {
			all, _ := n2.Run(ctx, "sh", "-c", "ip "+fam+" route; ip "+fam+" addr")
			w.dumpWarpnetPods(t)
			t.Fatalf("%s has no route to %s's pods (%s) via %s: %q %v\n%s", n2.Name, n1.Name, cidr, via, routes, err, all)
		}
	}
	// Pod to pod, TCP and UDP, IPv4 and IPv6, on the same node and across
	// nodes; the server sees the client's own address (no masquerading
	// inside the cluster).
	for _, client := range []string{"client", "remote"} {
		for _, fam := range []struct{ web, udp, from string }{
			{w.serverIP, ips["udp"].IP, ips[client].IP},
			{"[" + ips["web"].IP6 + "]", "[" + ips["udp"].IP6 + "]", "[" + ips[client].IP6 + "]"},
		} {
			out := w.exec(t, ctx, client, k8s.AppBinary, "get", "http://"+fam.web+":8080/", "20")
			if !strings.HasPrefix(out, "web ") || !strings.Contains(out, " from "+fam.from+":") {
				t.Fatalf("%s (%s) to pod %s (%s) over TCP: got %q, want the web pod's answer to %s", client, ips[client].Node, fam.web, n1.Name, out, fam.from)
			}
			out = w.exec(t, ctx, client, k8s.AppBinary, "udp", fam.udp+":7001", "20")
			if !strings.HasPrefix(out, "udp from "+client) {
				t.Fatalf("%s (%s) to pod %s (%s) over UDP: got %q", client, ips[client].Node, fam.udp, n1.Name, out)
			}
		}
	}
	// The other way round too, from node 1 to a server on node 2.
	ips2 := w.runPods(t, ctx, w.pod("web2", n2, map[string]string{"app": "web2"}, "serve", ":8080"))
	w.long["web2"] = n2.Name
	if out := w.exec(t, ctx, "client", k8s.AppBinary, "get", "http://"+ips2["web2"].IP+":8080/", "20"); !strings.HasPrefix(out, "web2 ") {
		t.Fatalf("client (%s) to pod web2 (%s): %q", n1.Name, n2.Name, out)
	}
	// Pod to ClusterIP, from both nodes: no kube-proxy runs, so only warpd's
	// socket LB can translate it; retried while warpd learns the
	// EndpointSlice. From "remote" the only backend is on the other node.
	w.clusterIP = w.service(t, ctx, "web", web, 80, 8080)
	for _, client := range []string{"client", "remote"} {
		out := w.exec(t, ctx, client, k8s.AppBinary, "get", "http://"+w.clusterIP+"/", "30")
		if !strings.HasPrefix(out, "web ") {
			t.Fatalf("%s (%s) to ClusterIP %s (backend on %s): got %q", client, ips[client].Node, w.clusterIP, n1.Name, out)
		}
	}
	// And the other way: a backend on node 2 behind a ClusterIP, from node
	// 1, over IPv4 and over IPv6 (a dual-stack Service).
	vips := w.dualStackService(t, ctx, "web2", map[string]string{"app": "web2"}, 80, 8080)
	for _, vip := range vips {
		host := vip
		if strings.Contains(vip, ":") {
			host = "[" + vip + "]"
		}
		if out := w.exec(t, ctx, "client", k8s.AppBinary, "get", "http://"+host+"/", "30"); !strings.HasPrefix(out, "web2 ") {
			t.Fatalf("client (%s) to ClusterIP %s (backend on %s): %q", n1.Name, vip, n2.Name, out)
		}
	}
	for _, n := range w.c.Nodes {
		if rules, err := n.Run(ctx, "sh", "-c", "iptables-save 2>/dev/null | grep -c KUBE-SVC || true"); err == nil && strings.TrimSpace(rules) != "0" && strings.TrimSpace(rules) != "" {
			t.Fatalf("kube-proxy rules on %s (%s): the ClusterIP must be warpd's", n.Name, rules)
		}
	}
}

func (w *world) logsAndExec(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	for node, p := range w.warpnetPods(t, ctx) {
		logs, err := w.c.Logs(ctx, k8s.Namespace, p.Name, "install-cni")
		if err != nil || !strings.Contains(logs, "warp-install: done") {
			t.Errorf("kubectl logs %s -c install-cni (%s): %v\n%s", p.Name, node, err, logs)
		}
	}
	if out := w.exec(t, ctx, "client", k8s.AppBinary, "addrs"); !strings.Contains(out, w.serverIP[:strings.LastIndex(w.serverIP, ".")]) {
		t.Errorf("exec addrs in client: %q", out)
	}
}

// longOn counts the long-lived pods on a node.
func (w *world) longOn(node string) int {
	n := 0
	for _, on := range w.long {
		if on == node {
			n++
		}
	}
	return n
}

// leftovers lists what the nodes hold for pods that no longer exist:
// warp-veth host links and routes, XDP map entries, warp-ipam reservations.
func (w *world) leftovers(t *testing.T, ctx context.Context, gone map[string]bool) []string {
	t.Helper()
	var left []string
	for _, n := range w.c.Nodes {
		routes, err := n.Run(ctx, "sh", "-c", "ip -4 route; ip -6 route")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(routes, "\n") {
			if f := strings.Fields(line); len(f) > 0 && gone[f[0]] {
				left = append(left, n.Name+": route "+line)
			}
		}
		// warp-veth's XDP maps (pinned in the node's own bpffs): one
		// endpoint per pod, one owner entry per pod address (two families).
		if got, want := w.mapEntries(t, ctx, n, "warp_endpoints"), w.longOn(n.Name); got != want {
			left = append(left, fmt.Sprintf("%s: warp_endpoints has %d entries for %d pods", n.Name, got, want))
		}
		if got, want := w.mapEntries(t, ctx, n, "warp_ips"), 2*w.longOn(n.Name); got != want {
			left = append(left, fmt.Sprintf("%s: warp_ips has %d entries for the %d addresses of %d pods", n.Name, got, want, w.longOn(n.Name)))
		}
		if got, want := w.warpLinks(t, ctx, n), w.longOn(n.Name); got != want {
			left = append(left, fmt.Sprintf("%s: %d warp links for %d pods", n.Name, got, want))
		}
		ents, _ := os.ReadDir(n.Root + "/var/lib/cni/networks/warpnet")
		for _, e := range ents {
			if gone[e.Name()] {
				left = append(left, n.Name+": reservation "+e.Name())
			}
		}
	}
	return left
}

// mapEntries counts the entries of one of warp-veth's pinned XDP maps in
// the node's bpffs.
func (w *world) mapEntries(t *testing.T, ctx context.Context, n *k8s.Node, m string) int {
	t.Helper()
	out, err := n.Run(ctx, "bpftool", "-j", "map", "dump", "pinned", "/sys/fs/bpf/warpnet/maps/"+m)
	if err != nil {
		t.Fatalf("dump %s: %v", m, err)
	}
	var entries []any
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("dump %s: %v\n%s", m, err, out)
	}
	return len(entries)
}

// warpLinks counts warp-veth's host ends on a node.
func (w *world) warpLinks(t *testing.T, ctx context.Context, n *k8s.Node) int {
	t.Helper()
	out, err := n.Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "warp") {
			c++
		}
	}
	return c
}

func (w *world) churn(t *testing.T) {
	ctx := ctxFor(t, 15*time.Minute)
	if left := w.leftovers(t, ctx, nil); len(left) > 0 {
		t.Fatalf("before churn: %v", left)
	}
	seen := map[string]string{}
	gone := map[string]bool{}
	perNode := map[string]int{}
	start := time.Now()
	// In a row, alternating between the nodes.
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("seq-%d", i)
		p := w.runPods(t, ctx, w.pod(name, w.node(i%2), nil, "pause"))[name]
		if other, dup := seen[p.IP]; dup {
			t.Fatalf("%s got %s, which %s had", name, p.IP, other)
		}
		seen[p.IP] = name
		perNode[p.Node]++
		w.deletePods(t, ctx, name)
		gone[p.IP], gone[p.IP6] = true, true
	}
	t.Logf("20 pods created and deleted in a row in %.1fs, 20 distinct IPs (per node: %v)", time.Since(start).Seconds(), perNode)

	// At once, spread by the scheduler (a topology spread constraint over
	// the nodes, as a Deployment would ask for).
	start = time.Now()
	var batch []*corev1.Pod
	var names []string
	spread := map[string]string{"churn": "par"}
	for i := 0; i < 10; i++ {
		names = append(names, fmt.Sprintf("par-%d", i))
		p := w.pod(names[i], nil, spread, "pause")
		p.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
			LabelSelector: &metav1.LabelSelector{MatchLabels: spread},
		}}
		batch = append(batch, p)
	}
	ips := w.runPods(t, ctx, batch...)
	at := map[string]string{}
	onNode := map[string]int{}
	for name, p := range ips {
		if other, dup := at[p.IP]; dup {
			t.Fatalf("%s and %s both got %s", name, other, p.IP)
		}
		at[p.IP] = name
		gone[p.IP], gone[p.IP6] = true, true
		onNode[p.Node]++
	}
	for _, n := range w.c.Nodes {
		if onNode[n.Name] == 0 {
			t.Fatalf("the 10 pods were not spread: %v", onNode)
		}
		if got, want := w.warpLinks(t, ctx, n), w.longOn(n.Name)+onNode[n.Name]; got != want {
			t.Errorf("%s: %d warp links with %d more pods, want %d", n.Name, got, onNode[n.Name], want)
		}
		if got, want := w.mapEntries(t, ctx, n, "warp_endpoints"), w.longOn(n.Name)+onNode[n.Name]; got != want {
			t.Errorf("%s: %d XDP endpoints with %d more pods, want %d", n.Name, got, onNode[n.Name], want)
		}
	}
	w.deletePods(t, ctx, names...)
	t.Logf("10 pods at once (per node: %v): running and deleted in %.1fs, 10 distinct IPs", onNode, time.Since(start).Seconds())

	// Nothing left behind: links, routes, map entries, reservations. The
	// kubelet's delete returns before containerd's CNI DEL may have
	// finished: wait for it.
	for ip := range gone {
		if ip == w.serverIP || ip == w.serverIP6 {
			t.Fatalf("a churn pod got the live web pod's address %s", ip)
		}
	}
	waitNone(t, "CNI DEL of every deleted pod", 2*time.Minute, func() []string { return w.leftovers(t, ctx, gone) })
}

func (w *world) upgrade(t *testing.T) {
	ctx := ctxFor(t, 12*time.Minute)
	// Existing connections held open across the upgrade, both between pods
	// on different nodes: one through a ClusterIP, one to the pod address.
	n1, n2 := w.node(0), w.node(1)
	echo := map[string]string{"app": "echo"}
	echoIP := w.runPods(t, ctx, w.pod("echo", n1, echo, "echo", ":7000"))["echo"].IP
	w.long["echo"] = n1.Name
	vip := w.service(t, ctx, "echo", echo, 7, 7000)
	// The hold clients retry their connect until warpd has the service.
	w.runPods(t, ctx, w.pod("holder", n2, nil, "hold", vip+":7", "0"), w.pod("holder-pod", n2, nil, "hold", echoIP+":7000", "0"))
	w.long["holder"], w.long["holder-pod"] = n2.Name, n2.Name
	holders := []string{"holder", "holder-pod"}
	for _, h := range holders {
		harness.WaitFor(t, h+" connected", 2*time.Minute, func() bool {
			return roundTrips(w.logs(t, ctx, h)) >= 50
		})
	}
	if logs := w.logs(t, ctx, "holder"); !strings.Contains(logs, "(peer as seen: "+vip+":7)") {
		t.Fatalf("the holder's socket does not show the ClusterIP as its peer (warpd's getpeername hook):\n%s", logs)
	}
	before := w.warpnetPods(t, ctx)

	// A real upgrade: every binary rebuilt as another version, so the
	// installer has to replace the plugins on the nodes.
	v2 := buildVersion(t, "e2e-2")
	tar, image := buildImage(t, v2, "e2e-2")
	if err := w.c.ImportImage(tar); err != nil {
		t.Fatal(err)
	}
	_, tag, _ := strings.Cut(image, ":")
	start := time.Now()
	if out, err := w.c.Helm(ctx, w.helm, "upgrade", "warpnet", k8s.Chart(), "--namespace", k8s.Namespace, "--reuse-values", "--set", "image.tag="+tag); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm upgrade:\n%s", out)
	}
	if err := w.c.WaitDaemonSet(ctx, image, 5*time.Minute); err != nil {
		w.dumpWarpnetPods(t)
		t.Fatal(err)
	}
	t.Logf("DaemonSet rolled to %s in %.1fs", image, time.Since(start).Seconds())
	after := w.warpnetPods(t, ctx)
	for node, p := range after {
		if p.UID == before[node].UID {
			t.Errorf("%s: warpnet pod not replaced by the upgrade", node)
		}
		if got := p.Spec.InitContainers[0].Image; got != image {
			t.Errorf("%s: installer image %s", node, got)
		}
	}
	for _, n := range w.c.Nodes {
		for _, p := range []string{"warp-veth", "warp-ipam", "warp-sriov"} {
			got, _ := os.ReadFile(n.Root + "/opt/cni/bin/" + p)
			want, _ := os.ReadFile(filepath.Join(v2, p))
			if len(want) == 0 || string(got) != string(want) {
				t.Errorf("%s: %s was not upgraded by the new installer", n.Name, p)
			}
		}
	}
	// A pod made by the old plugins is torn down by the new ones, completely.
	oldIP, oldIP6 := w.serverIP, w.serverIP6
	w.deletePods(t, ctx, "web")
	delete(w.long, "web")
	harness.WaitFor(t, "the old pod's CNI DEL by the upgraded plugins", 2*time.Minute, func() bool {
		return len(w.leftovers(t, ctx, map[string]bool{oldIP: true, oldIP6: true})) == 0
	})
	w.runPods(t, ctx, w.pod("web", n1, map[string]string{"app": "web"}, "serve", ":8080"))
	w.long["web"] = n1.Name
	// New pods on both nodes work with the upgraded plugins and warpd: an
	// address, the ClusterIP of the service that existed before.
	ips := w.runPods(t, ctx, w.pod("after-upgrade-1", n1, nil, "pause"), w.pod("after-upgrade-2", n2, nil, "pause"))
	for name, p := range ips {
		w.long[name] = p.Node
		out := w.exec(t, ctx, name, k8s.AppBinary, "get", "http://"+w.clusterIP+"/", "30")
		if !strings.HasPrefix(out, "web ") {
			t.Fatalf("new pod %s (%s, %s) to ClusterIP after upgrade: %q", name, p.IP, p.Node, out)
		}
	}
	// The held connections survived: a holder exits at its first failed
	// round trip; each must still be running and have made round trips
	// after the rollout completed.
	for _, h := range holders {
		seen := roundTrips(w.logs(t, ctx, h))
		harness.WaitFor(t, h+": 50 more round trips after the rollout", 2*time.Minute, func() bool {
			return roundTrips(w.logs(t, ctx, h)) >= seen+50
		})
		p, err := w.c.Client().CoreV1().Pods(ns).Get(ctx, h, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		logs := w.logs(t, ctx, h)
		if p.Status.Phase != corev1.PodRunning || strings.Contains(logs, "broke") {
			t.Fatalf("the connection %s held across the upgrade broke (%s):\n%s", h, p.Status.Phase, logs)
		}
		t.Logf("%s (%s): %s", h, p.Spec.NodeName, lastLine(logs))
	}
}

// buildVersion builds the image's binaries stamped as version into a
// temporary directory (as make build does, with another VERSION).
func buildVersion(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	pkgs := map[string]string{"warp-ipam": "./ipam", "warp-veth": "./plugins/veth", "warp-sriov": "./plugins/sriov",
		"warpctl": "./cmd/warpctl", "warpd": "./daemon/warpd", "warp-install": "./cmd/warp-install",
		"loopback": "github.com/containernetworking/plugins/plugins/main/loopback"}
	for name, pkg := range pkgs {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X github.com/warpnet/warpnet/internal/buildinfo.Version="+version,
			"-o", filepath.Join(dir, name), pkg)
		cmd.Dir = harness.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	return dir
}

func (w *world) logs(t *testing.T, ctx context.Context, pod string) string {
	t.Helper()
	logs, err := w.c.Logs(ctx, ns, pod, "app")
	if err != nil {
		t.Logf("logs of %s: %v", pod, err)
	}
	return logs
}

// roundTrips is the last count the holder logged ("N round trips").
func roundTrips(logs string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[1] == "round" {
			if v, err := strconv.Atoi(f[0]); err == nil {
				n = v
			}
		}
	}
	return n
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
