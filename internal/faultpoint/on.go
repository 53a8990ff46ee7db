//go:build faultpoints

package faultpoint

import (
	"os"
	"syscall"
)

// Enabled reports whether this binary was built with -tags faultpoints.
const Enabled = true

// Hit logs name (WARP_FAULTPOINT_LOG) and, if WARP_FAULTPOINT names it, kills
// the process at once.
func Hit(name string) {
	if log := os.Getenv(EnvLog); log != "" {
		if f, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			f.WriteString(name + "\n")
			f.Close()
		}
	}
	if os.Getenv(EnvCrash) == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously on every thread
	}
}
