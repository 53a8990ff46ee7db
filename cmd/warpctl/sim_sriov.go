package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netns"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sim"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
)

func sriovCommand() *command {
	return &command{
		name:  "sriov",
		short: "simulated SR-IOV NIC: a PF with VFs in a node namespace",
		long: `Simulate an SR-IOV NIC inside a node network namespace: the PF is a veth whose
peer sits in an "underlay" namespace, every netdev VF is a macvlan (bridge
mode) on the PF, and a fake sysfs tree describes the PCI functions. PF-side VF
settings (admin MAC, VLAN, spoofchk, trust, link state, rates) are recorded in
a state file instead of applied. Plugins use the simulator when given the two
environment variables that 'create' and 'show --env' print.

Differences from real hardware: a VF in a pod namespace dies with that
namespace (a real VF returns to the host); the sysfs tree does not follow
moves and renames; recorded PF-side settings are not enforced.`,
		subs: []*command{sriovCreateCommand(), sriovShowCommand(), sriovDestroyCommand()},
	}
}

// intList is a flag holding VF indexes: "3", "1,3", or the flag repeated.
type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, v := range *l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a VF index", f)
		}
		*l = append(*l, n)
	}
	return nil
}

func sriovCreateCommand() *command {
	var spec sim.Spec
	var dpdk intList
	return &command{
		name:  "create",
		args:  "--netns /run/netns/NODE --dir DIR --vfs N [--dpdk I,J] [--pf NAME] [--bus DDDD:BB]",
		short: "create a PF with VFs in a node namespace",
		long: `Create a simulated PF with N VFs in the node network namespace NODE (never
the machine's own namespace: create one with 'ip netns add NODE'). The PF is
the veth NAME (default sim0) at PCI <bus>:00.0; VF i is at <bus>:<2+i/8>.<i%8>,
and, unless listed in --dpdk, has the netdev NAMEv<i> (a macvlan). VFs listed
in --dpdk are bound to vfio-pci and have no netdev.

DIR receives the fake sysfs tree (DIR/sysfs), the PF-side state file
(DIR/pf-state.json) and a description (DIR/sim.json) that 'show' and
'destroy' read. Creating twice in one DIR fails; destroy first.

Prints what it made, then the two environment lines that point a plugin at
the simulator.`,
		flags: func(fs *flag.FlagSet) {
			spec = sim.Spec{}
			dpdk = nil
			fs.StringVar(&spec.NodeNetns, "netns", "", "`PATH` of the node network namespace, e.g. /run/netns/node1 (required)")
			fs.StringVar(&spec.Dir, "dir", "", "`DIR` for the sysfs tree, state file and description (required)")
			fs.IntVar(&spec.NumVFs, "vfs", 0, fmt.Sprintf("`N`umber of VFs, 1-%d (required)", sim.MaxVFs))
			fs.Var(&dpdk, "dpdk", "VF `INDEXES` bound to vfio-pci without a netdev: \"3\" or \"1,3\"")
			fs.StringVar(&spec.PFName, "pf", sim.DefaultPFName, "PF netdev `NAME`")
			fs.StringVar(&spec.PCIBus, "bus", sim.DefaultPCIBus, "PCI `DDDD:BB` (domain:bus) of the PF and its VFs")
		},
		run: func(io *cmdIO, fs *flag.FlagSet) error {
			var missing []string
			if spec.NodeNetns == "" {
				missing = append(missing, "--netns")
			}
			if spec.Dir == "" {
				missing = append(missing, "--dir")
			}
			if spec.NumVFs == 0 {
				missing = append(missing, "--vfs")
			}
			if len(missing) > 0 {
				return usagef("missing %s", strings.Join(missing, ", "))
			}
			if os.Geteuid() != 0 {
				return errors.New("creating links and namespaces needs root; run it with sudo")
			}
			spec.DPDKVFs = dpdk
			p, err := sim.Create(spec)
			if err != nil {
				return err
			}
			fmt.Fprintf(io.out, "created PF %s (PCI %s) with %d VFs in %s\n", p.PFName, p.PFPCI(), p.NumVFs, p.NodeNetns)
			fmt.Fprintf(io.out, "  underlay:   %s (PF peer %s)\n", p.UnderlayNetns, p.UnderlayPort)
			fmt.Fprintf(io.out, "  sysfs root: %s\n", p.SysfsRoot)
			fmt.Fprintf(io.out, "  state file: %s\n\n", p.StateFile)
			tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VF\tPCI\tDRIVER\tNETDEV\tMAC")
			for _, vf := range p.VFs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", vf.Index, vf.PCI, vf.Driver, orDash(vf.Netdev), vf.MAC)
			}
			tw.Flush()
			fmt.Fprintf(io.out, "\nPlugin environment (also: warpctl sim sriov show --dir %s --env):\n", p.Dir)
			for _, kv := range p.Env() {
				fmt.Fprintln(io.out, kv)
			}
			return nil
		},
	}
}

// vfView is one VF in 'show' output.
type vfView struct {
	Index  int        `json:"index"`
	PCI    string     `json:"pci"`
	Driver string     `json:"driver"` // read from the sysfs tree
	Netdev string     `json:"netdev"` // "" for DPDK VFs
	MAC    string     `json:"mac"`    // as the simulator created it
	Link   string     `json:"link"`   // "up", "down", "gone" (not in the node namespace), "" for DPDK VFs
	State  pf.VFState `json:"state"`  // recorded PF-side settings
}

type showView struct {
	PF struct {
		Name          string `json:"name"`
		PCI           string `json:"pci"`
		NodeNetns     string `json:"nodeNetns"`
		UnderlayNetns string `json:"underlayNetns"`
		UnderlayPort  string `json:"underlayPort"`
		Link          string `json:"link"` // "up", "down", "gone"
	} `json:"pf"`
	SysfsRoot string   `json:"sysfsRoot"`
	StateFile string   `json:"stateFile"`
	Env       []string `json:"env"`
	VFs       []vfView `json:"vfs"`
}

func sriovShowCommand() *command {
	var dir string
	var asJSON, envOnly bool
	return &command{
		name:  "show",
		args:  "--dir DIR [--json | --env]",
		short: "show a simulator's PF, VFs and recorded PF-side state",
		long: `Show the simulated PF in DIR and its VFs: PCI address, index, driver (as the
sysfs tree says), netdev, MAC, whether the netdev is still in the node
namespace (LINK "gone": moved into a pod, or deleted with one), and the
PF-side settings recorded in the state file.

--json prints the same as JSON; --env prints only the environment lines for
plugins, e.g. for: env $(warpctl sim sriov show --dir DIR --env) PLUGIN`,
		flags: func(fs *flag.FlagSet) {
			dir, asJSON, envOnly = "", false, false
			fs.StringVar(&dir, "dir", "", "`DIR` the simulator was created in (required)")
			fs.BoolVar(&asJSON, "json", false, "print JSON")
			fs.BoolVar(&envOnly, "env", false, "print only the plugin environment lines")
		},
		run: func(io *cmdIO, fs *flag.FlagSet) error {
			if dir == "" {
				return usagef("missing --dir")
			}
			if asJSON && envOnly {
				return usagef("--json and --env exclude each other")
			}
			p, err := sim.Load(dir)
			if err != nil {
				return err
			}
			if envOnly {
				for _, kv := range p.Env() {
					fmt.Fprintln(io.out, kv)
				}
				return nil
			}
			v, err := inspect(p)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(io.out)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			printShow(io, v)
			return nil
		},
	}
}

// inspect reads the simulator's tree (through internal/sriov/sysfs, as a
// plugin would), its state file, and its links in the node namespace.
func inspect(p *sim.PF) (*showView, error) {
	v := &showView{SysfsRoot: p.SysfsRoot, StateFile: p.StateFile, Env: p.Env()}
	v.PF.Name, v.PF.PCI, v.PF.NodeNetns = p.PFName, p.PFPCI(), p.NodeNetns
	v.PF.UnderlayNetns, v.PF.UnderlayPort = p.UnderlayNetns, p.UnderlayPort

	links := linkStates(p)
	v.PF.Link = links(p.PFName)
	restore := sysfs.UseRoot(p.SysfsRoot)
	defer restore()
	rec := pf.Recorder(p.StateFile)
	for _, vf := range p.VFs {
		r, err := sysfs.Resolve(vf.PCI)
		if err != nil {
			return nil, fmt.Errorf("sysfs tree %s: %w", p.SysfsRoot, err)
		}
		st, err := rec.VF(p.PFName, vf.Index)
		if err != nil {
			return nil, err
		}
		view := vfView{Index: vf.Index, PCI: vf.PCI, Driver: r.Driver, Netdev: r.Netdev, MAC: vf.MAC, State: st}
		if r.Netdev != "" {
			view.Link = links(r.Netdev)
		}
		v.VFs = append(v.VFs, view)
	}
	return v, nil
}

// linkStates returns a lookup of link state by name in the node namespace:
// "up", "down", or "gone" (also when the namespace itself is gone).
func linkStates(p *sim.PF) func(string) string {
	gone := func(string) string { return "gone" }
	ns, err := netns.GetFromPath(p.NodeNetns)
	if err != nil {
		return gone
	}
	defer ns.Close()
	h, err := netlinksafe.NewHandleAt(ns)
	if err != nil {
		return gone
	}
	links, err := h.LinkList()
	h.Close()
	if err != nil {
		return gone
	}
	state := map[string]string{}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagUp != 0 {
			state[l.Attrs().Name] = "up"
		} else {
			state[l.Attrs().Name] = "down"
		}
	}
	return func(name string) string {
		if s, ok := state[name]; ok {
			return s
		}
		return "gone"
	}
}

func printShow(io *cmdIO, v *showView) {
	fmt.Fprintf(io.out, "PF %s  PCI %s  link %s\n", v.PF.Name, v.PF.PCI, v.PF.Link)
	fmt.Fprintf(io.out, "  node:       %s\n", v.PF.NodeNetns)
	fmt.Fprintf(io.out, "  underlay:   %s (PF peer %s)\n", v.PF.UnderlayNetns, v.PF.UnderlayPort)
	fmt.Fprintf(io.out, "  sysfs root: %s\n", v.SysfsRoot)
	fmt.Fprintf(io.out, "  state file: %s\n\n", v.StateFile)
	tw := tabwriter.NewWriter(io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VF\tPCI\tDRIVER\tNETDEV\tLINK\tMAC\tADMIN MAC\tVLAN\tQOS\tPROTO\tSPOOFCHK\tTRUST\tLINK STATE\tMIN TX\tMAX TX")
	for _, vf := range v.VFs {
		s := vf.State
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%d\n",
			vf.Index, vf.PCI, vf.Driver, orDash(vf.Netdev), orDash(vf.Link), vf.MAC, orDash(s.MAC),
			s.VLAN, s.QoS, s.Proto, onOff(s.SpoofChk), onOff(s.Trust), s.LinkState, s.MinTxRate, s.MaxTxRate)
	}
	tw.Flush()
}

func sriovDestroyCommand() *command {
	var dir string
	return &command{
		name:  "destroy",
		args:  "--dir DIR",
		short: "remove a simulator: its links, underlay namespace and files",
		long: `Remove the simulated PF in DIR: the PF veth (which takes every VF with it,
also VFs that are inside pod namespaces), the underlay namespace, the sysfs
tree, the state file and the description. VFs that already died with their
pod namespaces, or a node namespace that is gone, are fine.`,
		flags: func(fs *flag.FlagSet) {
			dir = ""
			fs.StringVar(&dir, "dir", "", "`DIR` the simulator was created in (required)")
		},
		run: func(io *cmdIO, fs *flag.FlagSet) error {
			if dir == "" {
				return usagef("missing --dir")
			}
			p, err := sim.Load(dir)
			if err != nil {
				return err
			}
			if err := p.Destroy(); err != nil {
				return err
			}
			fmt.Fprintf(io.out, "destroyed PF %s (%d VFs) in %s and its files in %s\n", p.PFName, p.NumVFs, p.NodeNetns, p.Dir)
			return nil
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
