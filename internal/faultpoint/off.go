//go:build !faultpoints

package faultpoint

// Enabled reports whether this binary was built with -tags faultpoints.
const Enabled = false

// Hit marks a crash point; a no-op in normal builds.
func Hit(string) {}
