// Package nodefacts is how warpd tells the CNI plugins on its node what they
// cannot know by themselves: the node's pod CIDRs (from its Node object), the
// pod MTU that the routing mode allows, and the mode. warpd writes one small
// JSON file atomically; the plugins read it on every ADD. A file, not a map
// or a socket, so that plugins keep working while warpd is down or
// restarting: the last published facts stay valid.
package nodefacts

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// DefaultPath is where warpd publishes and the plugins look.
const DefaultPath = "/run/warpnet/node.json"

// ErrNotPublished is wrapped by Read when warpd has not published (yet).
var ErrNotPublished = errors.New("warpd has not published this node's facts")

// Facts are what warpd knows about its node.
type Facts struct {
	// Node is the Kubernetes node name.
	Node string `json:"node"`
	// PodCIDRs are the node's spec.podCIDRs, at most one per family.
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	// MTU is what pod interfaces should use: the uplink's MTU less the
	// tunnel overhead when traffic may be encapsulated.
	MTU int `json:"mtu"`
	// Routing is warpd's --routing mode: native, vxlan or auto.
	Routing string `json:"routing"`
	// ClusterPodCIDRs are the pod CIDRs of the whole cluster: every
	// node's spec.podCIDRs and warpd's --cluster-cidr. Pod traffic between
	// them is never masqueraded, so warp-veth's tc datapath may send it to
	// its next hop without the node's netfilter hooks.
	ClusterPodCIDRs []netip.Prefix `json:"clusterPodCIDRs,omitempty"`
}

// PodCIDR returns the node's pod CIDR of the family of v4 (true: IPv4).
func (f Facts) PodCIDR(v4 bool) (netip.Prefix, bool) {
	for _, p := range f.PodCIDRs {
		if p.Addr().Is4() == v4 {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Write publishes f at path atomically: a reader sees the old file or the
// new one, never a part (temporary file, fsync, rename, fsync of the
// directory). The file is world-readable (0644): the plugins run as root
// but inspection tools need not.
func Write(path string, f Facts) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("node facts: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("node facts: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: already gone
	if _, err := tmp.Write(append(data, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("node facts: write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Read returns the facts published at path. A missing file is an error
// wrapping ErrNotPublished.
func Read(path string) (Facts, error) {
	var f Facts
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, fmt.Errorf("%w: %s does not exist (is warpd running, and does the Node have spec.podCIDRs?)", ErrNotPublished, path)
	}
	if err != nil {
		return f, fmt.Errorf("node facts: %w", err)
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return f, fmt.Errorf("node facts: %s: %w", path, err)
	}
	return f, nil
}
