// Package cniargs parses CNI_ARGS, the one way for every warpnet plugin, with
// the cni library's types.LoadArgs semantics (as host-local): KEY=VALUE pairs
// separated by ";", a malformed pair is an error, an unknown key is an error
// unless IgnoreUnknown=1 is among them (which Kubernetes runtimes always
// pass, together with the K8S_POD_* keys).
package cniargs

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Args are the CNI_ARGS keys warpnet's plugins read.
type Args struct {
	types.CommonArgs
	// IP requests fixed addresses (comma-separated), as host-local's IP=.
	IP IPs
	// MAC requests the interface's MAC (warp-sriov), as sriov-cni's MAC=.
	MAC types.UnmarshallableString
	// The pod, as Kubernetes runtimes pass it.
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
}

// IPs is a comma-separated list of addresses; a prefix length (as the ips
// capability carries one) is accepted and dropped.
type IPs []netip.Addr

// UnmarshalText parses "10.0.0.5,fd00::5".
func (p *IPs) UnmarshalText(b []byte) error {
	*p = nil
	for _, s := range strings.Split(string(b), ",") {
		s = strings.TrimSpace(s)
		if i := strings.IndexByte(s, '/'); i >= 0 {
			s = s[:i]
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("%q is not an IP address", s)
		}
		*p = append(*p, a.Unmap())
	}
	return nil
}

// Parse parses env (the CNI_ARGS value). Errors are code 4 (invalid
// environment variables) and say which pair is wrong.
func Parse(env string) (*Args, error) {
	a := &Args{}
	if env == "" {
		return a, nil
	}
	if err := types.LoadArgs(env, a); err != nil {
		msg := strings.TrimPrefix(err.Error(), "ARGS: ")
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: "+msg, "")
	}
	return a, nil
}
