package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/bpf/servicelb"
)

// lbCommand inspects the socket load balancer warpd keeps in the pinned
// maps: it reads the pins directly, so it works while warpd is down.
func lbCommand() *command {
	return &command{
		name:  "lb",
		short: "inspect the load balancers: socket (services, affinity, revnat, hooks) and north-south (external, maglev, conns)",
		long: `Reads the pinned maps of the socket load balancer and of the north-south load
balancer (warpd --lb-attach: NodePorts, ExternalIPs, LoadBalancer IPs for clients outside
the cluster) straight from bpffs, so it also works while warpd is down or restarting. The
maps are opened read-only: nothing is loaded, pinned, attached or written, whichever build
pinned them.`,
		subs: []*command{lbServicesCommand(), lbAffinityCommand(), lbRevNATCommand(), lbHooksCommand(),
			lbExternalCommand(), lbMaglevCommand(), lbConnsCommand()},
	}
}

// pinFlags are the flags of every read-only view of pinned maps.
type pinFlags struct {
	root   *string
	asJSON *bool
}

func addPinFlags(fs *flag.FlagSet) pinFlags {
	return pinFlags{
		root:   fs.String("bpffs-root", pinset.DefaultRoot, "bpffs directory warpnet pins under (warpd's --bpffs-root, warp-veth's bpffsRoot)"),
		asJSON: fs.Bool("json", false, "print JSON instead of a table"),
	}
}

// openErr explains a failed read-only open.
func openErr(what, hint string, root string, err error) error {
	if errors.Is(err, pinset.ErrNotPinned) {
		return fmt.Errorf("no %s is pinned under %s (%s)", what, root, hint)
	}
	return fmt.Errorf("open the %s pinned under %s: %w", what, root, err)
}

func (f pinFlags) openLB() (*servicelb.LB, error) {
	lb, err := servicelb.OpenReadOnly(*f.root)
	if err != nil {
		return nil, openErr("load balancer", "is warpd running with that --bpffs-root?", *f.root, err)
	}
	return lb, nil
}

// printList prints v as JSON (--json) or the rows as a table under header.
func (f pinFlags) printList(io *cmdIO, v any, header []string, rows [][]string) error {
	if *f.asJSON {
		return json.NewEncoder(io.out).Encode(v)
	}
	tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func addrPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

type serviceView struct {
	Frontend        string   `json:"frontend"`
	Protocol        string   `json:"protocol"`
	ID              uint32   `json:"id"`
	AffinityTimeout string   `json:"affinityTimeout,omitempty"`
	Backends        []string `json:"backends"`
}

func lbServicesCommand() *command {
	var f pinFlags
	var only *string
	return &command{
		name:  "services",
		args:  "[--frontend ADDR:PORT] [--bpffs-root DIR] [--json]",
		short: "list services (frontends) with their backends and flags, or show one",
		flags: func(fs *flag.FlagSet) {
			f = addPinFlags(fs)
			only = fs.String("frontend", "", "show only this frontend, e.g. 10.96.0.10:80")
		},
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			var want netip.AddrPort
			if *only != "" {
				ap, err := netip.ParseAddrPort(*only)
				if err != nil {
					return usagef("--frontend %q is not ADDR:PORT", *only)
				}
				want = ap
			}
			lb, err := f.openLB()
			if err != nil {
				return err
			}
			defer lb.Close()
			svcs, err := lb.Services()
			if err != nil {
				return err
			}
			var views []serviceView
			for _, s := range svcs {
				if want.IsValid() && (s.Addr != want.Addr() || s.Port != want.Port()) {
					continue
				}
				v := serviceView{Frontend: addrPort(s.Addr, s.Port), Protocol: s.Proto.String(), ID: s.ID, Backends: []string{}}
				if s.AffinityTimeout > 0 {
					v.AffinityTimeout = s.AffinityTimeout.String()
				}
				for _, b := range s.Backends {
					v.Backends = append(v.Backends, addrPort(b.Addr, b.Port))
				}
				sort.Strings(v.Backends)
				views = append(views, v)
			}
			sort.Slice(views, func(i, j int) bool { return views[i].Frontend+views[i].Protocol < views[j].Frontend+views[j].Protocol })
			if want.IsValid() && len(views) == 0 {
				return fmt.Errorf("no service with frontend %s", want)
			}
			var rows [][]string
			for _, v := range views {
				backends := strings.Join(v.Backends, ",")
				if backends == "" {
					backends = "(none: connections are refused)"
				}
				rows = append(rows, []string{v.Frontend, v.Protocol, fmt.Sprint(v.ID), orDash(v.AffinityTimeout), backends})
			}
			return f.printList(io, views, []string{"FRONTEND", "PROTO", "ID", "AFFINITY", "BACKENDS"}, rows)
		},
	}
}

// lbList is a read-only leaf: it opens the pinned load balancer, reads
// something, and prints it as JSON (--json) or as a table of header and rows.
func lbList(name, short string, header []string, read func(*servicelb.LB) (v any, rows [][]string, err error)) *command {
	var f pinFlags
	return &command{
		name:  name,
		args:  "[--bpffs-root DIR] [--json]",
		short: short,
		flags: func(fs *flag.FlagSet) { f = addPinFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			lb, err := f.openLB()
			if err != nil {
				return err
			}
			defer lb.Close()
			v, rows, err := read(lb)
			if err != nil {
				return err
			}
			return f.printList(io, v, header, rows)
		},
	}
}

func lbAffinityCommand() *command {
	return lbList("affinity", "show session-affinity entries (client namespace, service, backend)",
		[]string{"NETNS COOKIE", "SERVICE ID", "PROTO", "BACKEND"},
		func(lb *servicelb.LB) (any, [][]string, error) {
			entries, err := lb.Affinity()
			var rows [][]string
			for _, e := range entries {
				rows = append(rows, []string{fmt.Sprint(e.NetNSCookie), fmt.Sprint(e.ServiceID), e.Proto.String(), addrPort(e.Backend.Addr, e.Backend.Port)})
			}
			if entries == nil {
				entries = []servicelb.AffinityEntry{}
			}
			return entries, rows, err
		})
}

func lbRevNATCommand() *command {
	return lbList("revnat", "show reverse-translation entries (socket cookie, service, backend); they live in each socket's own storage, so this walks the sockets of every network namespace of a process or under /run/netns",
		[]string{"SOCKET COOKIE", "FRONTEND", "PROTO", "BACKEND"},
		func(lb *servicelb.LB) (any, [][]string, error) {
			entries, err := lb.RevNAT()
			var rows [][]string
			for _, e := range entries {
				rows = append(rows, []string{fmt.Sprint(e.Cookie), addrPort(e.Frontend.Addr, e.Frontend.Port), e.Frontend.Proto.String(), addrPort(e.Backend.Addr, e.Backend.Port)})
			}
			if entries == nil {
				entries = []servicelb.RevNATEntry{}
			}
			return entries, rows, err
		})
}

func lbHooksCommand() *command {
	return lbList("hooks", "show which cgroups the socket hooks are attached to",
		[]string{"CGROUP", "HOOKS"},
		func(lb *servicelb.LB) (any, [][]string, error) {
			att, err := lb.Attachments()
			var cgs []string
			for cg := range att {
				cgs = append(cgs, cg)
			}
			sort.Strings(cgs)
			var rows [][]string
			for _, cg := range cgs {
				rows = append(rows, []string{cg, strings.Join(att[cg], ",")})
			}
			return att, rows, err
		})
}
