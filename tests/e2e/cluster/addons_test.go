package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/warpnet/warpnet/internal/ociimage"
	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
)

// manifest reads testdata/NAME with ${KEY} replaced by vars[KEY].
func manifest(t *testing.T, name string, vars map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	out := os.Expand(string(b), func(k string) string {
		v, ok := vars[k]
		if !ok {
			t.Fatalf("%s: no value for ${%s}", name, k)
		}
		return v
	})
	return out
}

// apply runs kubectl apply -f - with a manifest.
func (w *world) apply(t *testing.T, ctx context.Context, yaml string) {
	t.Helper()
	if out, err := w.c.Kubectl(ctx, yaml, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl apply:\n%s", strings.TrimSpace(out))
	}
}

// image packs files (image path -> file on this machine) into a one-layer
// image with the entrypoint and imports it into every node.
func (w *world) importImage(t *testing.T, name string, files map[string]string, entrypoint ...string) {
	t.Helper()
	im := ociimage.Image{Name: name, Entrypoint: entrypoint, Dirs: map[string]int64{"/tmp": 0o1777}}
	for dst, src := range files {
		f, err := ociimage.ReadFile(dst, src, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		im.Files = append(im.Files, f)
	}
	tar := filepath.Join(t.TempDir(), "image.tar")
	if _, err := ociimage.WriteFile(tar, im); err != nil {
		t.Fatal(err)
	}
	if err := w.c.ImportImage(tar); err != nil {
		t.Fatal(err)
	}
}

// waitRollout waits until a Deployment or DaemonSet has every replica
// updated and ready.
func (w *world) waitRollout(t *testing.T, ctx context.Context, kind, namespace, name string, timeout time.Duration) {
	t.Helper()
	apps := w.c.Client().AppsV1()
	var state string
	ready := func() bool {
		switch kind {
		case "Deployment":
			d, err := apps.Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				state = err.Error()
				return false
			}
			state = fmt.Sprintf("%d/%d ready, %d updated", d.Status.ReadyReplicas, *d.Spec.Replicas, d.Status.UpdatedReplicas)
			return d.Status.ObservedGeneration >= d.Generation && d.Status.ReadyReplicas == *d.Spec.Replicas && d.Status.UpdatedReplicas == *d.Spec.Replicas
		default:
			var d *appsv1.DaemonSet
			d, err := apps.DaemonSets(namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				state = err.Error()
				return false
			}
			s := d.Status
			state = fmt.Sprintf("%d/%d ready, %d updated", s.NumberReady, s.DesiredNumberScheduled, s.UpdatedNumberScheduled)
			return s.ObservedGeneration >= d.Generation && s.DesiredNumberScheduled == int32(len(w.c.Nodes)) &&
				s.NumberReady == s.DesiredNumberScheduled && s.UpdatedNumberScheduled == s.DesiredNumberScheduled
		}
	}
	if !harness.Until(timeout, 250*time.Millisecond, ready) {
		w.dumpPods(t, namespace)
		t.Fatalf("%s %s/%s not rolled out within %v: %s", kind, namespace, name, timeout, state)
	}
}

// dumpPods logs a namespace's pods, their containers' last log lines and
// the cluster's warning events (for a failure report).
func (w *world) dumpPods(t *testing.T, namespace string) {
	ctx := ctxFor(t, time.Minute)
	pods, _ := w.c.Client().CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	for _, p := range pods.Items {
		t.Logf("pod %s/%s on %s: %s %+v", namespace, p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.ContainerStatuses)
		for _, c := range p.Spec.Containers {
			logs, err := w.c.Logs(ctx, namespace, p.Name, c.Name)
			t.Logf("--- logs of %s/%s (%v):\n%s", p.Name, c.Name, err, lastLines(logs, 20))
		}
	}
	w.dumpWarpnetPods(t)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// coreDNS runs CoreDNS (built from the module proxy) as the cluster's DNS
// behind the kubelets' clusterDNS ClusterIP, and shows pods on both nodes
// resolve Service names through it. The pods know only the ClusterIP
// (their resolv.conf, from the kubelet) and no kube-proxy runs, so every
// answer proves a UDP round trip through warpd's socket LB (the query
// translated at sendmsg/connect, the answer's source restored at recvmsg:
// Go's resolver drops answers from any other address).
func (w *world) coreDNS(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	bin, version, err := k8s.EnsureCoreDNS(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	image := "localhost/coredns:" + version
	w.importImage(t, image, map[string]string{"/coredns": bin}, "/coredns")
	w.apply(t, ctx, manifest(t, "coredns.yaml", map[string]string{
		"IMAGE": image, "API_PORT": fmt.Sprint(w.c.APIPort), "DNS_IP": k8s.DNSServiceIP}))
	w.waitRollout(t, ctx, "Deployment", "kube-system", "coredns", 3*time.Minute)

	for _, client := range []string{"client", "remote"} { // node 1, node 2
		for _, name := range []string{"web.default.svc.cluster.local", "web"} { // FQDN; the search path
			out := w.exec(t, ctx, client, k8s.AppBinary, "resolve", name, "30")
			if got := strings.TrimSpace(out); got != w.clusterIP {
				t.Fatalf("%s (%s) resolved %s to %q, want the Service's ClusterIP %s", client, w.long[client], name, got, w.clusterIP)
			}
		}
		// And the name works: HTTP to the Service by name.
		if out := w.exec(t, ctx, client, k8s.AppBinary, "get", "http://web/", "10"); !strings.HasPrefix(out, "web ") {
			t.Fatalf("%s: GET http://web/: %q", client, out)
		}
	}
	// CoreDNS saw the queries over UDP, from the pods (or their nodes, see below).
	pods, err := w.c.Client().CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		t.Fatal(err)
	}
	var logs string
	for _, p := range pods.Items {
		l, err := w.c.Logs(ctx, "kube-system", p.Name, "coredns")
		if err != nil {
			t.Fatal(err)
		}
		logs += l
	}
	for _, client := range []string{"client", "remote"} {
		p, err := w.c.Client().CoreV1().Pods(ns).Get(ctx, client, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// CoreDNS runs with hostNetwork here (one per node), so a query that
		// the socket LB sends to the other node's replica leaves the pod's
		// node masqueraded (its destination is a node address, outside the
		// cluster's pod and service CIDRs) and shows the node's address; one
		// to the own node's replica shows the pod's.
		seen := false
		for _, line := range strings.Split(logs, "\n") {
			from := strings.Contains(line, "] "+p.Status.PodIP+":") || strings.Contains(line, "] "+p.Status.HostIP+":")
			seen = seen || from && strings.Contains(line, `"A IN web.default.svc.cluster.local. udp `)
		}
		if !seen {
			t.Fatalf("CoreDNS logged no UDP query for web.default.svc.cluster.local from %s (%s):\n%s", client, p.Status.PodIP, lastLines(logs, 20))
		}
	}
	t.Logf("CoreDNS %s answers for %s; pods on both nodes resolved web over UDP", version, k8s.DNSServiceIP)
}

// sriovResource is the chart's examples.sriov.resourceName: the device
// plugin advertises the VFs under it, the SR-IOV NetworkAttachmentDefinition
// names it, pods request it.
const sriovResource = "warpnet.io/sriov_vf"

// networkStatus is one entry of Multus's k8s.v1.cni.cncf.io/network-status.
type networkStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
	Mac       string   `json:"mac"`
	Default   bool     `json:"default"`
}

// multusSRIOV installs Multus as the cluster network (its DaemonSet wraps
// warpnet's conflist as the default delegate), an SR-IOV device plugin for
// each node's simulated NIC, and the chart's NetworkAttachmentDefinition
// examples with warp-ipam's kubernetes store (the SR-IOV network's pool)
// and warpd's leak collector; then two pods ask for the SR-IOV network:
// Multus gives them eth0 through warp-veth and net1 through warp-sriov on
// the VF the kubelet allocated, with an address claimed from the IPPool in
// the API server, and deleting them returns the VFs to the node and the
// addresses to the pool.
func (w *world) multusSRIOV(t *testing.T) {
	ctx := ctxFor(t, 10*time.Minute)
	cl := w.c.Client()

	// The device plugin: every node's VFs become allocatable.
	w.apply(t, ctx, manifest(t, "sriov-device-plugin.yaml", map[string]string{
		"IMAGE": k8s.AppImage, "RESOURCE": sriovResource, "SIM_DIR": filepath.Join(w.c.Dir, "sriov")}))
	w.waitRollout(t, ctx, "DaemonSet", "kube-system", "sriov-device-plugin", 3*time.Minute)
	for _, n := range w.c.Nodes {
		harness.WaitFor(t, n.Name+" advertising its VFs", 2*time.Minute, func() bool {
			node, err := cl.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			q := node.Status.Allocatable[corev1.ResourceName(sriovResource)]
			return q.Value() == int64(len(n.SRIOV.VFs))
		})
	}

	// The NetworkAttachmentDefinition CRD and the chart's examples.
	crd, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "tests", "e2e", "chart", "testdata", "net-attach-def-crd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	w.apply(t, ctx, string(crd))
	if _, err := w.c.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/network-attachment-definitions.k8s.cni.cncf.io"); err != nil {
		t.Fatal(err)
	}
	// The SR-IOV network takes its addresses from a cluster-wide IPPool
	// (warp-ipam's kubernetes store; helm install put its CRDs in), and
	// warpd collects leaked addresses.
	if out, err := w.c.Helm(ctx, w.helm, "upgrade", "warpnet", k8s.Chart(), "--namespace", k8s.Namespace, "--reuse-values",
		"--set", "examples.networkAttachmentDefinitions=true", "--set", "examples.sriov.resourceName="+sriovResource,
		"--set", "ipam.kubernetes=true", "--set", "ipam.gc.enabled=true", "--set", "ipam.gc.grace=5s", "--set", "ipam.gc.interval=2s",
		"--set", "examples.sriov.pool="+sriovPool); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm upgrade (examples, kubernetes store):\n%s", out)
	}
	w.waitRollout(t, ctx, "DaemonSet", k8s.Namespace, "warpnet", 3*time.Minute)
	// One warpd holds the collector's Lease: its RBAC works.
	harness.WaitFor(t, "a warpd holding the ipam-gc Lease", 2*time.Minute, func() bool {
		l, err := cl.CoordinationV1().Leases("kube-system").Get(ctx, "warpnet-ipam-gc", metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && slices.ContainsFunc(w.c.Nodes, func(n *k8s.Node) bool { return n.Name == *l.Spec.HolderIdentity })
	})

	// Multus, as its thin DaemonSet installs it.
	m, err := k8s.EnsureMultus(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	image := "localhost/multus-cni:" + m.Version
	w.importImage(t, image, map[string]string{"/usr/src/multus-cni/bin/multus": m.Plugin, "/thin_entrypoint": m.Entrypoint}, "/thin_entrypoint")
	w.apply(t, ctx, manifest(t, "multus.yaml", map[string]string{"IMAGE": image, "API_PORT": fmt.Sprint(w.c.APIPort)}))
	w.waitRollout(t, ctx, "DaemonSet", "kube-system", "kube-multus-ds", 3*time.Minute)
	for _, n := range w.c.Nodes {
		// thin_entrypoint writes a conflist for CNI 1.0.0 primaries.
		var conf struct {
			Plugins []struct {
				Type      string `json:"type"`
				Delegates []struct {
					Name    string `json:"name"`
					Plugins []struct {
						Type string `json:"type"`
					} `json:"plugins"`
				} `json:"delegates"`
			} `json:"plugins"`
		}
		harness.WaitFor(t, n.Name+": 00-multus.conflist first in the CNI config directory", time.Minute, func() bool {
			ents, _ := os.ReadDir(n.Root + "/etc/cni/net.d")
			if len(ents) == 0 || ents[0].Name() != "00-multus.conflist" {
				return false
			}
			b, err := os.ReadFile(n.Root + "/etc/cni/net.d/00-multus.conflist")
			return err == nil && json.Unmarshal(b, &conf) == nil
		})
		if len(conf.Plugins) != 1 || conf.Plugins[0].Type != "multus" || len(conf.Plugins[0].Delegates) != 1 {
			t.Fatalf("%s: 00-multus.conflist is not one multus plugin with one delegate: %+v", n.Name, conf)
		}
		if d := conf.Plugins[0].Delegates[0]; d.Name != "warpnet" || len(d.Plugins) == 0 || d.Plugins[0].Type != "warp-veth" {
			t.Fatalf("%s: 00-multus.conflist does not delegate to warpnet's conflist: %+v", n.Name, d)
		}
		if _, err := os.Stat(n.Root + "/opt/cni/bin/multus"); err != nil {
			t.Fatalf("%s: multus not installed: %v", n.Name, err)
		}
	}

	// Two pods on one node (its VFs switch between each other through the
	// PF; the nodes' PFs are not cabled together) ask for the SR-IOV network.
	n := w.node(1)
	pf := n.SRIOV
	stateBefore, _ := os.ReadFile(pf.StateFile)
	sriovPod := func(name string, labels map[string]string, args ...string) *corev1.Pod {
		p := w.pod(name, n, labels, args...)
		p.Annotations = map[string]string{"k8s.v1.cni.cncf.io/networks": k8s.Namespace + "/sriov-net"}
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceName(sriovResource): resource.MustParse("1")}
		return p
	}
	webLabels := map[string]string{"app": "sriov-web"}
	ips := w.runPods(t, ctx, sriovPod("sriov-web", webLabels, "serve", ":8080"), sriovPod("sriov-client", nil, "pause"))
	w.long["sriov-web"], w.long["sriov-client"] = n.Name, n.Name

	// Each got the VF the kubelet allocated to it as net1, and Multus's
	// network-status lists both interfaces.
	alloc := w.allocatedVFs(t, n)
	net1 := map[string]string{}
	var vfs []sim.VF
	for _, name := range []string{"sriov-web", "sriov-client"} {
		p, err := cl.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var status []networkStatus
		if err := json.Unmarshal([]byte(p.Annotations["k8s.v1.cni.cncf.io/network-status"]), &status); err != nil {
			t.Fatalf("%s: network-status %q: %v", name, p.Annotations["k8s.v1.cni.cncf.io/network-status"], err)
		}
		if len(status) != 2 || !status[0].Default || status[0].Interface != "eth0" || len(status[0].IPs) == 0 || status[0].IPs[0] != ips[name].IP ||
			status[1].Name != k8s.Namespace+"/sriov-net" || status[1].Interface != "net1" || len(status[1].IPs) == 0 ||
			!strings.HasPrefix(status[1].IPs[0], "192.168.50.") {
			t.Fatalf("%s: network-status lists %+v, want eth0 (default, %s) and net1 (%s/sriov-net, 192.168.50.0/24)", name, status, ips[name].IP, k8s.Namespace)
		}
		net1[name] = status[1].IPs[0]
		// warp-ipam claimed it in the API server, for this pod's net1.
		if got := w.ipAllocations(t, ctx)[net1[name]]; got != sriovPool+" "+ns+"/"+name+" net1 "+n.Name {
			t.Fatalf("%s: IPAllocation of %s says %q, want pool %s, the pod, net1, node %s", name, net1[name], got, sriovPool, n.Name)
		}
		// warpd (--pod-facts, on in the chart) published the pod on its
		// node, where warp-ipam's ADD reads it.
		if _, ok := kube.ReadPodFacts(n.Root+kube.DefaultPodFactsDir, ns, name, string(p.UID)); !ok {
			t.Errorf("%s: warpd on %s did not publish the pod (UID %s) in %s", name, n.Name, p.UID, kube.DefaultPodFactsDir)
		}
		ids := alloc[string(p.UID)]
		if len(ids) != 1 {
			t.Fatalf("%s: the kubelet allocated %v of %s, want one VF", name, ids, sriovResource)
		}
		i := slices.IndexFunc(pf.VFs, func(v sim.VF) bool { return v.PCI == ids[0] })
		if i < 0 {
			t.Fatalf("%s: allocated device %s is no VF of %s", name, ids[0], n.Name)
		}
		vf := pf.VFs[i]
		vfs = append(vfs, vf)
		// The VF's netdev left the node for the pod, where it is net1.
		if out, err := n.Run(ctx, "ip", "link", "show", "dev", vf.Netdev); err == nil {
			t.Fatalf("%s: VF %s (%s) still in the node: %s", name, vf.PCI, vf.Netdev, out)
		}
		links := w.exec(t, ctx, name, k8s.AppBinary, "links")
		if !slices.ContainsFunc(strings.Split(links, "\n"), func(l string) bool {
			return strings.HasPrefix(l, "net1 "+vf.MAC+" "+net1[name]+"/")
		}) {
			t.Fatalf("%s: no net1 with VF %s's MAC %s and %s:\n%s", name, vf.PCI, vf.MAC, net1[name], links)
		}
		t.Logf("%s: eth0 %s, net1 %s on VF %s (%s)", name, ips[name].IP, net1[name], vf.PCI, vf.Netdev)
	}

	// A ClusterIP over either interface: the Service's endpoints on eth0
	// (the pod's address), and a Service whose EndpointSlice names the
	// server's net1 address. The server tells which address the client
	// came from.
	vip := w.service(t, ctx, "sriov-web", webLabels, 80, 8080)
	out := w.exec(t, ctx, "sriov-client", k8s.AppBinary, "get", "http://"+vip+"/", "30")
	if !strings.HasPrefix(out, "sriov-web ") || !strings.Contains(out, " from "+ips["sriov-client"].IP+":") {
		t.Fatalf("ClusterIP %s over eth0: %q, want sriov-web's answer to %s", vip, out, ips["sriov-client"].IP)
	}
	vip1 := w.serviceAt(t, ctx, "sriov-web-net1", net1["sriov-web"], 80, 8080)
	out = w.exec(t, ctx, "sriov-client", k8s.AppBinary, "get", "http://"+vip1+"/", "30")
	if !strings.HasPrefix(out, "sriov-web ") || !strings.Contains(out, " from "+net1["sriov-client"]+":") {
		t.Fatalf("ClusterIP %s over net1: %q, want sriov-web's answer to %s", vip1, out, net1["sriov-client"])
	}

	// Deleting the pods returns the VFs to the node as they were.
	w.deletePods(t, ctx, "sriov-web", "sriov-client")
	delete(w.long, "sriov-web")
	delete(w.long, "sriov-client")
	for _, vf := range vfs {
		harness.WaitFor(t, "VF "+vf.Netdev+" back in "+n.Name, 2*time.Minute, func() bool {
			out, err := n.Run(ctx, "ip", "-o", "link", "show", "dev", vf.Netdev)
			return err == nil && strings.Contains(out, vf.MAC)
		})
	}
	stateAfter, _ := os.ReadFile(pf.StateFile)
	if !jsonEqual(stateBefore, stateAfter) {
		t.Fatalf("PF-side state after the pods left:\n%s\nwant as before:\n%s", stateAfter, stateBefore)
	}
	harness.WaitFor(t, "sriov-net's addresses released in the API server", time.Minute, func() bool {
		a := w.ipAllocations(t, ctx)
		return a[net1["sriov-web"]] == "" && a[net1["sriov-client"]] == ""
	})
	// An address whose pod never ran here (a node lost before its DEL) is
	// collected by the warpd holding the Lease, after the grace period.
	if _, err := w.c.Kubectl(ctx, `apiVersion: ipam.warpnet.io/v1alpha1
kind: IPAllocation
metadata: {name: 192.168.50.77}
spec:
  pool: `+sriovPool+`
  address: 192.168.50.77
  pod: {namespace: default, name: gone, uid: 00000000-0000-0000-0000-000000000001, interface: net1}
  attachment: {containerID: gone, ifName: net1, node: lost-node}
`, "create", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if w.ipAllocations(t, ctx)["192.168.50.77"] == "" {
		t.Fatal("the leaked IPAllocation was not created")
	}
	harness.WaitFor(t, "warpd's collector to release the leaked 192.168.50.77", 2*time.Minute, func() bool {
		return w.ipAllocations(t, ctx)["192.168.50.77"] == ""
	})
	// Multus deletes the delegates last to first: eth0 goes after net1.
	gone := map[string]bool{ips["sriov-web"].IP: true, ips["sriov-client"].IP: true, ips["sriov-web"].IP6: true, ips["sriov-client"].IP6: true}
	waitNone(t, "eth0's CNI DEL of both pods", 2*time.Minute, func() []string { return w.leftovers(t, ctx, gone) })
}

// sriovPool is the IPPool the chart creates for the SR-IOV example network
// (examples.sriov.pool), on examples.sriov.subnet.
const sriovPool = "sriov-pool"

// ipAllocations lists warp-ipam's IPAllocations: address -> "pool
// namespace/pod interface node".
func (w *world) ipAllocations(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	out, err := w.c.Kubectl(ctx, "", "get", "ipallocations.ipam.warpnet.io", "-o",
		`jsonpath={range .items[*]}{.spec.address} {.spec.pool} {.spec.pod.namespace}/{.spec.pod.name} {.spec.pod.interface} {.spec.attachment.node}{"\n"}{end}`)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if addr, rest, ok := strings.Cut(l, " "); ok {
			m[addr] = rest
		}
	}
	return m
}

// allocatedVFs reads which devices the node's kubelet allocated to which
// pod UID (its device manager checkpoint, one of the two sources Multus
// reads, beside the pod-resources API).
func (w *world) allocatedVFs(t *testing.T, n *k8s.Node) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(n.Root + "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	var cp struct {
		Data struct {
			PodDeviceEntries []struct {
				PodUID       string
				ResourceName string
				DeviceIDs    map[string][]string
			}
		}
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatalf("kubelet checkpoint: %v\n%s", err, b)
	}
	out := map[string][]string{}
	for _, e := range cp.Data.PodDeviceEntries {
		if e.ResourceName == sriovResource {
			for _, ids := range e.DeviceIDs {
				out[e.PodUID] = append(out[e.PodUID], ids...)
			}
		}
	}
	return out
}

// serviceAt makes a Service without a selector whose one endpoint is ip:target
// (an EndpointSlice of its own, as for endpoints Kubernetes does not track).
func (w *world) serviceAt(t *testing.T, ctx context.Context, name, ip string, port, target int32) string {
	t.Helper()
	cl := w.c.Client()
	svc, err := cl.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: port, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proto := corev1.ProtocolTCP
	ready := true
	if _, err := cl.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Port: &target, Protocol: &proto}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

func jsonEqual(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// waitNone waits until list returns nothing, and fails with what it last
// returned.
func waitNone(t *testing.T, what string, timeout time.Duration, list func() []string) {
	t.Helper()
	var left []string
	if !harness.Until(timeout, 250*time.Millisecond, func() bool { left = list(); return len(left) == 0 }) {
		t.Fatalf("%s: not within %v; left behind: %v", what, timeout, left)
	}
}
