package bpf

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

// This file builds the routed topology warp-veth creates, by hand: a "node"
// namespace (no link to the machine's namespace) with IP forwarding, and pod
// namespaces hanging off it through veth pairs with explicit MACs, /32 and
// /128 pod addresses, a link-local gateway with permanent neighbour entries
// in the pod, and a host route plus permanent neighbour entry per pod in the
// node.

// testPod is one pod of a topo.
type testPod struct {
	ns       *harness.NetNS
	hostName string // host end, in the node namespace
	hostIdx  int
	podIdx   int
	podMAC   net.HardwareAddr
	hostMAC  net.HardwareAddr
	ip4, ip6 netip.Addr
}

// endpoint returns the pod's Endpoint with the given owner and features.
func (p *testPod) endpoint(owner uint64, f Features) Endpoint {
	return Endpoint{
		Owner: owner, HostIfIndex: p.hostIdx, PodMAC: p.podMAC, HostMAC: p.hostMAC,
		IPs: []netip.Addr{p.ip4, p.ip6}, Features: f,
	}
}

type topo struct {
	t      *testing.T
	e      *harness.Env
	node   *harness.NetNS
	pods   []*testPod
	pinDir string
}

// newTopo builds a node with n pods and a private bpffs for pinning.
func newTopo(t *testing.T, n int) *topo {
	t.Helper()
	e := harness.New(t)
	tp := &topo{t: t, e: e, pinDir: privateBPFFS(t, e)}
	tp.node = e.NetNS("node")
	tp.node.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// The node's own address: the source of ICMP errors it sends to pods.
	e.Addr(tp.node, "lo", "10.0.0.1/32")
	e.Addr(tp.node, "lo", "fd00:ffff::1/128")
	for i := range n {
		tp.pods = append(tp.pods, tp.addPod(i))
	}
	return tp
}

func (tp *topo) addPod(i int) *testPod {
	t, e := tp.t, tp.e
	t.Helper()
	p := &testPod{
		ns:       e.NetNS(fmt.Sprintf("pod%d", i)),
		hostName: fmt.Sprintf("warp%011x", 0xabc000+i),
		podMAC:   net.HardwareAddr{0x02, 0xaa, 0, 0, byte(i), 0x02},
		hostMAC:  net.HardwareAddr{0x02, 0xaa, 0, 0, byte(i), 0x01},
		ip4:      netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)}),
		ip6:      netip.MustParseAddr(fmt.Sprintf("fd00::%x", 10+i)),
	}
	e.Veth(tp.node, p.hostName, p.ns, "eth0")
	ip := func(ns *harness.NetNS, args ...string) { ns.Exec(t, append([]string{"ip"}, args...)...) }
	ip(tp.node, "link", "set", p.hostName, "address", p.hostMAC.String())
	ip(p.ns, "link", "set", "eth0", "address", p.podMAC.String())
	e.Addr(p.ns, "eth0", p.ip4.String()+"/32")
	e.Addr(p.ns, "eth0", p.ip6.String()+"/128")
	ip(p.ns, "route", "add", "169.254.1.1/32", "dev", "eth0", "scope", "link")
	ip(p.ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
	ip(p.ns, "neigh", "add", "169.254.1.1", "lladdr", p.hostMAC.String(), "dev", "eth0", "nud", "permanent")
	ip(p.ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
	ip(p.ns, "-6", "neigh", "add", "fe80::1", "lladdr", p.hostMAC.String(), "dev", "eth0", "nud", "permanent")
	ip(tp.node, "route", "add", p.ip4.String()+"/32", "dev", p.hostName)
	ip(tp.node, "neigh", "add", p.ip4.String(), "lladdr", p.podMAC.String(), "dev", p.hostName, "nud", "permanent")
	ip(tp.node, "-6", "route", "add", p.ip6.String()+"/128", "dev", p.hostName)
	ip(tp.node, "-6", "neigh", "add", p.ip6.String(), "lladdr", p.podMAC.String(), "dev", p.hostName, "nud", "permanent")
	p.hostIdx = linkIndex(t, tp.node, p.hostName)
	p.podIdx = linkIndex(t, p.ns, "eth0")
	return p
}

func linkIndex(t *testing.T, ns *harness.NetNS, name string) int {
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

// privateBPFFS mounts a fresh bpffs under the test's temp dir and returns a
// pin directory on it, so tests never touch /sys/fs/bpf/warpnet.
func privateBPFFS(t *testing.T, e *harness.Env) string {
	t.Helper()
	dir, err := os.MkdirTemp(e.TempDir, "bpffs-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	e.Defer("unmount bpffs "+dir, func() error { return unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "warpnet")
}

// inNode runs fn in the node namespace; fails the test on error.
func (tp *topo) inNode(fn func() error) {
	tp.t.Helper()
	if err := tp.node.Do(fn); err != nil {
		tp.t.Fatal(err)
	}
}

// open opens the datapath in the node namespace and closes it at cleanup.
func (tp *topo) open() *Datapath {
	tp.t.Helper()
	var d *Datapath
	tp.inNode(func() (err error) { d, err = Open(tp.pinDir); return err })
	tp.t.Cleanup(func() { d.Close() })
	return d
}

// register adds the pod's endpoint and attaches both programs.
func (tp *topo) register(d *Datapath, p *testPod, owner uint64, f Features) {
	tp.t.Helper()
	tp.inNode(func() error {
		if err := d.AddEndpoint(p.endpoint(owner, f)); err != nil {
			return err
		}
		return d.AttachHost(p.hostIdx)
	})
	if err := p.ns.Do(func() error { return d.AttachPod(p.podIdx) }); err != nil {
		tp.t.Fatal(err)
	}
}

func (tp *topo) counters(d *Datapath, p *testPod) Counters {
	tp.t.Helper()
	c, err := d.Counters(p.hostIdx)
	if err != nil {
		tp.t.Fatal(err)
	}
	return c
}

// ping pings dst from p and reports whether it answered.
func ping(t *testing.T, p *testPod, dst netip.Addr, extra ...string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	args := append([]string{"ping", "-n", "-c", "3", "-i", "0.1", "-W", "2"}, extra...)
	out, err := p.ns.Run(ctx, append(args, dst.String())...)
	return err == nil, out
}

func mustPing(t *testing.T, p *testPod, dst netip.Addr, extra ...string) {
	t.Helper()
	if ok, out := ping(t, p, dst, extra...); !ok {
		t.Fatalf("ping %s from %s failed:\n%s", dst, p.ns, out)
	}
}

// tcpEcho sends size random bytes from pod a to an echo server in pod b at
// dst and checks they come back intact. Real TCP through whatever path the
// datapath chose: full-size segments, checksums, both directions.
func tcpEcho(t *testing.T, a, b *testPod, dst netip.Addr, size int) {
	t.Helper()
	var ln net.Listener
	if err := b.ns.Do(func() (err error) {
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
	if err := a.ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", ln.Addr(), a.ns, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	wErr := make(chan error, 1)
	go func() { _, err := c.Write(payload); wErr <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("tcp %s -> %s: read echo: %v", a.ns, ln.Addr(), err)
	}
	if err := <-wErr; err != nil {
		t.Fatalf("tcp write: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("tcp echo server: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("tcp %s -> %s: echo differs", a.ns, ln.Addr())
	}
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// unmountAll unmounts everything stacked on path.
func unmountAll(path string) error {
	for {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			if err == unix.EINVAL {
				return nil // not a mount point (any more)
			}
			return err
		}
	}
}

// countMounts counts the bpf filesystems mounted at path.
func countMounts(path string) int {
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
