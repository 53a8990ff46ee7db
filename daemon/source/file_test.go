package source

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p}":                                      `document 1: unsupported object v1 "Pod"`,
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: p}":                          `document 1: unsupported object apps/v1 "Deployment"`,
		"apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {portz: []}":               `document 1 (v1 "Service"): strict decoding error: unknown field "spec.portz"`,
		"apiVersion: v1\nkind: Service\nspec: {}":                                             "Service without metadata.name",
		sample + "---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: [":           "document 4",
		sample + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}": "Service shop/web is listed twice (also document 1)",
		"":                               "holds no object",
		"# nothing but a comment\n---\n": "holds no object",
	} {
		_, err := ParseFile([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", in, err, want)
		}
	}
}

// An explicit empty List is how a file says "no services"; typed lists
// (kubectl get services -o yaml of one kind) work too.
func TestParseFileLists(t *testing.T) {
	snap, err := ParseFile([]byte("apiVersion: v1\nkind: List\nitems: []\n"))
	if err != nil || len(snap.Services)+len(snap.EndpointSlices) != 0 {
		t.Fatalf("empty List: %v %+v", err, snap)
	}
	snap, err = ParseFile([]byte(`apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.2]}]
`))
	if err != nil || len(snap.Services) != 1 || len(snap.EndpointSlices) != 1 || snap.Services[0].Namespace != "default" {
		t.Fatalf("typed lists: %v %+v", err, snap)
	}
}

// The poller applies a changed file only once it has stayed the same for a
// look, keeps the last good state through a broken or empty file, and
// applies an explicit empty List.
func TestFileKeepsLastGoodState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(sample)
	f := &File{Path: path, Poll: time.Hour, Settle: time.Minute}
	f.changes = make(chan struct{}, 1)
	w := &fileWatch{f: f}
	w.look(true)
	// services is how many services the view holds.
	services := func(v interface{ ServiceKeys() []string }) int { return len(v.ServiceKeys()) }
	view, keys, all, err := f.Take()
	if !all || err != nil || view == nil || services(view) != 2 {
		t.Fatalf("first load: %v %v %v", all, err, keys)
	}
	if _, keys, all, err := f.Take(); all || len(keys) != 0 || err != nil {
		t.Fatalf("unchanged file reported as changed: %v %v %v", all, keys, err)
	}

	// Caught half-written: a new content is only looked at again.
	write(sample[:len(sample)/2])
	if next := w.look(false); next != f.Settle {
		t.Fatalf("a fresh change must be read again after Settle, got %v", next)
	}
	if _, keys, _, err := f.Take(); len(keys) != 0 || err != nil {
		t.Fatalf("a change in progress was applied: %v %v", keys, err)
	}
	write("")
	w.look(false)
	w.look(false) // empty for two looks in a row: a broken edit
	view, keys, _, err = f.Take()
	if len(keys) != 0 || !errors.Is(err, ErrEmpty) || services(view) != 2 {
		t.Fatalf("an empty file must keep the last good state: %v %v", keys, err)
	}
	write("kind: Nonsense")
	w.look(false)
	w.look(false)
	if view, keys, _, err = f.Take(); len(keys) != 0 || err == nil || services(view) != 2 {
		t.Fatalf("a broken file must be an error, not a change: %v %v", keys, err)
	}
	// The same content again (a trailing newline more): nothing changed.
	write(sample + "\n")
	w.look(false)
	w.look(false)
	if _, keys, _, err := f.Take(); len(keys) != 0 || err != nil {
		t.Fatalf("fixed file: %v %v", keys, err)
	}
	// One service's endpoints change: only it is reported.
	write(strings.Replace(sample, "10.244.1.2", "10.244.1.9", 1))
	w.look(false)
	w.look(false)
	if _, keys, _, err := f.Take(); len(keys) != 1 || err != nil {
		t.Fatalf("one service changed: %v %v", keys, err)
	}
	write("apiVersion: v1\nkind: List\nitems: []\n")
	w.look(false)
	w.look(false)
	if view, keys, _, err := f.Take(); len(keys) != 2 || err != nil || services(view) != 0 {
		t.Fatalf("an empty List removes everything: %v %v", keys, err)
	}
}
