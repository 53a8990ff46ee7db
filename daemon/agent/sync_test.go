package agent

import (
	"testing"

	"github.com/warpnet/warpnet/bpf/servicelb"
)

// Maps sized from the cluster grow to twice what it needs, as a power of
// two, never below the default nor above servicelb.MaxSize.
func TestGrownSize(t *testing.T) {
	for _, c := range []struct{ need, want int }{
		{1, servicelb.DefaultSizes.Backends},
		{50000, 131072},
		{100000, 262144},
		{131072, 262144},
		{servicelb.MaxSize, servicelb.MaxSize},
	} {
		if got := grownSize(c.need); got != c.want {
			t.Errorf("grownSize(%d) = %d, want %d", c.need, got, c.want)
		}
	}
}
