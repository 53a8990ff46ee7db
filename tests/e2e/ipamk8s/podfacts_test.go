package ipamk8s_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/ipam/kube"
	"github.com/warpnet/warpnet/tests/harness"
)

// TestPodFacts: warpd --pod-facts publishes the pods of its node (and only
// those), follows their annotations, withdraws deleted ones and those a
// previous warpd left behind; an ADD whose pod is published reads no pod
// from the API server, and one whose published pod has another UID (a pod
// recreated under the same name, not seen by warpd yet) reads it there.
func TestPodFacts(t *testing.T) {
	c := newCluster(t, "n1", "n2")
	n1 := c.nodes["n1"]
	c.pool("pf-default", kube.IPPoolSpec{Subnet: "10.71.0.0/24"})
	c.pool("pf-annotated", kube.IPPoolSpec{Subnet: "10.72.0.0/24"})
	c.pool("pf-changed", kube.IPPoolSpec{Subnet: "10.73.0.0/24"})
	conf := n1.conf(map[string]any{"pool": "pf-default"})

	// A file of a pod deleted while no warpd ran.
	ghost := &kube.Pod{ObjectMeta: kube.ObjectMeta{Namespace: "default", Name: "ghost", UID: "0000-ghost"}}
	if err := os.MkdirAll(n1.podFacts, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFacts(t, n1.podFacts, ghost)

	p1 := c.createPod("default", "pf1", "n1", map[string]string{kube.AnnotationPool: "pf-annotated", "unrelated.example.com/big": strings.Repeat("x", 4096)})
	other := c.createPod("default", "pf-elsewhere", "n2", nil)
	n1.startWarpd()

	published := func(name, uid string) func() bool {
		return func() bool { _, ok := kube.ReadPodFacts(n1.podFacts, "default", name, uid); return ok }
	}
	harness.WaitFor(t, "warpd to publish pod pf1", 30*time.Second, published("pf1", string(p1.UID)))
	harness.WaitFor(t, "warpd to withdraw the file of pod ghost, left by no warpd", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(n1.podFacts, "default_ghost.json"))
		return os.IsNotExist(err)
	})
	got, _ := kube.ReadPodFacts(n1.podFacts, "default", "pf1", string(p1.UID))
	if _, ok := got.Annotations["unrelated.example.com/big"]; ok || got.Annotations[kube.AnnotationPool] != "pf-annotated" {
		t.Errorf("published annotations %v: want only the ipam.warpnet.io ones", got.Annotations)
	}
	if _, err := os.Stat(filepath.Join(n1.podFacts, "default_pf-elsewhere.json")); !os.IsNotExist(err) {
		t.Errorf("n1's warpd published pod %s of node n2 (stat: %v)", other.Name, err)
	}

	// Published: the ADD reads no pod from the API server, and still
	// follows the pod's annotation.
	before := podGets(t, c)
	r := n1.add("c-pf1", "net1", p1, conf)
	inSubnet(t, r, "10.72.0.0/24")
	if n := podGets(t, c) - before; n != 0 {
		t.Errorf("ADD of a published pod read the pod from the API server %v times, want 0", n)
	}

	// An annotation changed: warpd publishes it.
	p1.Annotations[kube.AnnotationPool] = "pf-changed"
	if _, err := c.k8s.CoreV1().Pods("default").Update(c.ctx(), p1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "warpd to publish pf1's new annotation", 30*time.Second, func() bool {
		got, ok := kube.ReadPodFacts(n1.podFacts, "default", "pf1", string(p1.UID))
		return ok && got.Annotations[kube.AnnotationPool] == "pf-changed"
	})
	r = n1.add("c-pf1b", "net1", p1, conf)
	inSubnet(t, r, "10.73.0.0/24")

	// Facts under another UID (the pod recreated, warpd behind): read
	// from the API server.
	writeFacts(t, n1.podFacts, &kube.Pod{ObjectMeta: kube.ObjectMeta{Namespace: "default", Name: other.Name,
		UID: "stale-uid", Annotations: map[string]string{kube.AnnotationPool: "pf-annotated"}}})
	before = podGets(t, c)
	r = n1.add("c-elsewhere", "net1", other, conf)
	inSubnet(t, r, "10.71.0.0/24")
	if n := podGets(t, c) - before; n < 1 {
		t.Errorf("ADD whose published pod has another UID did not read the pod from the API server")
	}

	// Deleted: withdrawn.
	c.deletePod(p1)
	harness.WaitFor(t, "warpd to withdraw deleted pod pf1", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(n1.podFacts, "default_pf1.json"))
		return os.IsNotExist(err)
	})
}

// writeFacts publishes p in dir as warpd would.
func writeFacts(t *testing.T, dir string, p *kube.Pod) {
	t.Helper()
	data, err := kube.EncodePodFacts(p)
	if err == nil {
		err = kube.WritePodFacts(dir, p.Namespace, p.Name, data)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// podGets is how many GETs of a pod the API server has served (warpd
// lists and watches pods; only the plugin GETs one).
func podGets(t *testing.T, c *cluster) float64 {
	return c.api.Requests(t, func(l map[string]string) bool {
		return l["verb"] == "GET" && l["resource"] == "pods" && l["subresource"] == ""
	})
}
