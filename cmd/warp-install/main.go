// Command warp-install installs warpnet onto a node: the init container of
// the warpnet DaemonSet (no shell needed in the image), and the engine of
// install/install.sh for manual installs. See install/installer.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/warpnet/warpnet/install/installer"
	"github.com/warpnet/warpnet/internal/buildinfo"
)

func main() {
	o := installer.Options{Log: os.Stdout}
	fs := flag.NewFlagSet("warp-install", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `warp-install %s: install warpnet's CNI plugins and network configuration on a node.

Usage: warp-install [flags]

Copies warp-ipam, warp-veth and warp-sriov (and loopback, where the node has none) into
the CNI bin directory, writes the conflist into the CNI conf directory when it changed
(not at all when Multus owns the primary network, see --primary), writes warp-ipam's
kubeconfig from the pod's service account, and checks that the runtime can load what
was written. Every file is replaced atomically; running it again changes nothing.
As the DaemonSet's init container the node's directories are mounted under /host.

Flags:
`, buildinfo.Version)
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\nExit status: 0 installed (or already up to date), 1 failed (the message says what to fix), 2 bad flags.\n")
	}
	self, _ := os.Executable()
	fs.StringVar(&o.SrcDir, "src", filepath.Dir(self), "directory holding the warpnet binaries")
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	fs.StringVar(&o.Conflist, "conflist", "", "network configuration list to install (e.g. the chart's ConfigMap); empty: plugins only")
	fs.StringVar(&o.ConflistName, "conflist-name", "", "file name in --cni-conf-dir (default: the base name of --conflist)")
	fs.StringVar(&o.Primary, "primary", installer.PrimaryAuto, "write the conflist as the primary network: auto (unless Multus's config comes first), yes, or no (and remove ours)")
	fs.StringVar(&o.Kubeconfig, "ipam-kubeconfig", "", "where to write warp-ipam's kubeconfig, built from the service account; empty: none")
	fs.StringVar(&o.ServiceAccountDir, "service-account-dir", "/var/run/secrets/kubernetes.io/serviceaccount", "the pod's service account token and ca.crt")
	fs.StringVar(&o.KubeServer, "kube-server", "", "API server URL for that kubeconfig (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "warp-install: unexpected argument %q (see --help)\n", fs.Arg(0))
		os.Exit(2)
	}
	r, err := installer.Install(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warp-install: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("warp-install: done: %d written, %d unchanged, %d removed\n", len(r.Installed), len(r.Unchanged), len(r.Removed))
}
