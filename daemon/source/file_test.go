package source

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true}
  nodeName: node1
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns}
  spec:
    clusterIP: 10.96.0.53
    ports: [{name: dns, port: 53, protocol: UDP}]
`

func TestParseFile(t *testing.T) {
	snap, err := ParseFile([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Services) != 2 || len(snap.EndpointSlices) != 1 {
		t.Fatalf("got %d services, %d slices", len(snap.Services), len(snap.EndpointSlices))
	}
	if snap.Services[1].Namespace != "default" || snap.EndpointSlices[0].Endpoints[0].Addresses[0] != "10.244.1.2" {
		t.Fatalf("parsed %+v", snap)
	}
}

func TestParseFileErrorsSayWhere(t *testing.T) {
	for in, want := range map[string]string{
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p}":                            "document 1: unsupported object v1 \"Pod\"",
		"apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {portz: []}":     "document 1 (Service)",
		"apiVersion: v1\nkind: Service\nspec: {}":                                   "without metadata.name",
		sample + "---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: [": "document 4",
	} {
		_, err := ParseFile([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", in, err, want)
		}
	}
}

func TestFileReportsChangesOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	os.WriteFile(path, []byte(sample), 0o644)
	f := &File{Path: path}
	if _, changed, err := f.Snapshot(); !changed || err != nil {
		t.Fatalf("first load: %v %v", changed, err)
	}
	if _, changed, err := f.Snapshot(); changed || err != nil {
		t.Fatalf("unchanged file reported as changed: %v %v", changed, err)
	}
	os.WriteFile(path, []byte("kind: Nonsense"), 0o644)
	if _, changed, err := f.Snapshot(); changed || err == nil {
		t.Fatalf("a broken file must be an error, not a change: %v %v", changed, err)
	}
	os.WriteFile(path, []byte(sample+"\n"), 0o644)
	if _, changed, err := f.Snapshot(); !changed || err != nil {
		t.Fatalf("fixed file: %v %v", changed, err)
	}
}
