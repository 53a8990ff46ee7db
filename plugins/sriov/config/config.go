// Package config parses and validates warp-sriov's network configuration.
// The keys are sriov-cni's, so an existing NetworkAttachmentDefinition works
// by changing "type". Every failure is a *types.Error naming the key.
package config

import (
	"net"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/internal/cniargs"
	"github.com/warpnet/warpnet/internal/cnierr"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
)

// DefaultDataDir holds the per-attachment config cache and the per-VF
// records, which must survive node restarts.
const DefaultDataDir = "/var/lib/cni/warp-sriov"

// Store is the part of the configuration that DEL, GC and STATUS read:
// where the records live, which IPAM plugin to forward to, and (GC) the
// attachments to keep. Nothing else is parsed, so DEL still cleans up after
// the rest of the configuration has become invalid.
type Store struct {
	DataDir string `json:"dataDir"`
	IPAM    struct {
		Type string `json:"type"`
	} `json:"ipam"`
	ValidAttachments  []types.GCAttachment `json:"cni.dev/valid-attachments"`
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments"` // before CNI 1.1.0
}

// LoadStore parses just the Store.
func LoadStore(stdin []byte) (*Store, error) {
	s := &Store{}
	if err := cnierr.Decode(stdin, s); err != nil {
		return nil, err
	}
	if err := s.defaults(); err != nil {
		return nil, err
	}
	s.ValidAttachments = append(s.ValidAttachments, s.LegacyAttachments...)
	return s, nil
}

func (s *Store) defaults() error {
	if s.DataDir == "" {
		s.DataDir = DefaultDataDir
	}
	if !filepath.IsAbs(s.DataDir) {
		return cnierr.Invalid("dataDir", "%q is not an absolute path", s.DataDir)
	}
	return nil
}

// NetConf is warp-sriov's configuration for ADD and CHECK. Pointers
// distinguish "not set" (the VF's own setting applies) from a zero value
// (set it to zero).
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

// Load parses and validates the configuration for ADD and CHECK. envArgs is
// CNI_ARGS, whose MAC= overrides "mac" (runtimeConfig.mac overrides both).
func Load(stdin []byte, envArgs string) (*NetConf, error) {
	n := &NetConf{}
	if err := cnierr.Decode(stdin, n); err != nil {
		return nil, err
	}
	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.PluginConf); err != nil {
			return nil, cnierr.New(types.ErrDecodingFailure, "prevResult: %v", err)
		}
	}
	store := Store{DataDir: n.DataDir}
	if err := store.defaults(); err != nil {
		return nil, err
	}
	n.DataDir = store.DataDir
	if n.RuntimeConfig.DeviceID != "" {
		n.DeviceID = n.RuntimeConfig.DeviceID
	}
	if n.DeviceID == "" {
		return nil, cnierr.Invalid("deviceID", "missing: set the VF's PCI address (Multus passes the device plugin's choice as runtimeConfig.deviceID)")
	}
	pci, err := sysfs.ParsePCI(n.DeviceID)
	if err != nil {
		return nil, cnierr.Invalid("deviceID", "%q is not a PCI address (want DDDD:BB:DD.F, e.g. 0000:3b:02.1)", n.DeviceID)
	}
	n.DeviceID = pci
	args, err := cniargs.Parse(envArgs)
	if err != nil {
		return nil, err
	}
	if args.MAC != "" {
		n.MAC = string(args.MAC)
	}
	if n.RuntimeConfig.MAC != "" {
		n.MAC = n.RuntimeConfig.MAC
	}
	if n.MAC != "" {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 == 1 {
			return nil, cnierr.Invalid("mac", "%q is not a unicast Ethernet MAC", n.MAC)
		}
		n.MAC = mac.String()
	}
	if n.VLAN != nil && (*n.VLAN < 0 || *n.VLAN > 4094) {
		return nil, cnierr.Invalid("vlan", "%d is out of range (0-4094)", *n.VLAN)
	}
	vlanSet := n.VLAN != nil && *n.VLAN > 0
	if n.VLANQoS != nil {
		if *n.VLANQoS < 0 || *n.VLANQoS > 7 {
			return nil, cnierr.Invalid("vlanQoS", "%d is out of range (0-7)", *n.VLANQoS)
		}
		if *n.VLANQoS != 0 && !vlanSet {
			return nil, cnierr.Invalid("vlanQoS", "needs a non-zero vlan")
		}
	}
	if n.VLANProto != nil {
		p := strings.ToLower(*n.VLANProto)
		if p != "802.1q" && p != "802.1ad" {
			return nil, cnierr.Invalid("vlanProto", "%q must be 802.1q or 802.1ad", *n.VLANProto)
		}
		if p != "802.1q" && !vlanSet {
			return nil, cnierr.Invalid("vlanProto", "needs a non-zero vlan")
		}
		*n.VLANProto = p
	}
	for _, f := range []struct{ name, val string }{{"spoofchk", n.SpoofChk}, {"trust", n.Trust}} {
		if f.val != "" && f.val != "on" && f.val != "off" {
			return nil, cnierr.Invalid(f.name, "%q must be \"on\" or \"off\"", f.val)
		}
	}
	if n.LinkState != "" && n.LinkState != "auto" && n.LinkState != "enable" && n.LinkState != "disable" {
		return nil, cnierr.Invalid("link_state", "%q must be auto, enable or disable", n.LinkState)
	}
	for _, r := range []struct {
		name string
		val  *int
	}{{"min_tx_rate", n.MinTxRate}, {"max_tx_rate", n.MaxTxRate}} {
		if r.val != nil && *r.val < 0 {
			return nil, cnierr.Invalid(r.name, "%d must not be negative (Mbps)", *r.val)
		}
	}
	if n.MinTxRate != nil && n.MaxTxRate != nil && *n.MaxTxRate > 0 && *n.MinTxRate > *n.MaxTxRate {
		return nil, cnierr.Invalid("min_tx_rate", "%d is above max_tx_rate %d", *n.MinTxRate, *n.MaxTxRate)
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		return nil, cnierr.Invalid("mtu", "%d is out of range (68-65535)", *n.MTU)
	}
	return n, nil
}

// On reports whether an "on"/"off" setting is on.
func On(s string) bool { return s == "on" }
