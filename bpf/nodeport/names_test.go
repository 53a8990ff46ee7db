package nodeport

import (
	"testing"

	"github.com/warpnet/warpnet/bpf/pinset"
)

// warp-veth orders its tc program before np_tc by the name pinset gives.
func TestNorthSouthTCProgName(t *testing.T) {
	if npProgNpTc != pinset.NorthSouthTCProg {
		t.Fatalf("bpf/nodeport's tc program is %q, pinset.NorthSouthTCProg says %q", npProgNpTc, pinset.NorthSouthTCProg)
	}
}
