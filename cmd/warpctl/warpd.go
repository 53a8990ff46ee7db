package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/warpnet/warpnet/daemon/status"
)

// warpdCommand asks a running warpd about itself.
func warpdCommand() *command {
	return &command{
		name:  "warpd",
		short: "ask the node daemon how it is doing: health, last sync, map fill, rejected objects",
		subs:  []*command{warpdStatusCommand()},
	}
}

func warpdStatusCommand() *command {
	var addr *string
	var asJSON *bool
	return &command{
		name:  "status",
		args:  "[--addr HOST:PORT] [--json]",
		short: "show warpd's health, last sync, map fill and the objects it rejected, with reasons",
		long: `Reads warpd's /status (served on its --listen address) and prints whether it is
healthy and why not, its services source and any problem with it, the last sync (what it
changed, and its error), how full the maps are, and every object warpd does not apply as
written: which, why, and whether its last valid version stays in force.`,
		flags: func(fs *flag.FlagSet) {
			addr = fs.String("addr", "127.0.0.1:9090", "warpd's --listen address")
			asJSON = fs.Bool("json", false, "print the JSON report as warpd serves it")
		},
		run: func(io *cmdIO, _ *flag.FlagSet) error {
			st, raw, err := fetchStatus(*addr)
			if err != nil {
				return err
			}
			if *asJSON {
				_, err := io.out.Write(raw)
				return err
			}
			printStatus(io.out, st)
			return nil
		},
	}
}

func fetchStatus(addr string) (*status.Status, []byte, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + status.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot reach warpd at %s (is it running, with --listen %s? pass its address with --addr): %w", addr, addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read warpd's status from %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("warpd at %s answered %s (an older warpd without %s?): %s", addr, resp.Status, status.Path, strings.TrimSpace(string(raw)))
	}
	var st status.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("warpd's status from %s: %w", addr, err)
	}
	return &st, raw, nil
}

func printStatus(w io.Writer, st *status.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node:\t%s (warpd %s)\n", st.Node, st.Version)
	fmt.Fprintf(tw, "source:\t%s\n", st.Source)
	if st.SourceProblem != "" {
		fmt.Fprintf(tw, "source problem:\t%s\n", st.SourceProblem)
	}
	if st.Healthy {
		fmt.Fprintf(tw, "health:\tok\n")
	} else {
		fmt.Fprintf(tw, "health:\tUNHEALTHY: %s\n", st.Unhealthy)
	}
	if s := st.LastSync; s != nil {
		line := fmt.Sprintf("%s (%v): %d upserted, %d deleted, %d unchanged", s.At.Format(time.RFC3339), s.Duration.Round(time.Microsecond), s.Upserted, s.Deleted, s.Skipped)
		if s.Error != "" {
			line += "; FAILED in part: " + s.Error
		}
		fmt.Fprintf(tw, "last sync:\t%s\n", line)
	} else {
		fmt.Fprintf(tw, "last sync:\tnone yet\n")
	}
	if !st.LastGoodSync.IsZero() {
		fmt.Fprintf(tw, "last good sync:\t%s\n", st.LastGoodSync.Format(time.RFC3339))
	}
	for _, m := range st.Maps {
		fmt.Fprintf(tw, "map %s:\t%d of %d (%.1f%%)\n", m.Map, m.Used, m.Capacity, 100*m.Ratio)
	}
	tw.Flush()
	printNetwork(w, st.Network)
	if len(st.Rejected) == 0 {
		fmt.Fprintln(w, "rejected objects: none")
		return
	}
	fmt.Fprintf(w, "rejected objects: %d\n", len(st.Rejected))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tOBJECT\tIN FORCE\tSINCE\tREASON")
	for _, r := range st.Rejected {
		inForce := "nothing"
		if r.Kept {
			inForce = "last valid version"
		}
		fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\n", r.Kind, r.Namespace, r.Name, inForce, r.Since.Format(time.RFC3339), r.Reason)
	}
	tw.Flush()
}

// printNetwork prints node networking: the mode, what is published for
// the plugins, and how each peer is reached.
func printNetwork(w io.Writer, n *status.Network) {
	if n == nil {
		fmt.Fprintln(w, "node networking: off (--routing none)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "routing:\t%s (masquerade %v)\n", n.Routing, n.Masquerade)
	if n.Waiting != "" {
		fmt.Fprintf(tw, "node networking:\twaiting: %s\n", n.Waiting)
	}
	if len(n.PodCIDRs) > 0 {
		fmt.Fprintf(tw, "published:\tpod CIDRs %s, pod MTU %d (%s)\n", strings.Join(n.PodCIDRs, ", "), n.MTU, n.Facts)
	}
	if s := n.LastSync; s != nil && s.Error != "" {
		fmt.Fprintf(tw, "node networking:\tFAILED in part at %s: %s\n", s.At.Format(time.RFC3339), s.Error)
	}
	tw.Flush()
	if len(n.Peers) == 0 {
		return
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tPATH\tVIA\tPOD CIDRS\tPROBLEM")
	for _, p := range n.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, p.Path, p.Via, strings.Join(p.PodCIDRs, ","), p.Problem)
	}
	tw.Flush()
}
