package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/warpnet/warpnet/daemon/nodenet"
	"github.com/warpnet/warpnet/daemon/status"
)

// runNetwork keeps node networking in step with the cluster's Nodes until
// ctx ends: at every change of a Node's pod CIDRs or addresses (and of the
// set of nodes), and at every resync, which also rewrites the masquerade
// table and the facts file to repair drift. It runs beside the services
// loop, so a long services sync never delays a new node's routes.
func (a *Agent) runNetwork(ctx context.Context) {
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	var last []status.Peer
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.src.NodeChanges():
		case <-resync.C:
			a.net.Resync()
		}
		nodes, ok := a.src.Nodes()
		if !ok {
			continue
		}
		start := time.Now()
		st, err := a.net.Sync(nodes)
		a.setTunnelPeers(st.Peers)
		dur := time.Since(start)
		peers := peersOf(st)
		a.metrics.networkSynced(peers, err)
		a.mu.Lock()
		prev := a.network.Waiting
		a.network.Waiting = st.Waiting
		a.network.Peers = peers
		a.network.MTU = st.Facts.MTU
		a.network.PodCIDRs = prefixStrings(st.Facts.PodCIDRs)
		a.network.LastSync = &status.Sync{At: start, Duration: dur, Upserted: st.Added, Deleted: st.Removed}
		if err != nil {
			a.network.LastSync.Error = err.Error()
		}
		a.mu.Unlock()
		switch {
		case st.Waiting != "":
			if st.Waiting != prev {
				a.log.Warn("node networking waits", "why", st.Waiting)
			}
			continue
		case err != nil:
			a.log.Error("node networking failed in part; retried at the next change or resync", "err", err, "resync", a.cfg.Resync.String())
		}
		if !slices.EqualFunc(peers, last, func(x, y status.Peer) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) || st.Added+st.Removed > 0 {
			a.log.Info("node networking synced", "peers", describePeers(peers), "podCIDRs", a.network.PodCIDRs,
				"podMTU", st.Facts.MTU, "added", st.Added, "removed", st.Removed, "duration", dur.String())
			last = peers
		}
	}
}

// peersOf turns the routing status into the report's peers.
func peersOf(st nodenet.Status) []status.Peer {
	var out []status.Peer
	for _, p := range st.Peers {
		sp := status.Peer{Name: p.Name, Path: "native", PodCIDRs: prefixStrings(p.PodCIDRs), Problem: p.Problem}
		if p.Via.IsValid() {
			sp.Via = p.Via.String()
		}
		switch {
		case p.Tunnel:
			sp.Path = "tunnel"
		case !p.Via.IsValid():
			sp.Path = "unreachable"
		}
		out = append(out, sp)
	}
	return out
}

func describePeers(peers []status.Peer) string {
	var parts []string
	for _, p := range peers {
		parts = append(parts, p.Name+"="+p.Path)
	}
	return strings.Join(parts, " ")
}

func prefixStrings(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}
