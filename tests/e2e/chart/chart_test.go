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
	"errors"
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
	// With the examples on too.
	out, err = exec.Command(helm(t), "lint", "--strict", k8s.Chart(), "--set", "examples.networkAttachmentDefinitions=true").CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint --strict (examples): %v\n%s", err, out)
	}
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

// Every object of the plain manifests, and the NetworkAttachmentDefinition
// examples (with Multus's CRD registered), passes a server-side dry run
// against a real API server with strict field validation; then the
// manifests are applied for real and warpnet's service account can do
// exactly what warpd needs.
func TestServerSideDryRunAndRBAC(t *testing.T) {
	s := apiserver.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cfg := s.RESTConfig()
	dyn := dynamic.NewForConfigOrDie(cfg)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cfg)))

	apply := func(o *unstructured.Unstructured, dryRun bool) error {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return err
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		opts := metav1.CreateOptions{FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err = r.Create(ctx, o, opts)
		return err
	}
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
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
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
