package topo_test

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/warpnet/warpnet/bpf/internal/topo"
	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/bpf/podpath"
	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/tests/harness"
)

// TestBothDatapathsOneRoot: the pod datapath and the service load
// balancer share a bpffs root without touching each other's pins, and a
// node that only runs the load balancer gets no XDP pins from a look for
// XDP state (what warp-veth's DEL does).
func TestBothDatapathsOneRoot(t *testing.T) {
	e := harness.New(t)
	root := topo.PinDir(e)
	node := e.NetNS("node")
	lb, err := servicelb.Open(root, servicelb.Sizes{})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	lbMaps := harness.PinNames(t, filepath.Join(servicelb.Dir(root), "maps"))

	// Only the load balancer is pinned: nothing to open, nothing created.
	if _, err := podpath.OpenExisting(root); !errors.Is(err, pinset.ErrNotPinned) {
		t.Fatalf("OpenExisting on a load-balancer-only root: %v, want ErrNotPinned", err)
	}
	if _, err := podpath.OpenReadOnly(root); !errors.Is(err, pinset.ErrNotPinned) {
		t.Fatalf("OpenReadOnly on a load-balancer-only root: %v, want ErrNotPinned", err)
	}
	if got := harness.PinNames(t, root); !slices.Equal(got, []string{"lb"}) {
		t.Fatalf("root holds %v after looking for XDP state, want [lb]", got)
	}

	var dp *podpath.Datapath
	if err := node.Do(func() (err error) { dp, err = podpath.Open(root); return err }); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	if got := harness.PinNames(t, root); !slices.Equal(got, []string{"lb", "links", "maps", "progs"}) {
		t.Errorf("root holds %v", got)
	}
	if got := harness.PinNames(t, filepath.Join(servicelb.Dir(root), "maps")); !slices.Equal(got, lbMaps) {
		t.Errorf("lb/maps holds %v, was %v", got, lbMaps)
	}
	for _, open := range []func() error{
		func() error { d, err := podpath.OpenExisting(root); d.Close(); return err },
		func() error { d, err := podpath.OpenReadOnly(root); d.Close(); return err },
		func() error { l, err := servicelb.OpenReadOnly(root); l.Close(); return err },
	} {
		if err := open(); err != nil {
			t.Error(err)
		}
	}
	if _, err := lb.Services(); err != nil {
		t.Error(err)
	}
}
