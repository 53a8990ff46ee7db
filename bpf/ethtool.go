package bpf

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
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

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	Cmd  uint32
	Data uint32
}

// ifreqData is struct ifreq with ifr_data, laid out like x/sys/unix's
// unexported type of the same name.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtoolValueIoctl runs the SIOCETHTOOL command cmd on ifname (in the
// calling thread's network namespace) with *data in and out.
func ethtoolValueIoctl(ifname string, cmd uint32, data *uint32) error {
	if len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("bpf: interface name %q too long", ifname)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bpf: ethtool socket: %w", err)
	}
	defer unix.Close(fd)
	v := ethtoolValue{Cmd: cmd, Data: *data}
	var ifr ifreqData
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&v)
	if errno != 0 {
		return fmt.Errorf("bpf: ethtool %#x on %s: %w", cmd, ifname, errno)
	}
	*data = v.Data
	return nil
}

// txChecksum reports whether TX checksum offload is on for ifname.
func txChecksum(ifname string) (bool, error) {
	var on uint32
	err := ethtoolValueIoctl(ifname, unix.ETHTOOL_GTXCSUM, &on)
	return on != 0, err
}

// setTxChecksum turns TX checksum offload of ifname on or off (like
// `ethtool -K ifname tx on|off`; the kernel also drops TSO, which needs it).
func setTxChecksum(ifname string, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	return ethtoolValueIoctl(ifname, unix.ETHTOOL_STXCSUM, &v)
}
