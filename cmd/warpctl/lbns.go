package main

import (
	"flag"
	"fmt"
	"net/netip"
	"strings"

	"github.com/warpnet/warpnet/bpf/nodeport"
)

// The north-south load balancer's views (bpf/nodeport): what warpd
// --lb-attach programmed for clients outside the cluster, read-only.

func (f pinFlags) openNodeport() (*nodeport.LB, error) {
	lb, err := nodeport.OpenReadOnly(*f.root)
	if err != nil {
		return nil, openErr("north-south load balancer", "is warpd running with --lb-attach and that --bpffs-root?", *f.root, err)
	}
	return lb, nil
}

// nsList is lbList for the north-south load balancer.
func nsList(name, short, args string, header []string, extra func(*flag.FlagSet), read func(*nodeport.LB) (v any, rows [][]string, err error)) *command {
	var f pinFlags
	return &command{
		name:  name,
		args:  args + "[--bpffs-root DIR] [--json]",
		short: short,
		flags: func(fs *flag.FlagSet) {
			f = addPinFlags(fs)
			if extra != nil {
				extra(fs)
			}
		},
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			lb, err := f.openNodeport()
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

func joinAddrs(aps []netip.AddrPort) string {
	var s []string
	for _, ap := range aps {
		s = append(s, ap.String())
	}
	if len(s) == 0 {
		return "(none: dropped)"
	}
	return strings.Join(s, ",")
}

type externalView struct {
	nodeport.Service
	Counters map[string]nodeport.Counter `json:"counters"`
}

func lbExternalCommand() *command {
	return nsList("external", "list north-south services (NodePorts, ExternalIPs, LoadBalancer IPs) with backends, mode and counters", "",
		[]string{"SERVICE", "PROTO", "MODE", "FRONTENDS", "BACKENDS", "COUNTERS (packets)"}, nil,
		func(lb *nodeport.LB) (any, [][]string, error) {
			svcs, err := lb.Services()
			if err != nil {
				return nil, nil, err
			}
			stats, err := lb.Stats()
			if err != nil {
				return nil, nil, err
			}
			views := []externalView{}
			var rows [][]string
			for _, s := range svcs {
				v := externalView{Service: s, Counters: map[string]nodeport.Counter{}}
				var counts []string
				for _, st := range stats {
					if st.Service == s.Key() {
						v.Counters[st.Verdict.String()] = st.Counter
						counts = append(counts, fmt.Sprintf("%s=%d", st.Verdict, st.Packets))
					}
				}
				mode := "snat"
				if s.DSR {
					mode = "dsr"
				}
				if s.Local {
					mode += ",local"
				}
				if s.Random {
					mode += ",random"
				}
				views = append(views, v)
				rows = append(rows, []string{s.Key().String(), s.Proto.String(), mode, joinAddrs(s.Frontends), joinAddrs(s.Backends), orDash(strings.Join(counts, " "))})
			}
			return views, rows, nil
		})
}

func lbMaglevCommand() *command {
	var id *uint
	var v6 *bool
	return nsList("maglev", "show a north-south service's Maglev table: slots per backend, and the first slots", "--id N [--ipv6] ",
		[]string{"BACKEND", "SLOTS", "SHARE"},
		func(fs *flag.FlagSet) {
			id = fs.Uint("id", 0, "the service's ID (warpctl lb external)")
			v6 = fs.Bool("ipv6", false, "the service's IPv6 table")
		},
		func(lb *nodeport.LB) (any, [][]string, error) {
			if *id == 0 {
				return nil, nil, usagef("--id is required (see warpctl lb external)")
			}
			table, err := lb.Table(nodeport.ServiceKey{ID: uint32(*id), IPv6: *v6})
			if err != nil {
				return nil, nil, err
			}
			count := map[netip.AddrPort]int{}
			var order []netip.AddrPort
			for _, b := range table {
				if count[b] == 0 {
					order = append(order, b)
				}
				count[b]++
			}
			var rows [][]string
			for _, b := range nodeport.SortBackends(order) {
				rows = append(rows, []string{b.String(), fmt.Sprint(count[b]), fmt.Sprintf("%.1f%%", 100*float64(count[b])/float64(len(table)))})
			}
			return table, rows, nil
		})
}

func lbConnsCommand() *command {
	return nsList("conns", "show the north-south connection table (both sides of each flow)", "",
		[]string{"PROTO", "SIDE", "SRC", "DST", "TO", "SERVICE", "STATE", "FLAGS", "IDLE"}, nil,
		func(lb *nodeport.LB) (any, [][]string, error) {
			conns, err := lb.Conns()
			if err != nil {
				return nil, nil, err
			}
			if conns == nil {
				conns = []nodeport.Conn{}
			}
			var rows [][]string
			for _, c := range conns {
				side, to := "client", c.Backend.String()
				if c.SNATed && !c.Reply {
					to += " as " + c.SNAT.String()
				}
				if c.Reply {
					side, to = "reply", c.Frontend.String()+" to "+c.Client.String()
				}
				var flags []string
				for _, f := range []struct {
					on   bool
					name string
				}{{c.SNATed, "snat"}, {c.DSR, "dsr"}, {c.Local, "local"}, {c.Tunnel, "tunnel"}, {c.OnBackendNode, "backend-node"}} {
					if f.on {
						flags = append(flags, f.name)
					}
				}
				rows = append(rows, []string{c.Proto.String(), side, c.Src.String(), c.Dst.String(), to, fmt.Sprint(c.ServiceID), c.State,
					orDash(strings.Join(flags, ",")), c.Idle.Round(1e9).String()})
			}
			return conns, rows, nil
		})
}
