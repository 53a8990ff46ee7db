package agent

import (
	"github.com/warpnet/warpnet/daemon/nodeport"
	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/daemon/services"
)

// The north-south load balancer (daemon/nodeport) beside the socket one:
// kept in this file so that the agent's sync loop stays the socket LB's.

// openNorthSouth opens the north-south load balancer if configured.
func (a *Agent) openNorthSouth() error {
	c := a.cfg.NorthSouth
	if c == nil || c.Attach == nodeport.AttachNone {
		return nil
	}
	cfg := *c
	cfg.BPFFSRoot = a.cfg.BPFFSRoot
	if len(cfg.NodeAddresses) == 0 {
		cfg.NodeAddresses = a.cfg.Node.Addresses
	}
	if n := a.cfg.Network; n != nil && n.Routing.Mode != routing.Native {
		cfg.Tunnel = &n.Routing
	}
	r, err := nodeport.Open(cfg, a.log)
	if err != nil {
		return err
	}
	a.ns = r
	a.log.Info("north-south load balancer loaded", "attach", string(cfg.Attach), "mode", string(cfg.Mode),
		"interfaces", cfg.Interfaces, "maglevSize", cfg.TableSize)
	return nil
}

// syncNorthSouth writes the external frontends into the north-south
// maps as the socket LB's sync does: the frontends that changed only
// (changed, from the tracker), or everything when full (resync, which
// also compares with the maps themselves) or when the reconciler has not
// had a full pass yet.
func (a *Agent) syncNorthSouth(changed []services.Frontend, full bool) {
	if a.ns == nil {
		return
	}
	if full {
		if n, err := a.ns.Resync(); err != nil {
			a.log.Warn("north-south: collecting stale entries failed", "err", err)
		} else if n > 0 {
			a.log.Info("north-south: collected stale entries", "entries", n)
		}
	}
	var st nodeport.Stats
	var err error
	if full || a.ns.NeedsFull() {
		st, err = a.ns.Sync(a.tracker.Entries())
	} else {
		st, err = a.ns.Apply(changed, a.tracker.Desired)
	}
	switch {
	case err != nil:
		a.log.Error("north-south sync failed in part; retried at the next change or resync", "err", err, "upserted", st.Upserted, "deleted", st.Deleted)
	case st.Upserted+st.Deleted > 0:
		a.log.Info("north-south synced", "services", st.Services, "compared", st.Compared, "upserted", st.Upserted, "deleted", st.Deleted,
			"full", full, "interfaces", len(st.Interfaces))
	}
}

// setTunnelPeers tells the north-south programs the peers behind the
// VXLAN tunnel, so that they encapsulate to remote backends themselves.
func (a *Agent) setTunnelPeers(peers []routing.Peer) {
	if a.ns == nil {
		return
	}
	if err := a.ns.SetTunnelPeers(peers); err != nil {
		a.log.Error("north-south tunnel peers", "err", err)
	}
}

func (a *Agent) closeNorthSouth() {
	if a.ns != nil {
		a.ns.Close()
	}
}
