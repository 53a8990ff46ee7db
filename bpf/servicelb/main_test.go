package servicelb

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// helperEnv makes the test binary, re-executed, a helper process: a
// client in a cgroup (lb_client_test.go) or a process killed at a crash
// point (crash_test.go).
const helperEnv = "WARP_SERVICELB_TEST_HELPER"

func TestMain(m *testing.M) {
	switch what := os.Getenv(helperEnv); what {
	case "":
		code := m.Run()
		if faultBin != "" {
			os.RemoveAll(filepath.Dir(faultBin))
		}
		os.Exit(code)
	case "lbclient":
		os.Exit(lbClientMain())
	case "upsert":
		os.Exit(upsertHelper())
	default:
		fmt.Println("ERROR unknown helper", what)
		os.Exit(1)
	}
}
