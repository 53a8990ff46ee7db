package podpath

import (
	"fmt"
	"strings"

	"github.com/safchain/ethtool"
)

// Why the pod end's TX checksum offload must be off: a veth advertises
// checksum offload, so TCP and UDP packets a pod sends leave its eth0 as
// CHECKSUM_PARTIAL skbs, with only the pseudo-header sum in the checksum
// field and the rest left to "the hardware". Packets the host stack forwards
// keep that state and are completed later. But XDP_REDIRECT turns the packet
// into an xdp_frame, which carries no checksum state: the destination pod
// receives it as CHECKSUM_NONE with an incomplete checksum and drops it
// (TcpInCsumErrors). XDP cannot tell a partial checksum from a complete one,
// so the sender must compute it: with TX checksum offload off, the pod's
// stack fills in every checksum (also SCTP's CRC and inner checksums of
// encapsulated traffic) before the packet leaves eth0.

// txChecksumOff turns every TX checksum offload feature of ifname off, like
// `ethtool -K ifname tx off` (the kernel then drops TSO, which needs it),
// in the calling thread's network namespace (the ethtool socket is opened
// there).
func txChecksumOff(ifname string) error {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("ethtool: %w", err)
	}
	defer e.Close()
	on, err := txChecksumFeatures(e, ifname)
	if err != nil || len(on) == 0 {
		return err
	}
	off := map[string]bool{}
	for _, name := range on {
		off[name] = false
	}
	if err := e.Change(ifname, off); err != nil {
		return fmt.Errorf("ethtool -K %s tx off: %w", ifname, err)
	}
	if still, err := txChecksumFeatures(e, ifname); err != nil || len(still) > 0 {
		return fmt.Errorf("ethtool -K %s tx off: %v still on (%v)", ifname, still, err)
	}
	return nil
}

// txChecksumFeatures lists the TX checksum features that are on.
func txChecksumFeatures(e *ethtool.Ethtool, ifname string) ([]string, error) {
	fs, err := e.Features(ifname)
	if err != nil {
		return nil, fmt.Errorf("ethtool -k %s: %w", ifname, err)
	}
	var on []string
	for name, active := range fs {
		if active && strings.HasPrefix(name, "tx-checksum-") {
			on = append(on, name)
		}
	}
	return on, nil
}
