package warpd_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/bpf"
)

// The periodic resync repairs what changed in the maps behind warpd's back:
// a deleted frontend comes back, a corrupted one is rewritten, a stray one
// goes.
func TestResyncRepairsDrift(t *testing.T) {
	c := newCluster(t, "file", "pod1", "pod2")
	c.writeServices("pod1", "pod2")
	warpd := c.startWarpd("--resync", "1s")
	c.waitBackends(2)

	lb, err := bpf.OpenLB(c.bpffs, bpf.LBSizes{})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	udp := bpf.Frontend{Addr: netip.MustParseAddr(clusterIP), Port: 53, Proto: bpf.UDP}
	stray := bpf.Frontend{Addr: netip.MustParseAddr("10.96.9.9"), Port: 80, Proto: bpf.TCP}
	synced := logCount(warpd, `"msg":"synced"`)
	if err := lb.Delete(udp); err != nil {
		t.Fatal(err)
	}
	if err := lb.Upsert(bpf.Service{Frontend: webFrontend, ID: 1, Backends: []bpf.Backend{{Addr: netip.MustParseAddr(c.podIPs["pod1"]), Port: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := lb.Upsert(bpf.Service{Frontend: stray, ID: 2}); err != nil {
		t.Fatal(err)
	}
	c.waitLog(warpd, `"msg":"synced"`, synced)
	c.waitLB("the drift repaired", func(svcs []bpf.Service) bool {
		if len(svcs) != 2 || slices.ContainsFunc(svcs, func(s bpf.Service) bool { return s.Frontend == stray }) {
			return false
		}
		for _, s := range svcs {
			if len(s.Backends) != 2 || s.ID == 1 || s.Backends[0].Port != backendPort {
				return false
			}
		}
		return true
	})
	if seen := c.answeredBy("tcp", "80", 20); seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Fatalf("answers %v", seen)
	}
}

// --host-only: sockets of the host's network namespace are translated,
// pods' sockets are not (a mesh sidecar in the pod sees the ClusterIP).
func TestHostOnly(t *testing.T) {
	c := newCluster(t, "file", "pod1")
	// The node's address (its --node-ip), so that its own connections
	// have a source the pods can answer.
	c.node.Exec(t, "ip", "addr", "add", "10.0.0.1/32", "dev", "lo")
	c.writeServices("pod1")
	c.startWarpd("--host-only")
	c.waitBackends(1)
	dial := func(from string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n := c.clientPod
		if from == "node" {
			n = c.node
		}
		out, err := c.pods.Run(ctx, n, "hello", "socat", "-T2", "-", "TCP:"+clusterIP+":80,connect-timeout=2")
		return strings.TrimSpace(out), err
	}
	if out, err := dial("node"); err != nil || out != "pod1:hello" {
		t.Fatalf("from the node's namespace: %v %q", err, out)
	}
	if out, err := dial("pod"); err == nil {
		t.Fatalf("a pod's socket was translated in host-only mode: %q", out)
	}
}
