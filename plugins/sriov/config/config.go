// Package config parses and validates warp-sriov's network configuration.
// The keys are sriov-cni's, so an existing NetworkAttachmentDefinition works
// by changing "type". Every failure is a *types.Error naming the key.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultDataDir holds the per-attachment config cache and the per-VF
// allocation records, which must survive node restarts.
const DefaultDataDir = "/var/lib/cni/warp-sriov"

// pciAddress is the sysfs form of a PCI address, "DDDD:BB:DD.F".
var pciAddress = regexp.MustCompile(`^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$`)

// NetConf is warp-sriov's configuration. Pointers distinguish "not set"
// (leave the VF as it is) from a zero value (set it to zero).
type NetConf struct {
	types.PluginConf
	DeviceID  string  `json:"deviceID"`
	VLAN      *int    `json:"vlan"`
	VLANQoS   *int    `json:"vlanQoS"`
	VLANProto *string `json:"vlanProto"`
	MAC       string  `json:"mac"`
	SpoofChk  string  `json:"spoofchk"`
	Trust     string  `json:"trust"`
	LinkState string  `json:"link_state"`
	MinTxRate *int    `json:"min_tx_rate"`
	MaxTxRate *int    `json:"max_tx_rate"`
	MTU       *int    `json:"mtu"`
	DataDir   string  `json:"dataDir"`

	RuntimeConfig struct {
		DeviceID string `json:"deviceID"`
		MAC      string `json:"mac"`
	} `json:"runtimeConfig"`
}

func invalid(field, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
}

// Decode parses stdin without validating values; DEL uses it, since it must
// work with whatever the runtime still has.
func Decode(stdin []byte) (*NetConf, error) {
	n := &NetConf{}
	if err := json.Unmarshal(stdin, n); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("%s: expected %s, got a JSON %s", te.Field, te.Type, te.Value), "")
		}
		return nil, types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON: "+err.Error(), "")
	}
	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
		}
	}
	if n.DataDir == "" {
		n.DataDir = DefaultDataDir
	}
	return n, nil
}

// Load parses and validates the configuration for ADD and CHECK. envArgs is
// CNI_ARGS, whose MAC= overrides "mac" (runtimeConfig.mac overrides both).
func Load(stdin []byte, envArgs string) (*NetConf, error) {
	n, err := Decode(stdin)
	if err != nil {
		return nil, err
	}
	if n.RuntimeConfig.DeviceID != "" {
		n.DeviceID = n.RuntimeConfig.DeviceID
	}
	switch {
	case n.DeviceID == "":
		return nil, invalid("deviceID", "missing: set the VF's PCI address (Multus passes the device plugin's choice as runtimeConfig.deviceID)")
	case !pciAddress.MatchString(n.DeviceID):
		return nil, invalid("deviceID", "%q is not a PCI address (want DDDD:BB:DD.F, e.g. 0000:3b:02.1)", n.DeviceID)
	}
	for _, kv := range strings.Split(envArgs, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == "MAC" {
			n.MAC = v
		}
	}
	if n.RuntimeConfig.MAC != "" {
		n.MAC = n.RuntimeConfig.MAC
	}
	if n.MAC != "" {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 == 1 {
			return nil, invalid("mac", "%q is not a unicast Ethernet MAC", n.MAC)
		}
		n.MAC = mac.String()
	}
	if n.VLAN != nil && (*n.VLAN < 0 || *n.VLAN > 4094) {
		return nil, invalid("vlan", "%d is out of range (0-4094)", *n.VLAN)
	}
	vlanSet := n.VLAN != nil && *n.VLAN > 0
	if n.VLANQoS != nil {
		if *n.VLANQoS < 0 || *n.VLANQoS > 7 {
			return nil, invalid("vlanQoS", "%d is out of range (0-7)", *n.VLANQoS)
		}
		if *n.VLANQoS != 0 && !vlanSet {
			return nil, invalid("vlanQoS", "needs a non-zero vlan")
		}
	}
	if n.VLANProto != nil {
		p := strings.ToLower(*n.VLANProto)
		if p != "802.1q" && p != "802.1ad" {
			return nil, invalid("vlanProto", "%q must be 802.1q or 802.1ad", *n.VLANProto)
		}
		if p != "802.1q" && !vlanSet {
			return nil, invalid("vlanProto", "needs a non-zero vlan")
		}
		*n.VLANProto = p
	}
	for _, f := range []struct{ name, val string }{{"spoofchk", n.SpoofChk}, {"trust", n.Trust}} {
		if f.val != "" && f.val != "on" && f.val != "off" {
			return nil, invalid(f.name, "%q must be \"on\" or \"off\"", f.val)
		}
	}
	if n.LinkState != "" && n.LinkState != "auto" && n.LinkState != "enable" && n.LinkState != "disable" {
		return nil, invalid("link_state", "%q must be auto, enable or disable", n.LinkState)
	}
	for _, r := range []struct {
		name string
		val  *int
	}{{"min_tx_rate", n.MinTxRate}, {"max_tx_rate", n.MaxTxRate}} {
		if r.val != nil && *r.val < 0 {
			return nil, invalid(r.name, "%d must not be negative (Mbps)", *r.val)
		}
	}
	if n.MinTxRate != nil && n.MaxTxRate != nil && *n.MaxTxRate > 0 && *n.MinTxRate > *n.MaxTxRate {
		return nil, invalid("min_tx_rate", "%d is above max_tx_rate %d", *n.MinTxRate, *n.MaxTxRate)
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		return nil, invalid("mtu", "%d is out of range (68-65535)", *n.MTU)
	}
	return n, nil
}

// On reports whether an "on"/"off" setting is on.
func On(s string) bool { return s == "on" }
