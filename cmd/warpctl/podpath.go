package main

import (
	"flag"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/warpnet/warpnet/bpf/podpath"
)

// podpathCommand inspects warp-veth's pod datapath (XDP and tc) through its
// pinned maps, read-only.
func podpathCommand() *command {
	return &command{
		name:  "podpath",
		short: "inspect warp-veth's pod datapath (XDP or tc): registered pods, counters, next-hop destinations",
		long: `Reads the pinned maps of the pod datapath (what warp-veth registered for pods with
"xdp" on, or with "redirect": "tc" or "antiSpoof") straight from bpffs. The maps are
opened read-only: nothing is loaded, pinned, attached or written, whichever build
pinned them.`,
		subs: []*command{podpathEndpointsCommand(), podpathNextHopsCommand()},
	}
}

type podpathCountersView struct {
	PassPackets     uint64 `json:"passPackets"`
	PassBytes       uint64 `json:"passBytes"`
	RedirectPackets uint64 `json:"redirectPackets"`
	RedirectBytes   uint64 `json:"redirectBytes"`
	DropPackets     uint64 `json:"dropPackets"`
	DropBytes       uint64 `json:"dropBytes"`
}

type podpathEndpointView struct {
	Owner       string   `json:"owner"`
	HostIfIndex int      `json:"hostIfIndex"`
	HostIf      string   `json:"hostIf,omitempty"` // in warpctl's network namespace
	PodMAC      string   `json:"podMAC"`
	HostMAC     string   `json:"hostMAC"`
	IPs         []string `json:"ips"`
	// Datapath is the program that serves the pod: "xdp" or "tc".
	Datapath  string `json:"datapath"`
	Redirect  bool   `json:"redirect"`
	AntiSpoof bool   `json:"antiSpoof"`
	// Attached says whether the program runs on the host end, as seen
	// from warpctl's network namespace (absent when it cannot tell).
	Attached *bool                `json:"attached,omitempty"`
	Counters *podpathCountersView `json:"counters,omitempty"` // absent: none registered for the interface
}

func openPodpath(f pinFlags) (*podpath.Datapath, error) {
	dp, err := podpath.OpenReadOnly(*f.root)
	if err != nil {
		return nil, openErr("pod datapath", `has warp-veth run a pod with "xdp", "redirect": "tc" or "antiSpoof", and that bpffsRoot?`, *f.root, err)
	}
	return dp, nil
}

func podpathEndpointsCommand() *command {
	var f pinFlags
	return &command{
		name:  "endpoints",
		args:  "[--bpffs-root DIR] [--json]",
		short: "list the pods the datapath knows, with their program, features and counters (what each pod sent)",
		long: `Counters are summed over CPUs and count what the pod sent: passed to the stack,
redirected (forwarded by the pod's program itself: to another local pod, or with the
tc datapath to a next hop), dropped (spoofed). The host interface name and whether
the program is attached are looked up in warpctl's own network namespace: run it in
the node's.`,
		flags: func(fs *flag.FlagSet) { f = addPinFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			dp, err := openPodpath(f)
			if err != nil {
				return err
			}
			defer dp.Close()
			eps, err := dp.Endpoints()
			if err != nil {
				return err
			}
			slices.SortFunc(eps, func(a, b podpath.Endpoint) int { return a.HostIfIndex - b.HostIfIndex })
			views := []podpathEndpointView{}
			var rows [][]string
			for _, ep := range eps {
				v := podpathEndpointView{
					Owner: fmt.Sprintf("%#x", ep.Owner), HostIfIndex: ep.HostIfIndex,
					PodMAC: ep.PodMAC.String(), HostMAC: ep.HostMAC.String(), IPs: []string{},
					Datapath: ep.Features.Hook.String(), Redirect: ep.Features.Redirect, AntiSpoof: ep.Features.AntiSpoof,
				}
				if ifi, err := net.InterfaceByIndex(ep.HostIfIndex); err == nil {
					v.HostIf = ifi.Name
					var ok bool
					if ep.Features.Hook == podpath.TC {
						ok, err = dp.TCAttached(ep.Owner, ep.HostIfIndex)
					} else {
						ok, err = dp.Attached(ep.HostIfIndex, false)
					}
					if err == nil {
						v.Attached = &ok
					}
				}
				for _, ip := range ep.IPs {
					v.IPs = append(v.IPs, ip.String())
				}
				if c, err := dp.Counters(ep.HostIfIndex); err == nil {
					v.Counters = &podpathCountersView{c.PassPackets, c.PassBytes, c.RedirectPackets, c.RedirectBytes, c.DropPackets, c.DropBytes}
				}
				views = append(views, v)
				var features []string
				if v.Redirect {
					features = append(features, "redirect")
				}
				if v.AntiSpoof {
					features = append(features, "antispoof")
				}
				attached := "?"
				if v.Attached != nil {
					attached = map[bool]string{true: "yes", false: "NO"}[*v.Attached]
				}
				counters := []string{"-", "-", "-"}
				if c := v.Counters; c != nil {
					counters = []string{
						fmt.Sprintf("%d/%d", c.PassPackets, c.PassBytes),
						fmt.Sprintf("%d/%d", c.RedirectPackets, c.RedirectBytes),
						fmt.Sprintf("%d/%d", c.DropPackets, c.DropBytes),
					}
				}
				rows = append(rows, append([]string{
					fmt.Sprintf("%s (%d)", orDash(v.HostIf), v.HostIfIndex), v.Owner, v.PodMAC,
					strings.Join(v.IPs, ","), v.Datapath, attached, orDash(strings.Join(features, ",")),
				}, counters...))
			}
			return f.printList(io, views, []string{"HOST IF", "OWNER", "POD MAC", "IPS", "DATAPATH", "ATTACHED", "FEATURES",
				"PASSED PKTS/BYTES", "REDIRECTED PKTS/BYTES", "DROPPED PKTS/BYTES"}, rows)
		},
	}
}

func podpathNextHopsCommand() *command {
	var f pinFlags
	return &command{
		name:  "nexthops",
		args:  "[--bpffs-root DIR] [--json]",
		short: "list the destinations the tc datapath sends to their route's next hop itself",
		long: `The tc datapath forwards a pod's packet to the next hop of its route (bpf_redirect_neigh)
only for these destinations: the cluster's pod CIDRs as warpd published them in the
node's facts when the pod was added. Traffic to anything else takes the node's stack,
with its netfilter hooks (masquerading, policy).`,
		flags: func(fs *flag.FlagSet) { f = addPinFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			dp, err := openPodpath(f)
			if err != nil {
				return err
			}
			defer dp.Close()
			dsts, err := dp.NeighDsts()
			if err != nil {
				return err
			}
			views := []string{}
			var rows [][]string
			for _, p := range dsts {
				views = append(views, p.String())
				rows = append(rows, []string{p.String()})
			}
			return f.printList(io, views, []string{"DESTINATION"}, rows)
		},
	}
}
