// Command warpctl is warpnet's operator and developer tool.
//
//	warpctl lb services|affinity|revnat|hooks [--bpffs-root DIR] [--json]
//	warpctl podpath endpoints|nexthops [--bpffs-root DIR] [--json]
//	warpctl warpd status [--addr HOST:PORT] [--json]
//	warpctl ipam pools [--kubeconfig FILE] [--json]
//	warpctl ipam allocations [--pool NAME] [--node NAME] [--namespace NS] [--kubeconfig FILE] [--json]
//	warpctl sim sriov create --netns /run/netns/NODE --dir DIR --vfs 4 [--dpdk 3] [--pf sim0] [--bus 0000:3b]
//	warpctl sim sriov show --dir DIR [--json | --env]
//	warpctl sim sriov destroy --dir DIR
//
// Every command and subcommand answers --help.
package main

import (
	"os"
)

func main() {
	os.Exit(execute(rootCommand(), os.Args[1:], os.Stdout, os.Stderr))
}

// rootCommand returns the command tree.
func rootCommand() *command {
	return &command{
		name:  "warpctl",
		short: "warpnet control tool",
		long: `warpctl inspects a node's warpnet (the socket load balancer's and the pod
datapath's maps, read-only; the node daemon's status), shows warp-ipam's cluster-wide
pools and allocations, and runs the simulators its tests and demos use.

Exit status: 0 on success, 1 when a command fails, 2 for a usage error.`,
		subs: []*command{lbCommand(), podpathCommand(), warpdCommand(), ipamCommand(), simCommand()},
	}
}

func simCommand() *command {
	return &command{
		name:  "sim",
		short: "hardware simulators for machines without the hardware",
		long: `Simulators build, inside a simulated node (a network namespace), devices this
machine does not have, as honestly as the kernel allows, so that plugins run
against them unchanged.`,
		subs: []*command{sriovCommand()},
	}
}
