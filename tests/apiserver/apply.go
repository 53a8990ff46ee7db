package apiserver

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/daemon/source"
)

// Apply makes the server hold exactly the Services, EndpointSlices and
// Nodes of doc (YAML as warpd's --services-file takes it): objects are
// created or updated (a Service's status.loadBalancer and a Node's
// status.addresses too, through the status subresource), and those an
// earlier Apply created but doc lacks are deleted.
// Tests use it to drive warpd the same way in file mode and API mode.
func (s *Server) Apply(t testing.TB, doc string) {
	t.Helper()
	snap, err := source.ParseFile([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	client := s.Client(t)
	ctx := context.Background()
	want := map[string]bool{}
	for _, svc := range snap.Services {
		want["svc/"+svc.Namespace+"/"+svc.Name] = true
		api := client.CoreV1().Services(svc.Namespace)
		var stored *corev1.Service
		if cur, err := api.Get(ctx, svc.Name, metav1.GetOptions{}); err == nil {
			svc.ResourceVersion = cur.ResourceVersion
			if stored, err = api.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		} else if stored, err = api.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if !equality.Semantic.DeepEqual(stored.Status.LoadBalancer, svc.Status.LoadBalancer) {
			stored.Status.LoadBalancer = svc.Status.LoadBalancer
			if _, err := api.UpdateStatus(ctx, stored, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, es := range snap.EndpointSlices {
		want["eps/"+es.Namespace+"/"+es.Name] = true
		api := client.DiscoveryV1().EndpointSlices(es.Namespace)
		if cur, err := api.Get(ctx, es.Name, metav1.GetOptions{}); err == nil {
			es.ResourceVersion = cur.ResourceVersion
			if _, err := api.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		} else if _, err := api.Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range snap.Nodes {
		want["node//"+n.Name] = true
		api := client.CoreV1().Nodes()
		var stored *corev1.Node
		if cur, err := api.Get(ctx, n.Name, metav1.GetOptions{}); err == nil {
			n.ResourceVersion = cur.ResourceVersion
			if stored, err = api.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		} else if stored, err = api.Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if !equality.Semantic.DeepEqual(stored.Status.Addresses, n.Status.Addresses) {
			stored.Status.Addresses = n.Status.Addresses
			if _, err := api.UpdateStatus(ctx, stored, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for key := range s.applied {
		if want[key] {
			continue
		}
		kind, rest, _ := strings.Cut(key, "/")
		ns, name, _ := strings.Cut(rest, "/")
		switch kind {
		case "svc":
			err = client.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
		case "node":
			err = client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
		default:
			err = client.DiscoveryV1().EndpointSlices(ns).Delete(ctx, name, metav1.DeleteOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	s.applied = want
}
