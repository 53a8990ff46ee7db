// Package config parses and validates warp-veth's network configuration.
// Every failure is a *types.Error whose message names the offending key.
package config

import (
	"cmp"
	"encoding/json"
	"errors"
	"net/netip"
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

// Values of "redirect".
const (
	// RedirectNone leaves the pod's traffic to the node's forwarding path.
	RedirectNone = "none"
	// RedirectTC has the tc program on the host end forward it.
	RedirectTC = "tc"
)

// TC says what the tc program on the pod's host end does; it is attached
// when either is on.
type TC struct {
	// Redirect: the program forwards the pod's traffic itself
	// ("redirect": "tc"), skipping the node's forwarding path.
	Redirect bool
	// AntiSpoof: the program drops packets whose source IP or MAC is not
	// the pod's ("antiSpoof", on by default with "redirect": "tc").
	AntiSpoof bool
}

// Enabled reports whether the pod gets the tc program.
func (t TC) Enabled() bool { return t.Redirect || t.AntiSpoof }

// NetConf is warp-veth's configuration.
type NetConf struct {
	types.PluginConf
	MTU int  `json:"mtu"`
	XDP *XDP `json:"xdp"`
	// Redirect is RedirectTC or RedirectNone ("" is none).
	Redirect string `json:"redirect"`
	// AntiSpoof turns the tc program's anti-spoofing on or off (nil: on
	// with "redirect": "tc", off otherwise).
	AntiSpoof *bool  `json:"antiSpoof"`
	BPFFSRoot string `json:"bpffsRoot"`
	// NodeFacts is where warpd publishes the node's facts: the pod MTU,
	// used when mtu is not set, and the cluster's pod CIDRs, to which the
	// tc program forwards itself (internal/nodefacts.DefaultPath).
	NodeFacts string `json:"nodeFacts"`

	// TC is what Load resolved from redirect and antiSpoof.
	TC TC `json:"-"`
	// ClusterPodCIDRs are the cluster's pod CIDRs as warpd published them
	// (nil while nothing is published); read only with "redirect": "tc".
	ClusterPodCIDRs []netip.Prefix `json:"-"`
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
	if n.XDP == nil {
		// Off unless asked for: on veth, XDP costs more than it saves
		// (the kernel turns off GSO/TSO on the pod end, and redirected
		// frames need software checksums); see docs/benchmarks.md.
		n.XDP = &XDP{}
	}
	if err := n.resolveTC(); err != nil {
		return nil, err
	}
	if n.MTU == 0 || n.TC.Redirect {
		facts, err := readFacts(n.NodeFacts)
		if err != nil {
			return nil, err
		}
		if n.MTU == 0 {
			n.MTU = cmp.Or(facts.MTU, DefaultMTU)
		}
		if n.TC.Redirect {
			n.ClusterPodCIDRs = facts.ClusterPodCIDRs
		}
	}
	if n.MTU < 68 || n.MTU > 65535 {
		return nil, cnierr.Invalid("mtu", "%d is out of range (68-65535)", n.MTU)
	}
	if n.BPFFSRoot == "" {
		n.BPFFSRoot = pinset.DefaultRoot
	}
	return n, nil
}

// LoadDel parses only what DEL needs: the IPAM plugin that releases the
// addresses and the bpffs root where the BPF state (XDP or tc) is pinned. Every other key is
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

// resolveTC checks redirect and antiSpoof and sets TC.
func (n *NetConf) resolveTC() error {
	switch n.Redirect {
	case "", RedirectNone:
	case RedirectTC:
		n.TC.Redirect = true
	default:
		return cnierr.Invalid("redirect", "%q: want %q or %q", n.Redirect, RedirectTC, RedirectNone)
	}
	n.TC.AntiSpoof = n.TC.Redirect
	if n.AntiSpoof != nil {
		n.TC.AntiSpoof = *n.AntiSpoof
	}
	if n.XDP.Enabled {
		// One program per host end.
		if n.TC.Redirect {
			return cnierr.Invalid("redirect", `"tc" cannot be combined with "xdp": choose one datapath`)
		}
		if n.AntiSpoof != nil {
			return cnierr.Invalid("antiSpoof", `belongs to the tc datapath; with "xdp" on, set "xdp": {"antiSpoof": ...}`)
		}
	}
	return nil
}

// readFacts reads what warpd published for this node: the pod MTU (it
// follows the routing mode: a tunnel's overhead is subtracted) and the
// cluster's pod CIDRs. Nothing published yet is zero facts.
func readFacts(factsPath string) (nodefacts.Facts, error) {
	if factsPath == "" {
		factsPath = nodefacts.DefaultPath
	} else if !filepath.IsAbs(factsPath) {
		return nodefacts.Facts{}, cnierr.Invalid("nodeFacts", "%q is not an absolute path", factsPath)
	}
	f, err := nodefacts.Read(factsPath)
	switch {
	case errors.Is(err, nodefacts.ErrNotPublished):
		return nodefacts.Facts{}, nil
	case err != nil:
		return nodefacts.Facts{}, cnierr.New(types.ErrIOFailure, "nodeFacts: %v", err)
	}
	return f, nil
}

func checkIPAM(pluginType string) error {
	if pluginType == "" {
		return cnierr.Invalid("ipam", `missing: warp-veth needs an IPAM plugin, e.g. "ipam": {"type": "warp-ipam", ...}`)
	}
	return nil
}
