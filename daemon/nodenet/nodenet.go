// Package nodenet is warpd's node networking: from the cluster's Node objects
// it keeps the routes to every other node's pods (daemon/routing), pod
// egress masquerading (daemon/masquerade) and the facts the CNI plugins read
// (internal/nodefacts) in step, in the node's network namespace.
package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/warpnet/warpnet/daemon/masquerade"
	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/internal/nodefacts"
)

// Config is warpd's node networking configuration (its flags).
type Config struct {
	Routing routing.Config
	// Masquerade turns pod egress masquerading on.
	Masquerade bool
	// ClusterCIDRs are pod CIDRs beyond the nodes' spec.podCIDRs (e.g. the
	// whole cluster range, covering nodes not yet known).
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs are never masquerade destinations.
	ServiceCIDRs []netip.Prefix
	// NoMasquerade are networks traffic from or to which keeps pod
	// addresses (routed underlays, SR-IOV VLANs).
	NoMasquerade []netip.Prefix
	// FactsPath is where the plugins read the node's facts.
	FactsPath string
	// MTU overrides the pod MTU derived from the uplink and mode (0: derive).
	MTU int
}

// Status is what a sync did and found.
type Status struct {
	routing.Status
	// Facts are the facts published (zero until this node's Node object
	// with pod CIDRs and an uplink are known).
	Facts nodefacts.Facts
	// Waiting says why nothing was done, if so: this node's own Node
	// object is not known yet. Without it a node cannot tell itself from
	// its peers, so existing routes are left as they are.
	Waiting string
}

// Controller applies Config for a changing set of nodes. Not safe for
// concurrent use.
type Controller struct {
	cfg      Config
	routes   *routing.Manager
	facts    *nodefacts.Facts // last published
	masq     *masquerade.Config
	masqGone bool
}

// New checks cfg.
func New(cfg Config) (*Controller, error) {
	r, err := routing.New(cfg.Routing)
	if err != nil {
		return nil, err
	}
	if cfg.FactsPath == "" {
		cfg.FactsPath = nodefacts.DefaultPath
	}
	if cfg.MTU != 0 && (cfg.MTU < 1280 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("nodenet: MTU %d: want 1280 to 65535", cfg.MTU)
	}
	return &Controller{cfg: cfg, routes: r}, nil
}

// Sync programs routes, masquerading and facts for nodes, in the calling
// thread's network namespace. Every part is attempted; the error joins what
// failed.
func (c *Controller) Sync(nodes []*corev1.Node) (Status, error) {
	var st Status
	var errs []error
	rn := routing.FromNodes(nodes)
	if !slices.ContainsFunc(rn, func(n routing.Node) bool { return n.Name == c.cfg.Routing.Self }) {
		st.Waiting = fmt.Sprintf("no Node named %q (yet); node routes, masquerading and the node's facts wait for it", c.cfg.Routing.Self)
		return st, nil
	}
	rs, err := c.routes.Sync(rn)
	st.Status = rs
	errs = append(errs, err)

	cluster := slices.Clone(c.cfg.ClusterCIDRs)
	for _, n := range rn {
		cluster = append(cluster, n.PodCIDRs...)
	}
	slices.SortFunc(cluster, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	cluster = slices.Compact(cluster)

	if f, ok := c.factsOf(rs, cluster); ok {
		if c.facts == nil || !reflect.DeepEqual(*c.facts, f) {
			if err := nodefacts.Write(c.cfg.FactsPath, f); err != nil {
				errs = append(errs, err)
			} else {
				c.facts = &f
			}
		}
		st.Facts = f
	}

	if c.cfg.Masquerade {
		m := masquerade.Config{ServiceCIDRs: c.cfg.ServiceCIDRs, NoMasquerade: c.cfg.NoMasquerade, PodCIDRs: cluster}
		if c.masq == nil || !reflect.DeepEqual(*c.masq, m) {
			if err := masquerade.Sync(m); err != nil {
				errs = append(errs, err)
			} else {
				c.masq = &m
			}
		}
	} else if !c.masqGone {
		if err := masquerade.Remove(); err != nil {
			errs = append(errs, err)
		} else {
			c.masqGone = true
		}
	}
	return st, errors.Join(errs...)
}

// factsOf is what the plugins need, once this node's pod CIDRs and MTU are
// known; cluster are the cluster's pod CIDRs.
func (c *Controller) factsOf(rs routing.Status, cluster []netip.Prefix) (nodefacts.Facts, bool) {
	mtu := rs.MTU
	if c.cfg.MTU != 0 {
		mtu = c.cfg.MTU
	}
	if len(rs.Self.PodCIDRs) == 0 || mtu == 0 {
		return nodefacts.Facts{}, false
	}
	return nodefacts.Facts{Node: c.cfg.Routing.Self, PodCIDRs: rs.Self.PodCIDRs, MTU: mtu,
		Routing: string(c.cfg.Routing.Mode), ClusterPodCIDRs: cluster}, true
}

// Resync forgets what was applied, so that the next Sync rewrites the
// masquerade table and the facts file even if nothing changed (repairing
// drift; routes are always compared with the kernel's).
func (c *Controller) Resync() {
	c.facts, c.masq, c.masqGone = nil, nil, false
}
