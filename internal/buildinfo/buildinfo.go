// Package buildinfo carries the version stamped into every warpnet binary
// and the text CNI plugins print when run by hand.
package buildinfo

import "fmt"

// Version is set at build time with -ldflags "-X ...buildinfo.Version=...".
var Version = "dev"

// About is what a CNI plugin prints to stderr when started without
// CNI_COMMAND (for example with --help): what it is and how it is used.
func About(name, what string) string {
	return fmt.Sprintf(`%s %s: warpnet %s
This is a CNI plugin. A container runtime runs it with CNI_COMMAND, CNI_CONTAINERID,
CNI_NETNS, CNI_IFNAME and CNI_PATH in the environment and the network configuration
on stdin; it is not meant to be run by hand. Configuration reference: README.md.`, name, Version, what)
}
