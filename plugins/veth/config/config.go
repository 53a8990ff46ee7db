// Package config parses and validates warp-veth's network configuration.
// Every failure is a *types.Error whose message names the offending key.
package config

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/bpf/pinset"
)

// DefaultMTU is used when mtu is not set.
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
		return errors.New(`expected true, false or {"redirect": bool, "antiSpoof": bool}`)
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
}

func invalid(field, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
}

// Load parses stdin, applies defaults and validates.
func Load(stdin []byte) (*NetConf, error) {
	n := &NetConf{}
	if err := json.Unmarshal(stdin, n); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("%s: expected %s, got a JSON %s", te.Field, te.Type, te.Value), "")
		case errors.As(err, &se):
			return nil, types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON: "+err.Error(), "")
		default: // XDP's own error
			return nil, types.NewError(types.ErrDecodingFailure, "xdp: "+err.Error(), "")
		}
	}
	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
		}
	}
	if n.IPAM.Type == "" {
		return nil, invalid("ipam", `missing: warp-veth needs an IPAM plugin, e.g. "ipam": {"type": "warp-ipam", ...}`)
	}
	if n.MTU == 0 {
		n.MTU = DefaultMTU
	}
	if n.MTU < 68 || n.MTU > 65535 {
		return nil, invalid("mtu", "%d is out of range (68-65535)", n.MTU)
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
