package harness

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// NICLike makes the segment behave like NICs on a wire for XDP programs on
// the attached interfaces (a north-south load balancer's external
// interface, say), for every link attached so far and every one attached
// later:
//   - every attached interface puts complete checksums on the wire (TX
//     checksum offload off; forwarded packets with partial checksums are
//     completed as they leave). A veth would otherwise carry partial
//     checksums, which XDP cannot tell from complete ones and so would
//     update wrongly;
//   - every switch port runs NAPI (a no-op XDP program), so that the frames
//     a node sends with XDP_TX are received: a veth drops the xdp_frames
//     its peer cannot take.
func (s *Segment) NICLike() {
	s.env.t.Helper()
	s.nicLike = true
	for _, l := range s.links {
		s.makeNICLike(l)
	}
}

// segmentLink is one link attached to a segment: ifName in ns, cabled to
// the switch port port.
type segmentLink struct {
	ns     *NetNS
	ifName string
	port   string
}

func (s *Segment) makeNICLike(l segmentLink) {
	s.env.t.Helper()
	if err := l.ns.Do(func() error { return setFeatures(l.ifName, "tx-checksum-", false) }); err != nil {
		s.env.fatalf("NICLike: %s in %s: %v", l.ifName, l.ns, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()}})
	if err != nil {
		s.env.fatalf("NICLike: no-op XDP program: %v", err)
	}
	defer prog.Close() // the interface holds it
	if err := s.ns.Do(func() error {
		port, err := netlink.LinkByName(l.port)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(port, prog.FD(), nl.XDP_FLAGS_DRV_MODE)
	}); err != nil {
		s.env.fatalf("NICLike: no-op XDP on switch port %s: %v", l.port, err)
	}
}

// setFeatures turns the ethtool features of ifname whose names start with
// prefix on or off, in the calling thread's namespace.
func setFeatures(ifname, prefix string, on bool) error {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return err
	}
	defer e.Close()
	fs, err := e.Features(ifname)
	if err != nil {
		return fmt.Errorf("ethtool -k %s: %w", ifname, err)
	}
	change := map[string]bool{}
	for name, active := range fs {
		if strings.HasPrefix(name, prefix) && active != on {
			change[name] = on
		}
	}
	if len(change) == 0 {
		return nil
	}
	if err := e.Change(ifname, change); err != nil {
		return fmt.Errorf("ethtool -K %s %v: %w", ifname, change, err)
	}
	return nil
}
