// Package l4 names the transport protocols warpnet load balances, once for
// every layer (Kubernetes translation, BPF maps, warpctl), without pulling in
// any of them.
package l4

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Protocol is an IP protocol number.
type Protocol uint8

// The protocols that are load balanced; others pass untranslated.
const (
	TCP Protocol = unix.IPPROTO_TCP
	UDP Protocol = unix.IPPROTO_UDP
)

// String is the lower-case name ("tcp", "udp"), or "protoN".
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto%d", uint8(p))
}

// Parse accepts "tcp"/"udp" in any case (Kubernetes writes "TCP"); an empty
// string is TCP, as in a Kubernetes ServicePort. ok is false for anything
// else (SCTP among them).
func Parse(s string) (p Protocol, ok bool) {
	switch strings.ToLower(s) {
	case "tcp", "":
		return TCP, true
	case "udp":
		return UDP, true
	}
	return 0, false
}
