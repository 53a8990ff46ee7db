package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warpnet/warpnet/ipam/kube"
)

// ipamCommand shows warp-ipam's cluster-wide pools and who holds what.
func ipamCommand() *command {
	return &command{
		name:  "ipam",
		short: "show warp-ipam's cluster-wide IPPools (usage) and IPAllocations (owners)",
		long: `Reads warp-ipam's IPPools and IPAllocations (the kubernetes store) from the API
server, read-only.`,
		subs: []*command{ipamPoolsCommand(), ipamAllocationsCommand()},
	}
}

type kubeFlags struct {
	kubeconfig *string
	asJSON     *bool
}

func addKubeFlags(fs *flag.FlagSet) kubeFlags {
	return kubeFlags{
		kubeconfig: fs.String("kubeconfig", "", "kubeconfig of the API server (default: $KUBECONFIG, else ~/.kube/config)"),
		asJSON:     fs.Bool("json", false, "print JSON"),
	}
}

// client connects to the API server with kubectl's rules for finding the
// kubeconfig.
func (f kubeFlags) client() (*kube.Client, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if *f.kubeconfig != "" {
		rules.ExplicitPath = *f.kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no usable kubeconfig (pass --kubeconfig): %w", err)
	}
	rc.Timeout = 30 * time.Second
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, err
	}
	return kube.NewClient(rc.Host, hc, "warpctl"), nil
}

func listErr(what string, err error) error {
	if strings.Contains(err.Error(), "404") {
		return fmt.Errorf("%s: %w (are the CRDs of install/crds installed?)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// poolView is one line of `warpctl ipam pools`.
type poolView struct {
	Name       string `json:"name"`
	Subnet     string `json:"subnet"`
	Gateway    string `json:"gateway,omitempty"`
	VLAN       *int   `json:"vlan,omitempty"`
	Size       string `json:"size"` // a decimal: IPv6 pools exceed 64 bits
	Allocated  int    `json:"allocated"`
	Pinned     int    `json:"pinned"`
	Waiting    int    `json:"waiting"` // pinned addresses whose pod has no sandbox now
	Nodes      string `json:"nodes"`
	Namespaces string `json:"namespaces"`
	Problem    string `json:"problem,omitempty"`
}

func ipamPoolsCommand() *command {
	var f kubeFlags
	return &command{
		name:  "pools",
		args:  "[--kubeconfig FILE] [--json]",
		short: "list the IPPools with their size and how many addresses are allocated, pinned and waiting",
		long: `For every IPPool: subnet, gateway and VLAN, how many addresses it can hand out
(ranges less gateway, network, broadcast and exclusions), how many are allocated, how
many of those are pinned to StatefulSet pods, and how many pinned ones wait for their
pod (no sandbox uses them now). Nodes and namespaces show the selectors ("*" for all). A
pool warp-ipam cannot use (it overlaps an older pool, or its ranges are invalid) says why.`,
		flags: func(fs *flag.FlagSet) { f = addKubeFlags(fs) },
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			pools, err := c.ListPools(ctx)
			if err != nil {
				return listErr("list IPPools", err)
			}
			allocs, err := c.ListAllocations(ctx, "")
			if err != nil {
				return listErr("list IPAllocations", err)
			}
			views := poolViews(pools, allocs)
			if *f.asJSON {
				return writeJSON(io.out, views)
			}
			printPools(io.out, views)
			return nil
		},
	}
}

func poolViews(pools []kube.IPPool, allocs []kube.IPAllocation) []poolView {
	slices.SortFunc(pools, func(a, b kube.IPPool) int { return strings.Compare(a.Name, b.Name) })
	var out []poolView
	for i := range pools {
		p := &pools[i]
		v := poolView{Name: p.Name, Subnet: p.Spec.Subnet, Gateway: p.Spec.Gateway, VLAN: p.Spec.VLAN,
			Nodes: selectorString(p.Spec.NodeSelector), Namespaces: selectorString(p.Spec.NamespaceSelector)}
		if size, err := p.Size(); err != nil {
			v.Problem, v.Size = err.Error(), "?"
		} else {
			v.Size = size.String()
		}
		if q, ok := kube.Overlapping(p, pools); ok {
			v.Problem = fmt.Sprintf("overlaps the older IPPool %s (%s): not used", q.Name, q.Spec.Subnet)
		}
		for j := range allocs {
			a := &allocs[j]
			if a.Spec.Pool != p.Name {
				continue
			}
			v.Allocated++
			if a.Pinned() {
				v.Pinned++
				if a.Spec.Attachment == nil {
					v.Waiting++
				}
			}
		}
		out = append(out, v)
	}
	return out
}

func selectorString(s *kube.LabelSelector) string {
	if s == nil {
		return "*"
	}
	var parts []string
	for _, k := range slices.Sorted(mapKeys(s.MatchLabels)) {
		parts = append(parts, k+"="+s.MatchLabels[k])
	}
	for _, e := range s.MatchExpressions {
		parts = append(parts, fmt.Sprintf("%s %s (%s)", e.Key, e.Operator, strings.Join(e.Values, ",")))
	}
	if len(parts) == 0 {
		return "*"
	}
	return strings.Join(parts, ",")
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func printPools(w io.Writer, views []poolView) {
	if len(views) == 0 {
		fmt.Fprintln(w, "no IPPools")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tSUBNET\tGATEWAY\tVLAN\tSIZE\tALLOCATED\tUSED\tPINNED\tWAITING\tNODES\tNAMESPACES\tPROBLEM")
	for _, v := range views {
		vlan := "-"
		if v.VLAN != nil {
			vlan = fmt.Sprint(*v.VLAN)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%s\t%s\t%s\n", v.Name, v.Subnet, dash(v.Gateway), vlan, v.Size,
			v.Allocated, usedPercent(v.Allocated, v.Size), v.Pinned, v.Waiting, v.Nodes, v.Namespaces, v.Problem)
	}
	tw.Flush()
}

func usedPercent(n int, size string) string {
	s, ok := new(big.Int).SetString(size, 10)
	if !ok || s.Sign() == 0 {
		return "-"
	}
	r := new(big.Rat).SetFrac(big.NewInt(int64(n)*100), s)
	f, _ := r.Float64()
	return fmt.Sprintf("%.1f%%", f)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// allocationView is one line of `warpctl ipam allocations`.
type allocationView struct {
	Address     string    `json:"address"`
	Pool        string    `json:"pool"`
	Namespace   string    `json:"namespace"`
	Pod         string    `json:"pod"`
	PodUID      string    `json:"podUID,omitempty"`
	Node        string    `json:"node,omitempty"`
	ContainerID string    `json:"containerID,omitempty"`
	IfName      string    `json:"ifName,omitempty"`
	StatefulSet string    `json:"statefulSet,omitempty"` // "name/ordinal" when pinned
	Created     time.Time `json:"created"`
}

func ipamAllocationsCommand() *command {
	var f kubeFlags
	var pool, node, namespace *string
	return &command{
		name:  "allocations",
		args:  "[--pool NAME] [--node NAME] [--namespace NS] [--kubeconfig FILE] [--json]",
		short: "list who holds which address: pod, node, sandbox, and the StatefulSet a pinned address belongs to",
		long: `One line per allocated address, sorted by pool and address. A pinned address
(a StatefulSet pod's) whose pod has no sandbox now shows no node: it waits for the pod
and is released by warpd's leak collector once the StatefulSet no longer needs it.`,
		flags: func(fs *flag.FlagSet) {
			f = addKubeFlags(fs)
			pool = fs.String("pool", "", "only this pool's addresses")
			node = fs.String("node", "", "only addresses used on this node")
			namespace = fs.String("namespace", "", "only addresses of pods in this namespace")
		},
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var sel []string
			if *pool != "" {
				sel = append(sel, kube.LabelPool+"="+kube.LabelValue(*pool))
			}
			if *node != "" {
				sel = append(sel, kube.LabelNode+"="+kube.LabelValue(*node))
			}
			allocs, err := c.ListAllocations(ctx, strings.Join(sel, ","))
			if err != nil {
				return listErr("list IPAllocations", err)
			}
			var views []allocationView
			for i := range allocs {
				a := &allocs[i]
				if *namespace != "" && a.Spec.Pod.Namespace != *namespace {
					continue
				}
				views = append(views, allocationViewOf(a))
			}
			slices.SortFunc(views, func(a, b allocationView) int {
				if c := strings.Compare(a.Pool, b.Pool); c != 0 {
					return c
				}
				return kubeAddr(a.Address).Compare(kubeAddr(b.Address))
			})
			if *f.asJSON {
				return writeJSON(io.out, views)
			}
			printAllocations(io.out, views)
			return nil
		},
	}
}

func allocationViewOf(a *kube.IPAllocation) allocationView {
	v := allocationView{Address: a.Spec.Address, Pool: a.Spec.Pool, Namespace: a.Spec.Pod.Namespace, Pod: a.Spec.Pod.Name,
		PodUID: a.Spec.Pod.UID, Created: a.Created()}
	if at := a.Spec.Attachment; at != nil {
		v.Node, v.ContainerID, v.IfName = at.Node, at.ContainerID, at.IfName
	} else {
		v.IfName = a.Spec.Pod.Interface
	}
	if ss := a.Spec.StatefulSet; ss != nil {
		v.StatefulSet = fmt.Sprintf("%s/%d", ss.Name, ss.Ordinal)
	}
	return v
}

func printAllocations(w io.Writer, views []allocationView) {
	if len(views) == 0 {
		fmt.Fprintln(w, "no IPAllocations")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tPOOL\tPOD\tIF\tNODE\tCONTAINER\tPINNED TO\tAGE")
	for _, v := range views {
		node, cid := dash(v.Node), dash(v.ContainerID)
		if v.Node == "" && v.StatefulSet != "" {
			node = "(waiting for its pod)"
		}
		if len(cid) > 13 {
			cid = cid[:12] + "…"
		}
		age := "-"
		if !v.Created.IsZero() {
			age = time.Since(v.Created).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\n", v.Address, v.Pool, v.Namespace, v.Pod, dash(v.IfName), node, cid,
			dash(v.StatefulSet), age)
	}
	tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func kubeAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}
