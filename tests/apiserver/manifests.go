package apiserver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// ApplyManifests server-side applies every object of the YAML files (as
// shipped under install/, multi-document), in order, and waits until each
// CustomResourceDefinition among them is established, so that its kind can
// be used as soon as ApplyManifests returns.
func (s *Server) ApplyManifests(t testing.TB, paths ...string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	ctx := context.Background()
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("apiserver: %s: %v", path, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			gvk := obj.GroupVersionKind()
			mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				// A kind defined by a CRD applied just before: rediscover.
				mapper.Reset()
				if mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
					t.Fatalf("apiserver: %s: %s %s: %v", path, gvk, obj.GetName(), err)
				}
			}
			var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
			if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
				ns := obj.GetNamespace()
				if ns == "" {
					ns = "default"
				}
				ri = dyn.Resource(mapping.Resource).Namespace(ns)
			}
			if _, err := ri.Apply(ctx, obj.GetName(), &obj, metav1.ApplyOptions{FieldManager: "warpnet-tests", Force: true}); err != nil {
				t.Fatalf("apiserver: apply %s: %s %s: %v", path, gvk.Kind, obj.GetName(), err)
			}
			if gvk.Kind == "CustomResourceDefinition" {
				waitEstablished(t, dyn.Resource(mapping.Resource), obj.GetName())
				mapper.Reset()
			}
		}
	}
}

func waitEstablished(t testing.TB, crds dynamic.NamespaceableResourceInterface, name string) {
	t.Helper()
	err := waitFor(30*time.Second, func() error {
		crd, err := crds.Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		return errors.New("not established yet")
	})
	if err != nil {
		t.Fatalf("apiserver: CRD %s: %v", name, err)
	}
}
