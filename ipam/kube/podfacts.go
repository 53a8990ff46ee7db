package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/warpnet/warpnet/internal/atomicfile"
)

// Pod facts: warpd watches the pods of its node and publishes, for each,
// what warp-ipam reads of it (its identity, its ipam.warpnet.io
// annotations, its StatefulSet owner) in a file of a node-local directory.
// An ADD then needs no read of the pod from the API server: one request
// fewer per ADD, for the API server as for the plugin. A file, not a
// socket, as for the node facts: the plugin reads the pod from the API
// server whenever the file is missing or names another pod of the same
// name (its UID differs), so it keeps working while warpd is down, behind,
// or not deployed.

// DefaultPodFactsDir is where warpd publishes and warp-ipam looks.
const DefaultPodFactsDir = "/run/warpnet/pods"

// podFactsFile is pod namespace/name's file in dir: neither part may hold
// an underscore (DNS labels and subdomains), so the name is unambiguous.
func podFactsFile(dir, namespace, name string) string {
	return filepath.Join(dir, namespace+"_"+name+".json")
}

// IPAMAnnotations returns the annotations warp-ipam reads (this group's),
// nil if there are none.
func IPAMAnnotations(annotations map[string]string) map[string]string {
	var out map[string]string
	for k, v := range annotations {
		if strings.HasPrefix(k, Group+"/") {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// EncodePodFacts is what WritePodFacts publishes for p: the pod as given
// (the publisher passes only what warp-ipam reads).
func EncodePodFacts(p *Pod) ([]byte, error) { return json.Marshal(p) }

// WritePodFacts publishes data, EncodePodFacts of pod namespace/name, in
// dir, atomically.
func WritePodFacts(dir, namespace, name string, data []byte) error {
	// A cache the next warpd rebuilds, under /run: no fsync.
	if err := atomicfile.Replace(podFactsFile(dir, namespace, name), data, 0o644); err != nil {
		return fmt.Errorf("pod facts: %w", err)
	}
	return nil
}

// RemovePodFacts withdraws pod namespace/name's facts from dir.
func RemovePodFacts(dir, namespace, name string) error {
	if err := os.Remove(podFactsFile(dir, namespace, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ReadPodFacts returns the facts published in dir for pod namespace/name
// with UID uid. ok is false when there are none for that UID: the caller
// reads the pod from the API server.
func ReadPodFacts(dir, namespace, name, uid string) (p *Pod, ok bool) {
	data, err := os.ReadFile(podFactsFile(dir, namespace, name))
	if err != nil {
		return nil, false
	}
	p = &Pod{}
	if json.Unmarshal(data, p) != nil || p.UID != uid || p.Namespace != namespace || p.Name != name {
		return nil, false
	}
	return p, true
}

// PublishedPods lists the pods (namespace/name) with facts in dir.
func PublishedPods(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		base, ok := strings.CutSuffix(e.Name(), ".json")
		ns, name, ok2 := strings.Cut(base, "_")
		if ok && ok2 && !e.IsDir() {
			out = append(out, ns+"/"+name)
		}
	}
	return out, nil
}
