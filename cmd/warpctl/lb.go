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

func lbAffinityCommand() *command {
	var f lbFlags
	return &command{
		name:  "affinity",
		args:  "[--bpffs-root DIR] [--json]",
		short: "show session-affinity entries (client namespace, service, backend)",
		flags: func(fs *flag.FlagSet) { f = addLBFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			lb, err := f.open()
			if err != nil {
				return err
			}
			defer lb.Close()
			entries, err := lb.Affinity()
			if err != nil {
				return err
			}
			if *f.asJSON {
				if entries == nil {
					entries = []bpf.AffinityEntry{}
				}
				return json.NewEncoder(io.out).Encode(entries)
			}
			tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NETNS COOKIE\tSERVICE ID\tPROTO\tBACKEND")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", e.NetNSCookie, e.ServiceID, protoName(e.Proto), addrPort(e.Backend.Addr, e.Backend.Port))
			}
			return tw.Flush()
		},
	}
}

func lbRevNATCommand() *command {
	var f lbFlags
	return &command{
		name:  "revnat",
		args:  "[--bpffs-root DIR] [--json]",
		short: "show reverse-translation entries (socket cookie, service, backend)",
		flags: func(fs *flag.FlagSet) { f = addLBFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			lb, err := f.open()
			if err != nil {
				return err
			}
			defer lb.Close()
			entries, err := lb.RevNAT()
			if err != nil {
				return err
			}
			if *f.asJSON {
				if entries == nil {
					entries = []bpf.RevNATEntry{}
				}
				return json.NewEncoder(io.out).Encode(entries)
			}
			tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SOCKET COOKIE\tFRONTEND\tPROTO\tBACKEND")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", e.Cookie, addrPort(e.Frontend.Addr, e.Frontend.Port), protoName(e.Frontend.Proto), addrPort(e.Backend.Addr, e.Backend.Port))
			}
			return tw.Flush()
		},
	}
}

func lbHooksCommand() *command {
	var f lbFlags
	return &command{
		name:  "hooks",
		args:  "[--bpffs-root DIR] [--json]",
		short: "show which cgroups the socket hooks are attached to",
		flags: func(fs *flag.FlagSet) { f = addLBFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			lb, err := f.open()
			if err != nil {
				return err
			}
			defer lb.Close()
			att, err := lb.Attachments()
			if err != nil {
				return err
			}
			if *f.asJSON {
				return json.NewEncoder(io.out).Encode(att)
			}
			tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CGROUP\tHOOKS")
			var cgs []string
			for cg := range att {
				cgs = append(cgs, cg)
			}
			sort.Strings(cgs)
			for _, cg := range cgs {
				fmt.Fprintf(tw, "%s\t%s\n", cg, strings.Join(att[cg], ","))
			}
			return tw.Flush()
		},
	}
}
