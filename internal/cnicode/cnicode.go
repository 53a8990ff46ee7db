// Package cnicode holds the CNI error codes warpnet's plugins return beyond
// the cni library's constants, in one place so that a number means the same
// from every plugin (they are listed in README.md).
package cnicode

const (
	// PluginNotAvailable is the spec's code for STATUS when ADD cannot
	// succeed; the cni library has no constant for it.
	PluginNotAvailable uint = 50
	// AlreadyExists: ADD for a (container, ifname) that already has its
	// addresses or interface, i.e. a second ADD without a DEL in between.
	AlreadyExists uint = 101
	// CheckMismatch: CHECK found state that differs from prevResult.
	CheckMismatch uint = 102
)
