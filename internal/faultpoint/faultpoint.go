// Package faultpoint marks the steps of warpnet's crash-sensitive protocols
// (a plugin's ADD and DEL) so that tests can kill a process at exactly one of
// them, instead of at random times, and prove that DEL or GC repairs what
// each crash leaves behind.
//
// In a normal build Hit does nothing and costs nothing. A binary built with
// `-tags faultpoints` (make build puts such copies of the plugins in
// bin/faultpoints/) reads two environment variables:
//
//	WARP_FAULTPOINT=name       Hit(name) kills the process with SIGKILL, the
//	                           death of an OOM kill or a node crash: no
//	                           deferred function, no rollback runs.
//	WARP_FAULTPOINT_LOG=file   every Hit appends its name to file, so a test
//	                           learns a protocol's points from a clean run.
//
// Name points "<binary>.<verb>.<step>", e.g. "warp-veth.add.after-ipam".
package faultpoint

// EnvCrash and EnvLog are the environment variables read by faultpoints builds.
const (
	EnvCrash = "WARP_FAULTPOINT"
	EnvLog   = "WARP_FAULTPOINT_LOG"
)
