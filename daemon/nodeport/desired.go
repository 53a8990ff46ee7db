// Package nodeport keeps warpd's north-south load balancer (bpf/nodeport)
// in step with the desired state: the NodePort, local ExternalIP and
// LoadBalancer ingress frontends that daemon/services computes become one
// nodeport.Service per service port and address family (Desired), written
// by Reconciler.Sync, which also tells the programs the node's interfaces
// and attaches them (xdp, tc or auto). Maglev tables are computed in Go by
// bpf/nodeport, the same on every node for the same backends. A health
// server answers the healthCheckNodePort of externalTrafficPolicy: Local
// services as kube-proxy's does (health.go).
package nodeport

import (
	"fmt"
	"net/netip"
	"slices"

	np "github.com/warpnet/warpnet/bpf/nodeport"
	"github.com/warpnet/warpnet/daemon/services"
)

// Mode is how flows to backends on other nodes are forwarded by default.
type Mode string

// Modes (--lb-mode, and the services.LBModeAnnotation values).
const (
	SNAT Mode = "snat" // the source becomes the node's; replies come back through it
	DSR  Mode = "dsr"  // the frontend travels in an IP option; the backend's node answers the client
)

// ParseMode parses --lb-mode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case SNAT, DSR:
		return m, nil
	}
	return "", fmt.Errorf("%q is not snat or dsr", s)
}

// Desired turns the entries into the load balancer's services: one per
// service port (entry ID) and address family, with the entries' external
// frontends (loopback ones are the socket load balancer's only). Backends
// are the same for every external frontend of a service port (the
// externalTrafficPolicy applies to them all). mode is the node's default,
// overridden per service by services.LBModeAnnotation; tableSize 0 is
// nodeport.DefaultTableSize. The result is sorted and normalized as
// nodeport.LB.Services reads it back, so the two compare with Same.
func Desired(entries []services.Entry, mode Mode, tableSize int) []np.Service {
	if tableSize == 0 {
		tableSize = np.DefaultTableSize
	}
	byKey := map[np.ServiceKey]*np.Service{}
	var keys []np.ServiceKey
	for _, e := range entries {
		k, ok := keyOf(e)
		if !ok {
			continue
		}
		x := e.External
		s := byKey[k]
		if s == nil {
			m := mode
			if x.Mode != "" {
				m = Mode(x.Mode)
			}
			s = &np.Service{ID: e.ID, IPv6: k.IPv6, Proto: e.Proto, Backends: slices.Clone(e.Backends),
				DSR: m == DSR, Local: x.Local, TableSize: tableSize}
			byKey[k] = s
			keys = append(keys, k)
		}
		s.Frontends = append(s.Frontends, e.AddrPort)
	}
	out := make([]np.Service, 0, len(keys))
	for _, k := range keys {
		s := byKey[k]
		s.Frontends = sortedUnique(s.Frontends)
		s.Backends = sortedUnique(s.Backends)
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b np.Service) int { return compareKeys(a.Key(), b.Key()) })
	return out
}

func sortedUnique(aps []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(aps))
	for _, ap := range aps {
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// Same says whether two normalized services program the same maps.
func Same(a, b np.Service) bool {
	return a.ID == b.ID && a.IPv6 == b.IPv6 && a.Proto == b.Proto && a.DSR == b.DSR && a.Local == b.Local &&
		a.Random == b.Random && a.TableSize == b.TableSize &&
		slices.Equal(a.Frontends, b.Frontends) && slices.Equal(a.Backends, b.Backends)
}
