// Command warp-veth is warpnet's CNI plugin for ordinary pods: a routed veth
// pair per pod, with an XDP or tc datapath on the host end. See README.md.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/internal/buildinfo"
	"github.com/warpnet/warpnet/plugins/veth/plugin"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    plugin.Add,
		Del:    plugin.Del,
		Check:  plugin.Check,
		Status: plugin.Status,
		GC:     plugin.GC,
	}, version.All, buildinfo.About("warp-veth", "CNI plugin: routed veth pods with an XDP or tc (bpf_redirect_peer/neigh) datapath on the host end"))
}
