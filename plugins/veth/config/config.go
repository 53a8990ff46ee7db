// Package config parses and validates warp-veth's network configuration.
// Every failure is a *types.Error whose message names the offending key.
package config

import (
	"encoding/json"
	"errors"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/nodefacts"
)

// DefaultMTU is used when mtu is not set and warpd has published no MTU.
const DefaultMTU = 1500

// XDP says which XDP features the pod's host-side veth runs. "xdp": false
// turns XDP off entirely; an object switches features one by one.
type XDP struct {
	Enabled   bool
	Redirect  bool // same-node pod-to-pod fast path
	AntiSpoof bool // drop packets whose source IP or MAC is not the pod's
}

// UnmarshalJSON accepts true, false, or {"redirect": bool, "antiSpoof": bool}
// (a missing feature key means on).
func (x *XDP) UnmarshalJSON(b []byte) error {
	var on bool
	if err := json.Unmarshal(b, &on); err == nil {
		*x = XDP{Enabled: on, Redirect: on, AntiSpoof: on}
		return nil
	}
	var obj struct {
		Redirect  *bool `json:"redirect"`
		AntiSpoof *bool `json:"antiSpoof"`
	}
	if err := json.Unmarshal(b, &obj); err != nil {
		return &cnierr.FieldError{Field: "xdp", Msg: `expected true, false or {"redirect": bool, "antiSpoof": bool}`}
	}
	*x = XDP{Enabled: true, Redirect: obj.Redirect == nil || *obj.Redirect, AntiSpoof: obj.AntiSpoof == nil || *obj.AntiSpoof}
	return nil
}

// NetConf is warp-veth's configuration.
type NetConf struct {
	types.PluginConf
	MTU       int    `json:"mtu"`
	XDP       *XDP   `json:"xdp"`
	BPFFSRoot string `json:"bpffsRoot"`
	// NodeFacts is where warpd publishes the node's pod MTU, used when mtu
	// is not set (internal/nodefacts.DefaultPath).
	NodeFacts string `json:"nodeFacts"`
}

// Load parses stdin, applies defaults and validates.
func Load(stdin []byte) (*NetConf, error) {
	n := &NetConf{}
	if err := cnierr.Decode(stdin, n); err != nil {
		return nil, err
	}
	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.PluginConf); err != nil {
			return nil, cnierr.New(types.ErrDecodingFailure, "prevResult: %v", err)
		}
	}
	if err := checkIPAM(n.IPAM.Type); err != nil {
		return nil, err
	}
	if n.MTU == 0 {
		mtu, err := nodeMTU(n.NodeFacts)
		if err != nil {
			return nil, err
		}
		n.MTU = mtu
	}
	if n.MTU < 68 || n.MTU > 65535 {
		return nil, cnierr.Invalid("mtu", "%d is out of range (68-65535)", n.MTU)
	}
	if n.XDP == nil {
		// Off unless asked for: on veth, XDP costs more than it saves
		// (the kernel turns off GSO/TSO on the pod end, and redirected
		// frames need software checksums); see docs/benchmarks.md.
		n.XDP = &XDP{}
	}
	if n.BPFFSRoot == "" {
		n.BPFFSRoot = pinset.DefaultRoot
	}
	return n, nil
}

// LoadDel parses only what DEL needs: the IPAM plugin that releases the
// addresses and the bpffs root where XDP state is pinned. Every other key is
// ignored, so a pod is still cleaned up when the rest of its configuration
// has since become invalid (the runtime retries a failing DEL while the veth,
// its routes and its addresses stay). Keys DEL does not read keep their
// defaults in the result.
func LoadDel(stdin []byte) (*NetConf, error) {
	var d struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		IPAM       struct {
			Type string `json:"type"`
		} `json:"ipam"`
		BPFFSRoot string `json:"bpffsRoot"`
	}
	if err := cnierr.Decode(stdin, &d); err != nil {
		return nil, err
	}
	if err := checkIPAM(d.IPAM.Type); err != nil {
		return nil, err
	}
	n := &NetConf{MTU: DefaultMTU, XDP: &XDP{}, BPFFSRoot: d.BPFFSRoot}
	n.CNIVersion, n.Name, n.IPAM.Type = d.CNIVersion, d.Name, d.IPAM.Type
	if n.BPFFSRoot == "" {
		n.BPFFSRoot = pinset.DefaultRoot
	}
	return n, nil
}

// nodeMTU is the pod MTU warpd published for this node (it follows the
// routing mode: a tunnel's overhead is subtracted), or DefaultMTU while
// nothing is published.
func nodeMTU(factsPath string) (int, error) {
	if factsPath == "" {
		factsPath = nodefacts.DefaultPath
	} else if !filepath.IsAbs(factsPath) {
		return 0, cnierr.Invalid("nodeFacts", "%q is not an absolute path", factsPath)
	}
	f, err := nodefacts.Read(factsPath)
	switch {
	case errors.Is(err, nodefacts.ErrNotPublished):
		return DefaultMTU, nil
	case err != nil:
		return 0, cnierr.New(types.ErrIOFailure, "nodeFacts: %v", err)
	case f.MTU == 0:
		return DefaultMTU, nil
	}
	return f.MTU, nil
}

func checkIPAM(pluginType string) error {
	if pluginType == "" {
		return cnierr.Invalid("ipam", `missing: warp-veth needs an IPAM plugin, e.g. "ipam": {"type": "warp-ipam", ...}`)
	}
	return nil
}
