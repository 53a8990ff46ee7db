package bench

import (
	"testing"

	"github.com/warpnet/warpnet/tests/harness"
)

// The clients that need warpd's hooks are processes born in the pods'
// cgroup (harness.Cgroup.Run); this binary re-executed serves harness
// clients (harness.Main).
func TestMain(m *testing.M) { harness.Main(m) }
