// Package source provides warpd's inputs: Services and EndpointSlices, from
// a YAML file (standalone nodes, the demo) or from the API server.
package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Source is one of warpd's inputs.
type Source interface {
	// Start begins watching; it returns once the first state is known
	// (or ctx ends).
	Start(ctx context.Context) error
	// Changes is signalled when the input may have changed.
	Changes() <-chan struct{}
	// Snapshot returns the current input; changed is false when it is
	// known to equal the last one returned. An error leaves the last good
	// state in force.
	Snapshot() (snap *Snapshot, changed bool, err error)
}

// Snapshot is the whole input at one moment.
type Snapshot struct {
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
}

type typeMeta struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Items      []yamlRaw `json:"items"`
}

// yamlRaw keeps a document (converted to JSON by the decoder) or a List
// item undecoded until its kind is known.
type yamlRaw []byte

func (r *yamlRaw) UnmarshalJSON(b []byte) error { *r = append((*r)[:0], b...); return nil }

// ParseFile reads Services and EndpointSlices from a multi-document YAML
// (or JSON) stream, exactly as the API server serves them (kubectl get -o
// yaml output, including kind: List, works). Other kinds are an error, so a
// typo does not silently drop a service.
func ParseFile(data []byte) (*Snapshot, error) {
	snap := &Snapshot{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for doc := 1; ; doc++ {
		var raw yamlRaw
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return snap, nil
			}
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
			continue
		}
		if err := snap.add(raw, fmt.Sprintf("document %d", doc)); err != nil {
			return nil, err
		}
	}
}

func (s *Snapshot) add(raw []byte, where string) error {
	var tm typeMeta
	if err := yaml.Unmarshal(raw, &tm); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	switch {
	case tm.Kind == "Service" && tm.APIVersion == "v1":
		svc := &corev1.Service{}
		if err := yaml.UnmarshalStrict(raw, svc); err != nil {
			return fmt.Errorf("%s (Service): %w", where, err)
		}
		if svc.Name == "" {
			return fmt.Errorf("%s: Service without metadata.name", where)
		}
		if svc.Namespace == "" {
			svc.Namespace = "default"
		}
		s.Services = append(s.Services, svc)
	case tm.Kind == "EndpointSlice" && tm.APIVersion == "discovery.k8s.io/v1":
		es := &discoveryv1.EndpointSlice{}
		if err := yaml.UnmarshalStrict(raw, es); err != nil {
			return fmt.Errorf("%s (EndpointSlice): %w", where, err)
		}
		if es.Namespace == "" {
			es.Namespace = "default"
		}
		s.EndpointSlices = append(s.EndpointSlices, es)
	case tm.Kind == "List" || (len(tm.Items) > 0 && tm.Kind != ""):
		for i, item := range tm.Items {
			if err := s.add(item, fmt.Sprintf("%s item %d", where, i)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: unsupported object %s %q (want v1 Service or discovery.k8s.io/v1 EndpointSlice)", where, tm.APIVersion, tm.Kind)
	}
	return nil
}

var _ Source = (*File)(nil)

// File watches a services file, polling it: changes are detected by
// content hash, so editors that rewrite in place are caught too, and no
// inotify support is needed.
type File struct {
	Path    string
	Poll    time.Duration // default 1s
	last    [32]byte
	changes chan struct{}
}

// Start polls the file until ctx ends.
func (f *File) Start(ctx context.Context) error {
	if f.Poll <= 0 {
		f.Poll = time.Second
	}
	f.changes = make(chan struct{}, 1)
	f.changes <- struct{}{}
	go func() {
		t := time.NewTicker(f.Poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case f.changes <- struct{}{}:
				default:
				}
			}
		}
	}()
	return nil
}

// Changes is signalled at every poll.
func (f *File) Changes() <-chan struct{} { return f.changes }

// Snapshot reads and parses the file. A file that cannot be read or parsed
// leaves the last good state in force: the caller keeps serving it and
// says why.
func (f *File) Snapshot() (*Snapshot, bool, error) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, false, fmt.Errorf("read services file: %w", err)
	}
	sum := sha256.Sum256(data)
	if sum == f.last {
		return nil, false, nil
	}
	snap, err := ParseFile(data)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", f.Path, err)
	}
	f.last = sum
	return snap, true, nil
}
