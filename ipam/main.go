// Command warp-ipam is warpnet's IPAM plugin: host-local compatible
// configuration, fixed addresses, conflict detection and constant-cost
// allocation. Runtimes call it through the CNI protocol; see README.md.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/internal/buildinfo"
	"github.com/warpnet/warpnet/ipam/plugin"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    plugin.Add,
		Del:    plugin.Del,
		Check:  plugin.Check,
		Status: plugin.Status,
		GC:     plugin.GC,
	}, version.All, buildinfo.About("warp-ipam", "IPAM plugin: fixed underlay addresses, conflict detection, host-local compatible config"))
}
