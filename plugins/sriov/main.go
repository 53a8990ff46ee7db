// Command warp-sriov is warpnet's SR-IOV CNI plugin: it moves a VF into the
// pod (or hands a DPDK-bound VF over by PCI address) with its PF-side
// settings, and restores everything on DEL. See README.md.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/warpnet/warpnet/internal/buildinfo"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
	"github.com/warpnet/warpnet/plugins/sriov/plugin"
)

func main() {
	sysfs.UseEnv() // the SR-IOV simulator's sysfs tree, when the environment names one
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    plugin.Add,
		Del:    plugin.Del,
		Check:  plugin.Check,
		Status: plugin.Status,
		GC:     plugin.GC,
	}, version.All, buildinfo.About("warp-sriov", "CNI plugin: SR-IOV VFs in pods (netdev or DPDK mode)"))
}
