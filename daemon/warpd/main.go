// Command warpd is warpnet's node daemon: socket-level eBPF load balancing
// for Services, attached to the node's cgroup and kept in sync with the
// services source. See README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/daemon/agent"
	"github.com/warpnet/warpnet/internal/buildinfo"
)

func main() {
	cfg := agent.Config{}
	var nodeIPs string
	fs := flag.NewFlagSet("warpd", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `warpd %s: socket-level eBPF Service load balancing for a node.

Usage: warpd [--kubeconfig FILE | --services-file FILE] [flags]

It attaches connect/sendmsg/recvmsg/getpeername hooks to the node's cgroup v2 and keeps
the pinned service maps in sync with the services source. Maps, programs and links stay
pinned when warpd stops, so Services keep working while it is down or restarting; a new
warpd adopts them and changes only what is stale.

An object warpd cannot use as written (an invalid address, a duplicate port, ...) is a
broken edit: its last valid version stays in force, and it is logged, counted in
warpd_rejected_objects and listed by 'warpctl warpd status'. In file mode an empty or
unparsable file keeps the last good state too; to remove every service, write an empty
List ("apiVersion: v1", "kind: List", "items: []").

--listen serves /healthz (200 once synced, while the source can be followed and the last
sync succeeded), /metrics (Prometheus) and /status (JSON, read by 'warpctl warpd status').

Flags:
`, buildinfo.Version)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for the API server (default: in-cluster configuration)")
	fs.StringVar(&cfg.ServicesFile, "services-file", "", "standalone mode: YAML file of v1 Services and discovery.k8s.io/v1 EndpointSlices instead of the API server (reloaded when changed and stable; empty or broken keeps the last good state)")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "", "cgroup v2 directory whose sockets are translated (default: the cgroup2 mount)")
	fs.StringVar(&cfg.BPFFSRoot, "bpffs-root", pinset.DefaultRoot, "bpffs directory for pinned maps, programs and links")
	fs.StringVar(&cfg.Node.Name, "node-name", agent.Hostname(), "this node's name, for internalTrafficPolicy and externalTrafficPolicy Local ($NODE_NAME, else the hostname)")
	fs.StringVar(&cfg.Node.Zone, "node-zone", "", "this node's zone, for topology hints")
	fs.StringVar(&nodeIPs, "node-ip", "", "comma-separated node addresses for NodePorts and local ExternalIPs (default: the namespace's global addresses)")
	fs.BoolVar(&cfg.HostOnly, "host-only", false, "translate only sockets in the host network namespace (pods keep the ClusterIP on the wire, for service meshes)")
	fs.BoolVar(&cfg.DestroyTCP, "destroy-tcp", false, "also destroy TCP sockets still connected to a removed backend (connected UDP sockets always are)")
	fs.DurationVar(&cfg.Poll, "poll", time.Second, "how often the services file is checked for changes (file mode)")
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "full resync interval, repairing drift in the maps")
	fs.StringVar(&cfg.ListenAddr, "listen", "127.0.0.1:9090", "address for /healthz, /metrics and /status (empty: none)")
	fs.IntVar(&cfg.Sizes.Services, "map-services", 0, "capacity in frontends (0: the pinned map's, or 65536; fixed once created)")
	fs.IntVar(&cfg.Sizes.Backends, "map-backends", 0, "capacity in backend entries, summed over frontends (0: the pinned map's, or 65536)")
	fs.IntVar(&cfg.Sizes.RevNAT, "map-revnat", 0, "capacity in remembered socket translations (0: the pinned map's, or 65536)")
	fs.IntVar(&cfg.Sizes.Affinity, "map-affinity", 0, "capacity in session-affinity entries (0: the pinned map's, or 65536)")
	fs.Parse(os.Args[1:])

	if cfg.Resync <= 0 || cfg.Poll <= 0 {
		fmt.Fprintln(os.Stderr, "warpd: --resync and --poll must be positive durations, e.g. 30s")
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	for _, s := range strings.Split(nodeIPs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "warpd: --node-ip: %q is not an IP address\n", s)
			os.Exit(2)
		}
		cfg.Node.Addresses = append(cfg.Node.Addresses, a)
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warpd: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "warpd: %v\n", err)
		os.Exit(1)
	}
}
