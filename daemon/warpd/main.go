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
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	bpfnodeport "github.com/warpnet/warpnet/bpf/nodeport"
	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/agent"
	"github.com/warpnet/warpnet/daemon/ipamgc"
	"github.com/warpnet/warpnet/daemon/nodenet"
	"github.com/warpnet/warpnet/daemon/nodeport"
	"github.com/warpnet/warpnet/daemon/routing"
	"github.com/warpnet/warpnet/daemon/services"
	"github.com/warpnet/warpnet/internal/buildinfo"
	"github.com/warpnet/warpnet/internal/kubeconfig"
	"github.com/warpnet/warpnet/internal/nodefacts"
	"github.com/warpnet/warpnet/ipam/kube"
)

func main() {
	cfg := agent.Config{}
	var nodeIPs string
	fs := flag.NewFlagSet("warpd", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `warpd %s: warpnet's node daemon: socket-level eBPF Service load
balancing, and the node's part of the cluster network.

Usage: warpd [--kubeconfig FILE | --services-file FILE] [flags]

It attaches connect/sendmsg/recvmsg/getpeername hooks to the node's cgroup v2 and keeps
the pinned service maps in sync with the services source. From the cluster's Nodes it
routes every other node's pod CIDRs (natively where the peer is on a directly connected
subnet, through a VXLAN tunnel otherwise; --routing), masquerades pod egress to
addresses outside the cluster (--masquerade), and publishes the node's pod CIDRs and pod
MTU for the CNI plugins (--node-facts). With --ipam-gc it also releases warp-ipam
addresses leaked in the API server (one warpd per cluster at a time). With --lb-attach it
also serves NodePorts, local ExternalIPs and LoadBalancer IPs to clients outside the
cluster, per packet in XDP/tc without netfilter (Maglev, own connection tracking, SNAT or
DSR), and answers healthCheckNodePorts like kube-proxy. Maps, programs and links stay
pinned when warpd stops, so Services keep working while it is down or restarting; a new
warpd adopts them and changes only what is stale.

An object warpd cannot use as written (an invalid address, a duplicate port, ...) is a
broken edit: its last valid version stays in force, and it is logged, counted in
warpd_rejected_objects and listed by 'warpctl warpd status'. In file mode an empty or
unparsable file keeps the last good state too; to remove every service, write an empty
List ("apiVersion: v1", "kind: List", "items: []").

warpd collects garbage when its heap has grown by half (GOGC=50: its heap is mostly
long-lived caches) unless GOGC in the environment says otherwise; GOMEMLIMIT works as usual.

--listen serves /healthz (200 once synced, while the source can be followed and the last
sync succeeded), /metrics (Prometheus) and /status (JSON, read by 'warpctl warpd status').

Flags:
`, buildinfo.Version)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for the API server (default: in-cluster configuration)")
	fs.StringVar(&cfg.ServicesFile, "services-file", "", "standalone mode: YAML file of v1 Services, discovery.k8s.io/v1 EndpointSlices and v1 Nodes instead of the API server (reloaded when changed and stable; empty or broken keeps the last good state)")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "", "cgroup v2 directory whose sockets are translated (default: the cgroup2 mount)")
	fs.StringVar(&cfg.BPFFSRoot, "bpffs-root", pinset.DefaultRoot, "bpffs directory for pinned maps, programs and links")
	fs.StringVar(&cfg.Node.Name, "node-name", agent.Hostname(), "this node's name, for internalTrafficPolicy and externalTrafficPolicy Local ($NODE_NAME, else the hostname)")
	fs.StringVar(&cfg.Node.Zone, "node-zone", "", "this node's zone, for topology hints")
	fs.StringVar(&nodeIPs, "node-ip", "", "comma-separated node addresses for NodePorts and local ExternalIPs (default: the namespace's global addresses)")
	fs.BoolVar(&cfg.HostOnly, "host-only", false, "translate only sockets in the host network namespace (pods keep the ClusterIP on the wire, for service meshes)")
	fs.BoolVar(&cfg.DestroyTCP, "destroy-tcp", false, "also destroy TCP sockets still connected to a removed backend (connected UDP sockets always are)")
	fs.DurationVar(&cfg.Poll, "poll", time.Second, "how often the services file is checked for changes (file mode)")
	fs.DurationVar(&cfg.MinSync, "min-sync-interval", 100*time.Millisecond, "least time between two syncs of the maps: changes that come sooner wait and are applied together")
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "full resync interval, repairing drift in the maps")
	fs.StringVar(&cfg.ListenAddr, "listen", "127.0.0.1:9090", "address for /healthz, /metrics and /status (empty: none)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "also serve Go's profiles on --listen at /debug/pprof/ (heap, CPU, goroutines; e.g. go tool pprof http://127.0.0.1:9090/debug/pprof/heap)")
	fs.IntVar(&cfg.Sizes.Services, "map-services", 0, "capacity in frontends, fixed (0: sized from the cluster: the pinned map's or 65536, grown when the cluster needs more)")
	fs.IntVar(&cfg.Sizes.Backends, "map-backends", 0, "capacity in backend entries summed over frontends, fixed (0: sized from the cluster: the pinned map's or 65536, grown when the cluster needs more)")
	obsoleteRevNAT := fs.Int("map-revnat", 0, "obsolete, ignored: socket translations live in socket-local storage, freed with each socket")
	fs.IntVar(&cfg.Sizes.Affinity, "map-affinity", 0, "capacity in session-affinity entries (0: the pinned map's, or 65536)")
	net := nodenet.Config{}
	routingMode := fs.String("routing", string(routing.Auto), "how other nodes' pods are reached: native (routes via the peer; peers must share an L2 subnet), vxlan (a tunnel to every peer), auto (native where possible, else the tunnel), or none (node networking is someone else's)")
	fs.IntVar(&net.Routing.Port, "vxlan-port", routing.DefaultPort, "UDP port of the VXLAN tunnel (the same on every node)")
	fs.IntVar(&net.Routing.VNI, "vxlan-vni", routing.DefaultVNI, "VXLAN network identifier (the same on every node)")
	fs.BoolVar(&net.Masquerade, "masquerade", true, "masquerade traffic from pod CIDRs to addresses outside the cluster's pod and service CIDRs (nftables table inet warpnet)")
	clusterCIDRs := fs.String("cluster-cidr", "", "comma-separated pod CIDRs of the whole cluster, masqueraded like the nodes' spec.podCIDRs (which always are)")
	serviceCIDRs := fs.String("service-cidr", "", "comma-separated service CIDRs: never masquerade destinations")
	noMasq := fs.String("no-masquerade-cidrs", "", "comma-separated networks traffic from or to which keeps pod addresses (routed underlays, SR-IOV VLANs)")
	fs.IntVar(&net.MTU, "mtu", 0, "pod MTU to publish (0: the uplink's, less the VXLAN overhead unless --routing native)")
	fs.StringVar(&net.FactsPath, "node-facts", nodefacts.DefaultPath, "where to publish the node's pod CIDRs and pod MTU for the CNI plugins")
	ipamGC := ipamgc.Config{}
	runIPAMGC := fs.Bool("ipam-gc", false, "collect warp-ipam addresses leaked in the API server (kubernetes store): one warpd per cluster does it, elected with a Lease")
	fs.DurationVar(&ipamGC.Grace, "ipam-gc-grace", ipamgc.DefaultGrace, "how long an address must look leaked (its pod gone, or its StatefulSet gone or scaled below the ordinal) before it is released")
	fs.DurationVar(&ipamGC.Interval, "ipam-gc-interval", ipamgc.DefaultInterval, "time between sweeps over every IPAllocation")
	fs.StringVar(&cfg.IPAMKubeconfig, "ipam-kubeconfig", "", "warp-ipam's kubeconfig, written by warp-install: warpd keeps its token the pod's current service account token, which the kubelet rotates (empty: not kept)")
	fs.StringVar(&cfg.PodFacts, "pod-facts", "", "directory where the pods of this node are published for warp-ipam's kubernetes store, so that its ADDs need not read the pod from the API server; warp-ipam looks in "+kube.DefaultPodFactsDir+" (API server mode; empty: not published)")
	fs.DurationVar(&cfg.TokenCheck, "ipam-token-check", agent.DefaultTokenCheck, "how often --ipam-kubeconfig is compared with the service account token")
	fs.StringVar(&cfg.ServiceAccountDir, "service-account-dir", kubeconfig.DefaultServiceAccountDir, "the pod's service account (token), for --ipam-kubeconfig")
	fs.StringVar(&ipamGC.LeaseNamespace, "ipam-gc-lease-namespace", ipamgc.DefaultLeaseNamespace, "namespace of the Lease electing the collecting warpd ("+ipamgc.DefaultLeaseName+")")
	ns := nodeport.Config{}
	lbAttach := fs.String("lb-attach", "none", "north-south load balancer for NodePorts, local ExternalIPs and LoadBalancer IPs reached from outside the cluster (replaces kube-proxy's): xdp (native XDP on the external interfaces, tc on the others), tc (tcx only; better for bulk TCP on veth), auto (XDP where the driver has it, except veth), or none")
	lbInterfaces := fs.String("lb-interfaces", "", "comma-separated external interfaces where clients' traffic arrives (default: those holding a node address)")
	lbMode := fs.String("lb-mode", string(nodeport.SNAT), "how external flows reach backends on other nodes: snat (replies return through this node) or dsr (the backend's node answers the client; the service address travels in an IPv4 option / IPv6 destination option); per service: annotation "+services.LBModeAnnotation)
	fs.IntVar(&ns.TableSize, "lb-maglev-size", bpfnodeport.DefaultTableSize, "Maglev table size per service, a prime (the same on every node)")
	fs.IntVar(&ns.Sizes.Conns, "map-lb-conns", 0, "capacity of the north-south connection table (0: the pinned map's, or 131072; a flow takes two entries)")
	fs.Parse(os.Args[1:])

	if cfg.Resync <= 0 || cfg.Poll <= 0 || cfg.MinSync < 0 {
		fmt.Fprintln(os.Stderr, "warpd: --resync and --poll must be positive durations, e.g. 30s, --min-sync-interval not negative")
		os.Exit(2)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"map-services", cfg.Sizes.Services}, {"map-backends", cfg.Sizes.Backends}, {"map-affinity", cfg.Sizes.Affinity}} {
		if f.v < 0 || f.v > servicelb.MaxSize {
			fmt.Fprintf(os.Stderr, "warpd: --%s=%d: want 0 (sized from the cluster, or the pinned map's) or 1 to %d\n", f.name, f.v, servicelb.MaxSize)
			os.Exit(2)
		}
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if *obsoleteRevNAT != 0 {
		log.Warn("--map-revnat is obsolete and ignored: socket translations live in socket-local storage, freed with each socket; drop the flag")
	}
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
	if *routingMode != "none" {
		mode, err := routing.ParseMode(*routingMode)
		if err != nil {
			fmt.Fprintf(os.Stderr, "warpd: --routing: %v (or none)\n", err)
			os.Exit(2)
		}
		net.Routing.Mode, net.Routing.Self = mode, cfg.Node.Name
		for _, f := range []struct {
			name string
			val  string
			dst  *[]netip.Prefix
		}{{"cluster-cidr", *clusterCIDRs, &net.ClusterCIDRs}, {"service-cidr", *serviceCIDRs, &net.ServiceCIDRs}, {"no-masquerade-cidrs", *noMasq, &net.NoMasquerade}} {
			ps, err := parseCIDRs(f.val)
			if err != nil {
				fmt.Fprintf(os.Stderr, "warpd: --%s: %v\n", f.name, err)
				os.Exit(2)
			}
			*f.dst = ps
		}
		cfg.Network = &net
	}
	if *lbAttach != string(nodeport.AttachNone) {
		var err error
		if ns.Attach, err = nodeport.ParseAttach(*lbAttach); err != nil {
			fmt.Fprintf(os.Stderr, "warpd: --lb-attach: %v\n", err)
			os.Exit(2)
		}
		if ns.Mode, err = nodeport.ParseMode(*lbMode); err != nil {
			fmt.Fprintf(os.Stderr, "warpd: --lb-mode: %v\n", err)
			os.Exit(2)
		}
		if err := bpfnodeport.CheckTableSize(ns.TableSize); err != nil {
			fmt.Fprintf(os.Stderr, "warpd: --lb-maglev-size: %v\n", err)
			os.Exit(2)
		}
		for _, name := range strings.Split(*lbInterfaces, ",") {
			if name = strings.TrimSpace(name); name != "" {
				ns.Interfaces = append(ns.Interfaces, name)
			}
		}
		cfg.NorthSouth = &ns
	}
	if *runIPAMGC {
		if cfg.ServicesFile != "" {
			fmt.Fprintln(os.Stderr, "warpd: --ipam-gc needs the API server (--kubeconfig, or in-cluster), not --services-file")
			os.Exit(2)
		}
		ipamGC.Identity = cfg.Node.Name
		cfg.IPAMGC = &ipamGC
	}
	if os.Getenv("GOGC") == "" {
		// warpd's heap is mostly long-lived caches (the informers' objects,
		// the desired state), and a sync makes little garbage beside them:
		// Go's default (collect when the heap has doubled) would keep the
		// caches' size again as headroom. GOGC in the environment wins.
		debug.SetGCPercent(defaultGCPercent)
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

// defaultGCPercent is warpd's GOGC unless the environment sets one.
const defaultGCPercent = 50

// parseCIDRs parses a comma-separated list of CIDRs.
func parseCIDRs(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Bits() == 0 {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.244.0.0/16", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
