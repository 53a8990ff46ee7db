package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/warpnet/warpnet/bpf"
)

// lbCommand inspects the socket load balancer warpd keeps in the pinned
// maps: it reads the pins directly, so it works while warpd is down.
func lbCommand() *command {
	return &command{
		name:  "lb",
		short: "inspect the socket load balancer: services, affinity, reverse translation, hooks",
		long: `Reads the pinned maps of the socket load balancer (what warpd programmed) straight
from bpffs, so it also works while warpd is down or restarting.`,
		subs: []*command{lbServicesCommand(), lbAffinityCommand(), lbRevNATCommand(), lbHooksCommand()},
	}
}

type lbFlags struct {
	root   *string
	asJSON *bool
}

func addLBFlags(fs *flag.FlagSet) lbFlags {
	return lbFlags{
		root:   fs.String("bpffs-root", bpf.DefaultPinDir, "bpffs directory warpd pins under (its --bpffs-root)"),
		asJSON: fs.Bool("json", false, "print JSON instead of a table"),
	}
}

func (f lbFlags) open() (*bpf.LB, error) {
	lb, err := bpf.OpenLB(*f.root, bpf.LBSizes{})
	if err != nil {
		return nil, fmt.Errorf("open the load balancer pinned under %s (is warpd running with that --bpffs-root?): %w", *f.root, err)
	}
	return lb, nil
}

func protoName(p bpf.Protocol) string {
	if p == bpf.UDP {
		return "udp"
	}
	return "tcp"
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
	var f lbFlags
	var only *string
	return &command{
		name:  "services",
		args:  "[--frontend ADDR:PORT] [--bpffs-root DIR] [--json]",
		short: "list services (frontends) with their backends and flags, or show one",
		flags: func(fs *flag.FlagSet) {
			f = addLBFlags(fs)
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
			lb, err := f.open()
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
				v := serviceView{Frontend: addrPort(s.Addr, s.Port), Protocol: protoName(s.Proto), ID: s.ID, Backends: []string{}}
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
			if *f.asJSON {
				return json.NewEncoder(io.out).Encode(views)
			}
			tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FRONTEND\tPROTO\tID\tAFFINITY\tBACKENDS")
			for _, v := range views {
				backends := strings.Join(v.Backends, ",")
				if backends == "" {
					backends = "(none: connections are refused)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", v.Frontend, v.Protocol, v.ID, orDash(v.AffinityTimeout), backends)
			}
			return tw.Flush()
		},
	}
}

// lbList is a read-only leaf: it opens the pinned load balancer, reads
// something, and prints it as JSON (--json) or as a table of header and rows.
func lbList(name, short string, header []string, read func(*bpf.LB) (v any, rows [][]string, err error)) *command {
	var f lbFlags
	return &command{
		name:  name,
		args:  "[--bpffs-root DIR] [--json]",
		short: short,
		flags: func(fs *flag.FlagSet) { f = addLBFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			lb, err := f.open()
			if err != nil {
				return err
			}
			defer lb.Close()
			v, rows, err := read(lb)
			if err != nil {
				return err
			}
			if *f.asJSON {
				return json.NewEncoder(io.out).Encode(v)
			}
			tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, strings.Join(header, "\t"))
			for _, r := range rows {
				fmt.Fprintln(tw, strings.Join(r, "\t"))
			}
			return tw.Flush()
		},
	}
}

func lbAffinityCommand() *command {
	return lbList("affinity", "show session-affinity entries (client namespace, service, backend)",
		[]string{"NETNS COOKIE", "SERVICE ID", "PROTO", "BACKEND"},
		func(lb *bpf.LB) (any, [][]string, error) {
			entries, err := lb.Affinity()
			var rows [][]string
			for _, e := range entries {
				rows = append(rows, []string{fmt.Sprint(e.NetNSCookie), fmt.Sprint(e.ServiceID), protoName(e.Proto), addrPort(e.Backend.Addr, e.Backend.Port)})
			}
			if entries == nil {
				entries = []bpf.AffinityEntry{}
			}
			return entries, rows, err
		})
}

func lbRevNATCommand() *command {
	return lbList("revnat", "show reverse-translation entries (socket cookie, service, backend)",
		[]string{"SOCKET COOKIE", "FRONTEND", "PROTO", "BACKEND"},
		func(lb *bpf.LB) (any, [][]string, error) {
			entries, err := lb.RevNAT()
			var rows [][]string
			for _, e := range entries {
				rows = append(rows, []string{fmt.Sprint(e.Cookie), addrPort(e.Frontend.Addr, e.Frontend.Port), protoName(e.Frontend.Proto), addrPort(e.Backend.Addr, e.Backend.Port)})
			}
			if entries == nil {
				entries = []bpf.RevNATEntry{}
			}
			return entries, rows, err
		})
}

func lbHooksCommand() *command {
	return lbList("hooks", "show which cgroups the socket hooks are attached to",
		[]string{"CGROUP", "HOOKS"},
		func(lb *bpf.LB) (any, [][]string, error) {
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
