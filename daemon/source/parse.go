package source

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// ErrEmpty is ParseFile's error for input without a single object: an
// empty or half-written file is a broken edit, not "no services". An
// explicit empty List is how a file says "no services".
var ErrEmpty = errors.New(`the services file holds no object (empty, or caught half-written?); ` +
	`the last good state stays in force. To remove every service, write an empty List: ` +
	`"apiVersion: v1", "kind: List", "items: []"`)

// decoder decodes the kinds of core/v1 and discovery/v1 as the API server
// serves them, strictly: an unknown or duplicated field is an error, so a
// typo does not silently change a service.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	utilruntime.Must(corev1.AddToScheme(scheme))
	utilruntime.Must(discoveryv1.AddToScheme(scheme))
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// ParseFile reads Services, EndpointSlices and Nodes from a multi-document YAML
// (or JSON) stream, exactly as the API server serves them: `kubectl get -o
// yaml` output, `kind: List` and typed lists (ServiceList,
// EndpointSliceList) work. Any other kind is an error, so a mistake does not
// silently drop a service, and so is input without any object (ErrEmpty)
// and an object listed twice.
func ParseFile(data []byte) (*Snapshot, error) {
	p := parser{snap: &Snapshot{}, seen: map[string]string{}}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" {
			continue
		}
		if err := p.add(raw, fmt.Sprintf("document %d", doc)); err != nil {
			return nil, err
		}
	}
	if !p.sawList && len(p.snap.Services)+len(p.snap.EndpointSlices)+len(p.snap.Nodes) == 0 {
		return nil, ErrEmpty
	}
	return p.snap, nil
}

type parser struct {
	snap    *Snapshot
	seen    map[string]string // "Kind namespace/name" -> where
	sawList bool
}

func (p *parser) add(raw []byte, where string) error {
	obj, gvk, err := decoder.Decode(raw, nil, nil)
	switch {
	case runtime.IsNotRegisteredError(err), runtime.IsMissingKind(err), runtime.IsMissingVersion(err):
		return fmt.Errorf("%s: unsupported object %s (want v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node, or a List of them)", where, kindOf(raw))
	case err != nil:
		return fmt.Errorf("%s (%s): %w", where, kindOf(raw), err)
	}
	switch o := obj.(type) {
	case *corev1.Service:
		return p.object(where, "Service", o)
	case *discoveryv1.EndpointSlice:
		return p.object(where, "EndpointSlice", o)
	case *corev1.Node:
		return p.object(where, "Node", o)
	case *corev1.NodeList:
		p.sawList = true
		for i := range o.Items {
			if err := p.object(fmt.Sprintf("%s item %d", where, i), "Node", &o.Items[i]); err != nil {
				return err
			}
		}
	case *corev1.ServiceList:
		p.sawList = true
		for i := range o.Items {
			if err := p.object(fmt.Sprintf("%s item %d", where, i), "Service", &o.Items[i]); err != nil {
				return err
			}
		}
	case *discoveryv1.EndpointSliceList:
		p.sawList = true
		for i := range o.Items {
			if err := p.object(fmt.Sprintf("%s item %d", where, i), "EndpointSlice", &o.Items[i]); err != nil {
				return err
			}
		}
	case *corev1.List:
		p.sawList = true
		for i, item := range o.Items {
			if err := p.add(item.Raw, fmt.Sprintf("%s item %d", where, i)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: unsupported object %s %q (want v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node, or a List of them)", where, gvk.GroupVersion(), gvk.Kind)
	}
	return nil
}

// object adds a Service or EndpointSlice, defaulting its namespace.
func (p *parser) object(where, kind string, o interface {
	GetNamespace() string
	SetNamespace(string)
	GetName() string
}) error {
	if o.GetName() == "" {
		return fmt.Errorf("%s: %s without metadata.name", where, kind)
	}
	if _, node := o.(*corev1.Node); !node && o.GetNamespace() == "" {
		o.SetNamespace("default") // Nodes have no namespace
	}
	key := kind + " " + o.GetNamespace() + "/" + o.GetName()
	if first, dup := p.seen[key]; dup {
		return fmt.Errorf("%s: %s is listed twice (also %s)", where, key, first)
	}
	p.seen[key] = where
	switch o := o.(type) {
	case *corev1.Service:
		p.snap.Services = append(p.snap.Services, o)
	case *discoveryv1.EndpointSlice:
		p.snap.EndpointSlices = append(p.snap.EndpointSlices, o)
	case *corev1.Node:
		p.snap.Nodes = append(p.snap.Nodes, o)
	}
	return nil
}

// kindOf names a document's apiVersion and kind for an error message.
func kindOf(raw []byte) string {
	var tm struct{ APIVersion, Kind string }
	_ = json.Unmarshal(raw, &tm)
	return fmt.Sprintf("%s %q", tm.APIVersion, tm.Kind)
}
