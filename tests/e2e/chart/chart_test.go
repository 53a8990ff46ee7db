// Package chart_test checks warpnet's Helm chart (install/chart/warpnet) and
// the plain manifests rendered from it: helm lint, the committed manifests
// are what the chart renders today, and every object is accepted by a real
// kube-apiserver in a server-side dry run (strict field validation, so an
// unknown or misplaced field fails). RBAC is checked to be exactly what
// warpd uses. The chart is installed for real by tests/e2e/cluster.
package chart_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
)

func helm(t *testing.T) string {
	t.Helper()
	harness.RequireTools(t, "go", "bash")
	h, err := k8s.EnsureBinaries(t.Context(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHelmLint(t *testing.T) {
	out, err := exec.Command(helm(t), "lint", "--strict", k8s.Chart()).CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint --strict: %v\n%s", err, out)
	}
	// With the examples on too, and with the kubernetes store.
	out, err = exec.Command(helm(t), "lint", "--strict", k8s.Chart(), "--set", "examples.networkAttachmentDefinitions=true").CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint --strict (examples): %v\n%s", err, out)
	}
	out, err = exec.Command(helm(t), append([]string{"lint", "--strict", k8s.Chart()}, ipamValues...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint --strict (ipam): %v\n%s", err, out)
	}
	// A pool for the SR-IOV example without the store's RBAC is refused.
	out, err = exec.Command(helm(t), "template", k8s.Chart(), "--set", "examples.networkAttachmentDefinitions=true", "--set", "examples.sriov.pool=p").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "examples.sriov.pool needs ipam.kubernetes=true") {
		t.Fatalf("helm template with examples.sriov.pool and without ipam.kubernetes: %v\n%s", err, out)
	}
}

// ipamValues turn on warp-ipam's kubernetes store, warpd's leak collector
// and an SR-IOV example network whose addresses come from an IPPool.
var ipamValues = []string{
	"--set", "ipam.kubernetes=true", "--set", "ipam.gc.enabled=true",
	"--set", "ipam.gc.grace=2m", "--set", "ipam.gc.leaseNamespace=warpnet",
	"--set", "examples.networkAttachmentDefinitions=true", "--set", "examples.sriov.pool=sriov-pool",
}

// install/manifests/ is generated (make manifests) and committed: it must
// be what the chart renders now.
func TestManifestsAreUpToDate(t *testing.T) {
	helm(t)
	dir := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(harness.RepoRoot(), "hack", "render-manifests.sh"), dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render: %v\n%s", err, out)
	}
	for _, f := range []string{"warpnet.yaml", "examples/network-attachments.yaml"} {
		want, _ := os.ReadFile(filepath.Join(dir, f))
		got, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "install", "manifests", f))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("install/manifests/%s is stale (%v): run make manifests and commit", f, err)
		}
	}
	// The chart's copies of the IPAM CRDs, policy and ClusterRoles.
	for chartFile, orig := range map[string]string{
		"crds/ipam.warpnet.io_ippools.yaml":                "crds/ipam.warpnet.io_ippools.yaml",
		"crds/ipam.warpnet.io_ipallocations.yaml":          "crds/ipam.warpnet.io_ipallocations.yaml",
		"files/ipam.warpnet.io_ippool-overlap-policy.yaml": "crds/ipam.warpnet.io_ippool-overlap-policy.yaml",
		"files/rbac-ipam.yaml":                             "rbac/ipam.yaml",
	} {
		want, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "install", orig))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(k8s.Chart(), chartFile)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("install/chart/warpnet/%s is not install/%s (%v): run make manifests and commit", chartFile, orig, err)
		}
	}
}

// helm's own server-side dry run: renders against the live API server
// (lookups, capabilities, its OpenAPI validation) without changing it.
func TestHelmInstallDryRunServer(t *testing.T) {
	h := helm(t)
	s := apiserver.Start(t)
	cmd := exec.Command(h, "--kubeconfig", s.Kubeconfig, "install", "warpnet", k8s.Chart(), "--namespace", "kube-system",
		"--dry-run=server", "--set", "examples.networkAttachmentDefinitions=false")
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "kind: DaemonSet") {
		t.Fatalf("helm install --dry-run=server: %v\n%s", err, out)
	}
	// Nothing was created.
	if _, err := s.Client(t).AppsV1().DaemonSets("kube-system").Get(t.Context(), "warpnet", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the dry run created the DaemonSet (%v)", err)
	}
}

func decode(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", path, err)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	return objs
}

// applier creates objects of any kind (CRDs' too, once established) in a
// real API server, with strict field validation, for real or as a
// server-side dry run.
type applier struct {
	ctx    context.Context
	dyn    *dynamic.DynamicClient
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(ctx context.Context, s *apiserver.Server) *applier {
	cfg := s.RESTConfig()
	return &applier{ctx: ctx, dyn: dynamic.NewForConfigOrDie(cfg),
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cfg)))}
}

func (a *applier) apply(o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	var r dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		r = a.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = r.Create(a.ctx, o, opts)
	return err
}

// served waits until the API server serves kind (a CRD's, just created).
func (a *applier) served(t *testing.T, gk schema.GroupKind, version string) {
	t.Helper()
	harness.WaitFor(t, gk.String()+" served", time.Minute, func() bool {
		a.mapper.Reset()
		_, err := a.mapper.RESTMapping(gk, version)
		return err == nil
	})
}

// allowed asks the API server whether warpnet's service account may do verb
// on group/resource (in namespace, if not empty).
func allowed(t *testing.T, ctx context.Context, s *apiserver.Server, namespace, group, resource, verb string) bool {
	t.Helper()
	sar, err := s.Client(t).AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: "system:serviceaccount:warpnet:warpnet", Groups: []string{"system:serviceaccounts", "system:serviceaccounts:warpnet"},
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: namespace, Group: group, Resource: resource, Verb: verb},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sar.Status.Allowed
}

// Every object of the plain manifests, and the NetworkAttachmentDefinition
// examples (with Multus's CRD registered), passes a server-side dry run
// against a real API server with strict field validation; then the
// manifests are applied for real and warpnet's service account can do
// exactly what warpd needs.
func TestServerSideDryRunAndRBAC(t *testing.T) {
	s := apiserver.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	a := newApplier(ctx, s)
	apply, mapper := a.apply, a.mapper
	objs := decode(t, filepath.Join(harness.RepoRoot(), "install", "manifests", "warpnet.yaml"))
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.GetKind()] = true
		if o.GetKind() == "Namespace" {
			// Namespaced objects need it to exist even in a dry run.
			if err := apply(o, true); err != nil {
				t.Fatalf("dry run %s: %v", o.GetName(), err)
			}
			if err := apply(o, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "CustomResourceDefinition"} {
		if !kinds[k] {
			t.Errorf("the manifests have no %s", k)
		}
	}
	for _, o := range objs {
		if o.GetKind() != "Namespace" {
			if err := apply(o, true); err != nil {
				t.Errorf("server-side dry run of %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}
	// The dry run can fail: a field the API does not know is refused.
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" {
			bad := o.DeepCopy()
			_ = unstructured.SetNestedField(bad.Object, "yes", "spec", "template", "spec", "hostNetwrk")
			if err := apply(bad, true); err == nil || !strings.Contains(err.Error(), "hostNetwrk") {
				t.Errorf("a DaemonSet with an unknown field passed the dry run (%v)", err)
			}
		}
	}

	// NetworkAttachmentDefinition examples, with Multus's CRD.
	crd := decode(t, filepath.Join(harness.RepoRoot(), "tests", "e2e", "chart", "testdata", "net-attach-def-crd.yaml"))
	if err := apply(crd[0], false); err != nil {
		t.Fatal(err)
	}
	nads := decode(t, filepath.Join(harness.RepoRoot(), "install", "manifests", "examples", "network-attachments.yaml"))
	harness.WaitFor(t, "NetworkAttachmentDefinition CRD served", time.Minute, func() bool {
		mapper.Reset()
		_, err := mapper.RESTMapping(schema.GroupKind{Group: "k8s.cni.cncf.io", Kind: "NetworkAttachmentDefinition"}, "v1")
		return err == nil
	})
	sawSRIOV := false
	for _, o := range nads {
		if err := apply(o, true); err != nil {
			t.Errorf("server-side dry run of %s: %v", o.GetName(), err)
		}
		if o.GetAnnotations()["k8s.v1.cni.cncf.io/resourceName"] != "" {
			sawSRIOV = true
		}
	}
	if len(nads) != 2 || !sawSRIOV {
		t.Errorf("want an SR-IOV (with k8s.v1.cni.cncf.io/resourceName) and a veth NetworkAttachmentDefinition, got %d", len(nads))
	}

	// Apply for real, then ask the API server what warpnet's service account may do.
	for _, o := range objs {
		if o.GetKind() != "Namespace" {
			if err := apply(o, false); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	c := s.Client(t)
	role, err := c.RbacV1().ClusterRoles().Get(ctx, "warpnet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range role.Rules {
		got = append(got, rule(r))
	}
	sort.Strings(got)
	want := []string{"/nodes list,watch", "/services list,watch", "discovery.k8s.io/endpointslices list,watch"}
	if strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("ClusterRole warpnet: %v, want exactly %v (what warpd's informers use)", got, want)
	}
	user := "system:serviceaccount:warpnet:warpnet"
	for _, q := range []struct {
		group, resource, verb string
		allowed               bool
	}{
		{"", "services", "watch", true},
		{"discovery.k8s.io", "endpointslices", "list", true},
		{"", "nodes", "watch", true},
		{"", "services", "get", false},
		{"", "services", "update", false},
		{"", "secrets", "list", false},
		{"", "pods", "list", false},
		{"", "nodes", "patch", false},
		// The kubernetes store's rights only come with ipam.kubernetes.
		{"ipam.warpnet.io", "ipallocations", "create", false},
	} {
		sar, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:warpnet"},
			ResourceAttributes: &authzv1.ResourceAttributes{Group: q.group, Resource: q.resource, Verb: q.verb},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != q.allowed {
			t.Errorf("%s %s/%s: allowed=%v, want %v", user, q.group, q.resource+" "+q.verb, sar.Status.Allowed, q.allowed)
		}
	}
}

func rule(r rbacv1.PolicyRule) string {
	verbs := append([]string{}, r.Verbs...)
	sort.Strings(verbs)
	return strings.Join(r.APIGroups, ",") + "/" + strings.Join(r.Resources, ",") + " " + strings.Join(verbs, ",")
}

// With ipam.kubernetes and ipam.gc.enabled the chart binds warpnet's service
// account (warp-ipam's identity through the installer's kubeconfig, and
// warpd's) to install/rbac/ipam.yaml's ClusterRoles, installs the overlap
// policy, passes --ipam-gc to warpd, and the SR-IOV example network takes
// its addresses from an IPPool the chart creates. Everything passes a
// strict server-side dry run, is then created for real, and the API server
// answers with what those objects mean: the service account's rights, the
// pool, and the policy refusing an overlapping pool.
func TestChartWithIPAMKubernetesStore(t *testing.T) {
	h := helm(t)
	s := apiserver.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	a := newApplier(ctx, s)

	rendered := filepath.Join(t.TempDir(), "warpnet.yaml")
	out, err := exec.Command(h, append([]string{"template", "warpnet", k8s.Chart(), "--namespace", "warpnet", "--include-crds",
		"--set", "namespace.create=true"}, ipamValues...)...).Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	if err := os.WriteFile(rendered, out, 0o644); err != nil {
		t.Fatal(err)
	}
	objs := decode(t, rendered)

	// The chart's CRDs are install/crds/'s.
	var shipped []*unstructured.Unstructured
	for _, f := range []string{"ipam.warpnet.io_ippools.yaml", "ipam.warpnet.io_ipallocations.yaml"} {
		shipped = append(shipped, decode(t, filepath.Join(harness.RepoRoot(), "install", "crds", f))...)
	}
	for _, want := range shipped {
		found := false
		for _, o := range objs {
			if o.GetKind() == "CustomResourceDefinition" && o.GetName() == want.GetName() {
				found = equality.Semantic.DeepEqual(o.Object, want.Object)
			}
		}
		if !found {
			t.Errorf("the chart does not render install/crds/'s CRD %s unchanged", want.GetName())
		}
	}

	// Multus's CRD (for the example networks), the Namespace and the CRDs
	// for real; then every other object dry-run, then for real.
	nadCRD := decode(t, filepath.Join(harness.RepoRoot(), "tests", "e2e", "chart", "testdata", "net-attach-def-crd.yaml"))
	for _, o := range append(nadCRD, objs...) {
		if k := o.GetKind(); k == "Namespace" || k == "CustomResourceDefinition" {
			if err := a.apply(o, false); err != nil {
				t.Fatalf("create %s %s: %v", k, o.GetName(), err)
			}
		}
	}
	a.served(t, schema.GroupKind{Group: "ipam.warpnet.io", Kind: "IPPool"}, "v1alpha1")
	a.served(t, schema.GroupKind{Group: "ipam.warpnet.io", Kind: "IPAllocation"}, "v1alpha1")
	a.served(t, schema.GroupKind{Group: "k8s.cni.cncf.io", Kind: "NetworkAttachmentDefinition"}, "v1")
	kinds := map[string]int{}
	for _, o := range objs {
		if k := o.GetKind(); k != "Namespace" && k != "CustomResourceDefinition" {
			kinds[k]++
			if err := a.apply(o, true); err != nil {
				t.Errorf("server-side dry run of %s %s: %v", k, o.GetName(), err)
			}
		}
	}
	for k, n := range map[string]int{"ClusterRole": 4, "ClusterRoleBinding": 4, "ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1, "IPPool": 1, "NetworkAttachmentDefinition": 2} {
		if kinds[k] != n {
			t.Errorf("rendered %d %s, want %d", kinds[k], k, n)
		}
	}
	for _, o := range objs {
		if k := o.GetKind(); k != "Namespace" && k != "CustomResourceDefinition" {
			if err := a.apply(o, false); err != nil {
				t.Fatalf("create %s %s: %v", k, o.GetName(), err)
			}
		}
		switch o.GetKind() {
		case "DaemonSet":
			// warpd runs the leak collector, with the values' settings, and
			// publishes its node's pods for warp-ipam.
			ctrs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			args := fmt.Sprint(ctrs[0].(map[string]any)["args"])
			for _, want := range []string{"--ipam-gc ", "--ipam-gc-grace=2m", "--ipam-gc-lease-namespace=warpnet", "--pod-facts=/run/warpnet/pods"} {
				if !strings.Contains(args+" ", want) {
					t.Errorf("warpd's args %s lack %q", args, want)
				}
			}
		case "NetworkAttachmentDefinition":
			// The SR-IOV network uses the pool through the kubernetes store,
			// with the kubeconfig the installer writes.
			if o.GetName() != "sriov-net" {
				continue
			}
			conf, _, _ := unstructured.NestedString(o.Object, "spec", "config")
			var c struct {
				IPAM struct {
					Store, Kubeconfig string
					Pools             []string
				}
			}
			if err := json.Unmarshal([]byte(conf), &c); err != nil || c.IPAM.Store != "kubernetes" || fmt.Sprint(c.IPAM.Pools) != "[sriov-pool]" ||
				c.IPAM.Kubeconfig != "/etc/cni/net.d/warpnet.d/warp-ipam.kubeconfig" {
				t.Errorf("sriov-net's config %s (%v): want the kubernetes store, pool sriov-pool, the installer's kubeconfig", conf, err)
			}
		}
	}

	// warpnet's service account may do what warp-ipam and the collector
	// need, and no more.
	for _, q := range []struct {
		namespace, group, resource, verb string
		allowed                          bool
	}{
		{"", "ipam.warpnet.io", "ipallocations", "create", true},
		{"", "ipam.warpnet.io", "ipallocations", "delete", true},
		{"", "ipam.warpnet.io", "ippools", "list", true},
		{"default", "", "pods", "get", true},
		{"", "", "pods", "watch", true}, // --pod-facts
		{"", "", "namespaces", "get", true},
		{"default", "apps", "statefulsets", "watch", true},
		{"warpnet", "coordination.k8s.io", "leases", "update", true},
		{"", "ipam.warpnet.io", "ippools", "create", false},
		{"", "ipam.warpnet.io", "ippools", "delete", false},
		{"default", "", "pods", "delete", false},
		{"", "", "nodes", "update", false},
		{"", "", "secrets", "get", false},
	} {
		if got := allowed(t, ctx, s, q.namespace, q.group, q.resource, q.verb); got != q.allowed {
			t.Errorf("warpnet's service account: %s %s/%s in %q allowed=%v, want %v", q.verb, q.group, q.resource, q.namespace, got, q.allowed)
		}
	}

	// The chart's IPPool is stored; the policy refuses one that overlaps it
	// (it takes effect once the API server has loaded it and its params).
	pools := a.dyn.Resource(schema.GroupVersionResource{Group: "ipam.warpnet.io", Version: "v1alpha1", Resource: "ippools"})
	if _, err := pools.Get(ctx, "sriov-pool", metav1.GetOptions{}); err != nil {
		t.Fatalf("the chart's IPPool: %v", err)
	}
	var refusal error
	harness.WaitFor(t, "the overlap policy to refuse an overlapping IPPool", time.Minute, func() bool {
		o := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "ipam.warpnet.io/v1alpha1", "kind": "IPPool",
			"metadata": map[string]any{"name": "overlapping"}, "spec": map[string]any{"subnet": "192.168.50.128/25"}}}
		refusal = a.apply(o, true)
		return refusal != nil
	})
	if !strings.Contains(refusal.Error(), "overlaps IPPool sriov-pool") {
		t.Errorf("an overlapping IPPool was refused with %v, want the policy's message naming sriov-pool", refusal)
	}
}
