// Package topo builds, for the tests of the BPF packages, the routed
// topology warp-veth creates, by hand: a "node" namespace (no link to the
// machine's namespace) with IP forwarding, and pod namespaces hanging off it
// through veth pairs with explicit MACs, /32 and /128 pod addresses, a
// link-local gateway with permanent neighbour entries in the pod, and a
// host route plus permanent neighbour entry per pod in the node. The
// datapaths under test are attached to it by their own tests.
package topo

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/tests/harness"
)

// Pod is one pod of a Topo.
type Pod struct {
	NS       *harness.NetNS
	HostName string // host end, in the node namespace
	HostIdx  int
	PodIdx   int
	PodMAC   net.HardwareAddr
	HostMAC  net.HardwareAddr
	IP4, IP6 netip.Addr
}

// Topo is a node with pods and a private bpffs.
type Topo struct {
	T    *testing.T
	Env  *harness.Env
	Node *harness.NetNS
	Pods []*Pod
	// PinDir is a pin directory (not created yet) on a bpffs of the
	// test's own, so tests never touch /sys/fs/bpf/warpnet.
	PinDir string
}

// New builds a node with n pods and a private bpffs for pinning.
func New(t *testing.T, n int) *Topo {
	t.Helper()
	e := harness.New(t)
	tp := &Topo{T: t, Env: e, PinDir: PinDir(e)}
	tp.Node = e.NetNS("node")
	tp.Node.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// The node's own address: the source of ICMP errors it sends to pods.
	e.Addr(tp.Node, "lo", "10.0.0.1/32")
	e.Addr(tp.Node, "lo", "fd00:ffff::1/128")
	for i := range n {
		tp.Pods = append(tp.Pods, tp.addPod(i))
	}
	return tp
}

func (tp *Topo) addPod(i int) *Pod {
	t, e := tp.T, tp.Env
	t.Helper()
	p := &Pod{
		NS:       e.NetNS(fmt.Sprintf("pod%d", i)),
		HostName: fmt.Sprintf("warp%011x", 0xabc000+i),
		PodMAC:   net.HardwareAddr{0x02, 0xaa, 0, 0, byte(i), 0x02},
		HostMAC:  net.HardwareAddr{0x02, 0xaa, 0, 0, byte(i), 0x01},
		IP4:      netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)}),
		IP6:      netip.MustParseAddr(fmt.Sprintf("fd00::%x", 10+i)),
	}
	e.Veth(tp.Node, p.HostName, p.NS, "eth0")
	ip := func(ns *harness.NetNS, args ...string) { ns.Exec(t, append([]string{"ip"}, args...)...) }
	ip(tp.Node, "link", "set", p.HostName, "address", p.HostMAC.String())
	ip(p.NS, "link", "set", "eth0", "address", p.PodMAC.String())
	e.Addr(p.NS, "eth0", p.IP4.String()+"/32")
	e.Addr(p.NS, "eth0", p.IP6.String()+"/128")
	ip(p.NS, "route", "add", "169.254.1.1/32", "dev", "eth0", "scope", "link")
	ip(p.NS, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
	ip(p.NS, "neigh", "add", "169.254.1.1", "lladdr", p.HostMAC.String(), "dev", "eth0", "nud", "permanent")
	ip(p.NS, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
	ip(p.NS, "-6", "neigh", "add", "fe80::1", "lladdr", p.HostMAC.String(), "dev", "eth0", "nud", "permanent")
	ip(tp.Node, "route", "add", p.IP4.String()+"/32", "dev", p.HostName)
	ip(tp.Node, "neigh", "add", p.IP4.String(), "lladdr", p.PodMAC.String(), "dev", p.HostName, "nud", "permanent")
	ip(tp.Node, "-6", "route", "add", p.IP6.String()+"/128", "dev", p.HostName)
	ip(tp.Node, "-6", "neigh", "add", p.IP6.String(), "lladdr", p.PodMAC.String(), "dev", p.HostName, "nud", "permanent")
	p.HostIdx = LinkIndex(t, tp.Node, p.HostName)
	p.PodIdx = LinkIndex(t, p.NS, "eth0")
	return p
}

// LinkIndex is the index of link name in ns.
func LinkIndex(t *testing.T, ns *harness.NetNS, name string) int {
	t.Helper()
	var idx int
	if err := ns.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return nil
	}); err != nil {
		t.Fatalf("link %s in %s: %v", name, ns, err)
	}
	return idx
}

// PinDir returns a pin directory (not created) on a fresh bpffs of e.
func PinDir(e *harness.Env) string { return filepath.Join(e.BPFFS(), "warpnet") }

// InNode runs fn in the node namespace; fails the test on error.
func (tp *Topo) InNode(fn func() error) {
	tp.T.Helper()
	if err := tp.Node.Do(fn); err != nil {
		tp.T.Fatal(err)
	}
}

// Ping pings dst from p and reports whether it answered.
func Ping(t *testing.T, p *Pod, dst netip.Addr, extra ...string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	args := append([]string{"ping", "-n", "-c", "3", "-i", "0.1", "-W", "2"}, extra...)
	out, err := p.NS.Run(ctx, append(args, dst.String())...)
	return err == nil, out
}

// MustPing is Ping that fails the test without an answer.
func MustPing(t *testing.T, p *Pod, dst netip.Addr, extra ...string) {
	t.Helper()
	if ok, out := Ping(t, p, dst, extra...); !ok {
		t.Fatalf("ping %s from %s failed:\n%s", dst, p.NS, out)
	}
}

// TCPEcho sends size random bytes from pod a to an echo server in pod b at
// dst and checks they come back intact. Real TCP through whatever path the
// datapath chose: full-size segments, checksums, both directions.
func TCPEcho(t *testing.T, a, b *Pod, dst netip.Addr, size int) {
	t.Helper()
	var ln net.Listener
	if err := b.NS.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = io.CopyN(c, c, int64(size))
		srvErr <- err
	}()
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	var c net.Conn
	if err := a.NS.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", ln.Addr(), a.NS, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	wErr := make(chan error, 1)
	go func() { _, err := c.Write(payload); wErr <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("tcp %s -> %s: read echo: %v", a.NS, ln.Addr(), err)
	}
	if err := <-wErr; err != nil {
		t.Fatalf("tcp write: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("tcp echo server: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("tcp %s -> %s: echo differs", a.NS, ln.Addr())
	}
}

// FamilyName is "ipv4" or "ipv6".
func FamilyName(a netip.Addr) string {
	if a.Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// UnmountAll unmounts everything stacked on path.
func UnmountAll(path string) error {
	for {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			if err == unix.EINVAL {
				return nil // not a mount point (any more)
			}
			return err
		}
	}
}

// CountMounts counts the bpf filesystems mounted at path.
func CountMounts(path string) int {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return -1
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != path {
			continue
		}
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) && f[i+1] == "bpf" {
			n++
		}
	}
	return n
}
