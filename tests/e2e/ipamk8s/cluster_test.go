// Package ipamk8s_test drives the built bin/warp-ipam with "store":
// "kubernetes" through the CNI protocol, on simulated nodes (network
// namespaces reaching a real kube-apiserver through tests/apiserver's
// bridge), against the CRDs and admission policy shipped in install/crds.
// Pods, StatefulSets and Namespaces are API objects the tests create: no
// kubelet or controller runs, so nothing changes behind a test's back.
package ipamk8s_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/warpnet/warpnet/ipam/kube"
	kubestore "github.com/warpnet/warpnet/ipam/store/kube"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

const network = "underlay"

// crds are the manifests the tests install: the CRDs, then the policy.
var crds = []string{"ipam.warpnet.io_ippools.yaml", "ipam.warpnet.io_ipallocations.yaml", "ipam.warpnet.io_ippool-overlap-policy.yaml"}

type cluster struct {
	t     *testing.T
	env   *harness.Env
	api   *apiserver.Server
	kc    *kube.Client         // admin, from the machine's namespace
	k8s   kubernetes.Interface // admin
	nodes map[string]*node
}

// node is a simulated node: a network namespace that reaches the API
// server only through the bridge, with its own warp-ipam state directory.
type node struct {
	c          *cluster
	name       string
	ns         *harness.NetNS
	pod        *harness.NetNS // CNI_NETNS of this node's pods (IPAM does not enter it)
	kubeconfig string
	dataDir    string
	podFacts   string // where this node's warpd publishes its pods (--pod-facts)
	ipam       *harness.Plugin
	bpffs      string // warpd's, once started
	cgroup     string
}

// newCluster starts an API server with the CRDs (and, unless noPolicy, the
// overlap policy) and the named nodes.
func newCluster(t *testing.T, names ...string) *cluster { return startCluster(t, crds, names...) }

func startCluster(t *testing.T, manifests []string, names ...string) *cluster {
	harness.RequireTools(t, "socat", filepath.Join(harness.BinDir(), "warp-ipam"))
	env := harness.New(t)
	c := &cluster{t: t, env: env, api: apiserver.Start(t), nodes: map[string]*node{}}
	c.applyManifests(manifests...)
	c.kc = adminClient(c.api)
	c.k8s = c.api.Client(t)
	for _, name := range names {
		ns := env.NetNS(name)
		n := &node{c: c, name: name, ns: ns, pod: env.NetNS(name + "-pods"), kubeconfig: c.api.BridgeInto(t, ns),
			dataDir: filepath.Join(env.TempDir, name+"-ipam"), podFacts: filepath.Join(env.TempDir, name+"-pods"),
			ipam: env.Plugin(t, "warp-ipam").In(ns)}
		c.nodes[name] = n
		c.createNode(name, nil)
	}
	return c
}

func (c *cluster) applyManifests(names ...string) {
	var paths []string
	for _, m := range names {
		paths = append(paths, filepath.Join(harness.RepoRoot(), "install", "crds", m))
	}
	c.api.ApplyManifests(c.t, paths...)
}

// adminClient is an ipam/kube client for the test itself.
func adminClient(s *apiserver.Server) *kube.Client {
	hc, err := rest.HTTPClientFor(s.RESTConfig())
	if err != nil {
		panic(err)
	}
	return kube.NewClient(s.URL, hc, "warpnet-e2e")
}

func (c *cluster) ctx() context.Context { return c.t.Context() }

func (c *cluster) createNode(name string, labels map[string]string) {
	c.t.Helper()
	_, err := c.k8s.CoreV1().Nodes().Create(c.ctx(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) createNamespace(name string, labels map[string]string) {
	c.t.Helper()
	if _, err := c.k8s.CoreV1().Namespaces().Create(c.ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// pool creates an IPPool.
func (c *cluster) pool(name string, spec kube.IPPoolSpec) *kube.IPPool {
	c.t.Helper()
	p, err := c.kc.CreatePool(c.ctx(), &kube.IPPool{ObjectMeta: kube.ObjectMeta{Name: name}, Spec: spec})
	if err != nil {
		c.t.Fatalf("create IPPool %s: %v", name, err)
	}
	return p
}

// podSpec is what a test pod looks like; no kubelet runs it.
func podSpec(node string) corev1.PodSpec {
	return corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}}
}

// createPod creates a Pod object on node with annotations (may be nil).
func (c *cluster) createPod(namespace, name, node string, annotations map[string]string, owners ...metav1.OwnerReference) *corev1.Pod {
	c.t.Helper()
	p, err := c.k8s.CoreV1().Pods(namespace).Create(c.ctx(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations, OwnerReferences: owners},
		Spec:       podSpec(node)}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// deletePod deletes a Pod object at once, as the kubelet does once its
// containers are gone (or as a node that vanished leaves it).
func (c *cluster) deletePod(p *corev1.Pod) {
	c.t.Helper()
	err := c.k8s.CoreV1().Pods(p.Namespace).Delete(c.ctx(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil {
		c.t.Fatal(err)
	}
}

// statefulSet creates a StatefulSet object (no controller acts on it: the
// tests create its pods themselves) and returns the owner reference its
// pods carry.
func (c *cluster) statefulSet(namespace, name string, replicas int32) metav1.OwnerReference {
	c.t.Helper()
	labels := map[string]string{"app": name}
	ss, err := c.k8s.AppsV1().StatefulSets(namespace).Create(c.ctx(), &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: appsv1.StatefulSetSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec("")}},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: name, UID: ss.UID, Controller: ptr.To(true)}
}

func (c *cluster) scaleStatefulSet(namespace, name string, replicas int32) {
	c.t.Helper()
	ss, err := c.k8s.AppsV1().StatefulSets(namespace).Get(c.ctx(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	ss.Spec.Replicas = &replicas
	if _, err := c.k8s.AppsV1().StatefulSets(namespace).Update(c.ctx(), ss, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// allocations returns every IPAllocation, by address.
func (c *cluster) allocations() map[string]kube.IPAllocation {
	c.t.Helper()
	list, err := c.kc.ListAllocations(c.ctx(), "")
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]kube.IPAllocation{}
	for _, a := range list {
		out[a.Spec.Address] = a
	}
	return out
}

func (c *cluster) addresses() []string {
	var out []string
	for a := range c.allocations() {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// conf is a network configuration for the kubernetes store; ipam holds
// extra or overriding ipam keys.
func (n *node) conf(ipam map[string]any) []byte {
	m := map[string]any{"type": "warp-ipam", "store": "kubernetes", "kubeconfig": n.kubeconfig, "nodeName": n.name,
		"dataDir": n.dataDir, "podFacts": n.podFacts, "detectConflicts": false, "timeout": "5s"}
	for k, v := range ipam {
		m[k] = v
	}
	return harness.ConfigJSON(n.c.t, harness.NetConf(network, "warp-sriov", map[string]any{"cniVersion": "1.1.0", "ipam": m}))
}

// podArgs is CNI_ARGS as a Kubernetes runtime passes them.
func podArgs(p *corev1.Pod) string {
	return fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=%s", p.Namespace, p.Name, p.UID)
}

func (n *node) call(cmd, containerID, ifName string, p *corev1.Pod, conf []byte) harness.Call {
	c := harness.Call{Command: cmd, ContainerID: containerID, Netns: n.pod.Path, IfName: ifName, Config: conf}
	if p != nil {
		c.Args = podArgs(p)
	}
	return c
}

func (n *node) add(containerID, ifName string, p *corev1.Pod, conf []byte) *current.Result {
	n.c.t.Helper()
	return harness.ParseResult(n.c.t, n.ipam.MustSucceed(n.c.t, n.call("ADD", containerID, ifName, p, conf)))
}

func (n *node) del(containerID, ifName string, p *corev1.Pod, conf []byte) {
	n.c.t.Helper()
	n.ipam.MustSucceed(n.c.t, n.call("DEL", containerID, ifName, p, conf))
}

// journal lists the attachments with queued releases on the node.
func (n *node) journal() []string {
	ents, _ := os.ReadDir(filepath.Join(kubestore.Dir(n.dataDir, network), "journal"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// index lists the node-local index entries (attachments with addresses).
func (n *node) index() []string {
	ents, _ := os.ReadDir(filepath.Join(kubestore.Dir(n.dataDir, network), "attachments"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func ips(r *current.Result) []string {
	var out []string
	for _, ip := range r.IPs {
		out = append(out, ip.Address.IP.String())
	}
	return out
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func contains(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

var (
	_ = http.MethodGet
	_ = time.Second
)

// harnessWithPrev adds prevResult to conf, for CHECK.
func harnessWithPrev(t *testing.T, conf []byte, r *current.Result) []byte {
	return harness.WithPrevResult(t, conf, r)
}

var (
	getOpts    = metav1.GetOptions{}
	updateOpts = metav1.UpdateOptions{}
)

// inSubnet checks that the result holds one address in each subnet, in
// order.
func inSubnet(t *testing.T, r *current.Result, subnets ...string) {
	t.Helper()
	if len(r.IPs) != len(subnets) {
		t.Fatalf("result has %v, want one address in each of %v", ips(r), subnets)
	}
	for i, s := range subnets {
		if !netip.MustParsePrefix(s).Contains(mustAddr(t, r.IPs[i].Address.IP.String())) {
			t.Errorf("address %d is %s, want one in %s", i, r.IPs[i].Address.IP, s)
		}
	}
}

func harnessParse(t *testing.T, out []byte) *current.Result { return harness.ParseResult(t, out) }

// updatePool replaces a pool (the test client has no helper for it: only
// tests change pools).
func updatePool(c *cluster, p *kube.IPPool) error {
	hc, err := rest.HTTPClientFor(c.api.RESTConfig())
	if err != nil {
		return err
	}
	p.APIVersion, p.Kind = kube.APIVersion, "IPPool"
	body, _ := json.Marshal(p)
	req, _ := http.NewRequest(http.MethodPut, c.api.URL+"/apis/"+kube.Group+"/"+kube.Version+"/ippools/"+p.Name, strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st struct{ Message string }
	json.NewDecoder(resp.Body).Decode(&st)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s: %s", resp.Status, st.Message)
	}
	return nil
}

func readFile(t *testing.T, n *node, journalEntry string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(kubestore.Dir(n.dataDir, network), "journal", journalEntry))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

var deleteNow = metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}

// gcConf is a GC configuration listing the valid attachments (ifname net1).
func gcConf(t *testing.T, n *node, ipam map[string]any, valid ...string) []byte {
	var m map[string]any
	json.Unmarshal(n.conf(ipam), &m)
	var list []map[string]string
	for _, id := range valid {
		list = append(list, map[string]string{"containerID": id, "ifname": "net1"})
	}
	m["cni.dev/valid-attachments"] = list
	return harness.ConfigJSON(t, m)
}
