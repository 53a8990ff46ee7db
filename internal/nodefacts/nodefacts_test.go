package nodefacts

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "node.json")
	if _, err := Read(path); !errors.Is(err, ErrNotPublished) {
		t.Fatalf("Read before Write: %v", err)
	}
	want := Facts{Node: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:1::/64")}, MTU: 1450, Routing: "auto",
		ClusterPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	if err := Write(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil || got.Node != want.Node || len(got.PodCIDRs) != 2 || got.MTU != 1450 || got.Routing != "auto" ||
		len(got.ClusterPodCIDRs) != 1 || got.ClusterPodCIDRs[0] != want.ClusterPodCIDRs[0] {
		t.Fatalf("Read = %+v, %v", got, err)
	}
	if p, ok := got.PodCIDR(false); !ok || p != want.PodCIDRs[1] {
		t.Errorf("PodCIDR(v6) = %v %v", p, ok)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("leftovers: %v", ents)
	}
}
