package main

import (
	"flag"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/warpnet/warpnet/bpf/podpath"
)

// xdpCommand inspects warp-veth's XDP pod datapath through its pinned
// maps, read-only.
func xdpCommand() *command {
	return &command{
		name:  "xdp",
		short: "inspect warp-veth's XDP pod datapath: registered pods and their counters",
		long: `Reads the pinned maps of the XDP pod datapath (what warp-veth registered for pods
with "xdp" on) straight from bpffs. The maps are opened read-only: nothing is loaded,
pinned, attached or written, whichever build pinned them.`,
		subs: []*command{xdpEndpointsCommand()},
	}
}

type xdpCountersView struct {
	PassPackets     uint64 `json:"passPackets"`
	PassBytes       uint64 `json:"passBytes"`
	RedirectPackets uint64 `json:"redirectPackets"`
	RedirectBytes   uint64 `json:"redirectBytes"`
	DropPackets     uint64 `json:"dropPackets"`
	DropBytes       uint64 `json:"dropBytes"`
}

type xdpEndpointView struct {
	Owner       string           `json:"owner"`
	HostIfIndex int              `json:"hostIfIndex"`
	HostIf      string           `json:"hostIf,omitempty"` // in warpctl's network namespace
	PodMAC      string           `json:"podMAC"`
	HostMAC     string           `json:"hostMAC"`
	IPs         []string         `json:"ips"`
	Redirect    bool             `json:"redirect"`
	AntiSpoof   bool             `json:"antiSpoof"`
	Counters    *xdpCountersView `json:"counters,omitempty"` // absent: none registered for the interface
}

func xdpEndpointsCommand() *command {
	var f pinFlags
	return &command{
		name:  "endpoints",
		args:  "[--bpffs-root DIR] [--json]",
		short: "list the pods the XDP datapath knows, with their features and counters (what each pod sent)",
		long: `Counters are summed over CPUs and count what the pod sent: passed to the stack,
redirected to another local pod, dropped (spoofed). The host interface name is looked
up in warpctl's own network namespace: run it in the node's.`,
		flags: func(fs *flag.FlagSet) { f = addPinFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			dp, err := podpath.OpenReadOnly(*f.root)
			if err != nil {
				return openErr("XDP datapath", `has warp-veth run a pod with "xdp" and that bpffsRoot?`, *f.root, err)
			}
			defer dp.Close()
			eps, err := dp.Endpoints()
			if err != nil {
				return err
			}
			slices.SortFunc(eps, func(a, b podpath.Endpoint) int { return a.HostIfIndex - b.HostIfIndex })
			views := []xdpEndpointView{}
			var rows [][]string
			for _, ep := range eps {
				v := xdpEndpointView{
					Owner: fmt.Sprintf("%#x", ep.Owner), HostIfIndex: ep.HostIfIndex,
					PodMAC: ep.PodMAC.String(), HostMAC: ep.HostMAC.String(), IPs: []string{},
					Redirect: ep.Features.Redirect, AntiSpoof: ep.Features.AntiSpoof,
				}
				if ifi, err := net.InterfaceByIndex(ep.HostIfIndex); err == nil {
					v.HostIf = ifi.Name
				}
				for _, ip := range ep.IPs {
					v.IPs = append(v.IPs, ip.String())
				}
				if c, err := dp.Counters(ep.HostIfIndex); err == nil {
					v.Counters = &xdpCountersView{c.PassPackets, c.PassBytes, c.RedirectPackets, c.RedirectBytes, c.DropPackets, c.DropBytes}
				}
				views = append(views, v)
				var features []string
				if v.Redirect {
					features = append(features, "redirect")
				}
				if v.AntiSpoof {
					features = append(features, "antispoof")
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
					strings.Join(v.IPs, ","), orDash(strings.Join(features, ",")),
				}, counters...))
			}
			return f.printList(io, views, []string{"HOST IF", "OWNER", "POD MAC", "IPS", "FEATURES",
				"PASSED PKTS/BYTES", "REDIRECTED PKTS/BYTES", "DROPPED PKTS/BYTES"}, rows)
		},
	}
}
