package servicelb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/l4"
)

// The socket iterators of sock_iter.c, loaded on demand: each use loads the
// programs it needs on the pinned lb_sock, runs them and closes them.
// lb_sock is socket-local storage: the kernel offers no key-by-key walk of
// it from user space, so everything that reads it whole goes through an
// iterator.

// Target is a backend whose sockets DestroySockets destroys, over one
// protocol.
type Target struct {
	Backend
	Proto l4.Protocol
}

func (t Target) String() string { return t.Backend.String() + "/" + t.Proto.String() }

// DestroySockets destroys the sockets that the load balancer connected to
// any of the targets, in the network namespaces at the given paths
// (/proc/PID/ns/net, /run/netns/NAME), or in every network namespace it can
// find (those of all processes and those mounted under /run/netns) when
// none are given. It returns how many it destroyed per target (targets
// without any are left out).
//
// It exists for connected UDP sockets: after a backend leaves its service,
// a connected UDP socket (a DNS resolver's, say) would keep sending to it,
// while kube-proxy would have flushed the conntrack entries that sent it
// there. Destroying the socket (bpf_sock_destroy from an iter/udp or
// iter/tcp program, kernel >= 6.5) makes its next read or write fail with
// ECONNABORTED, so the application opens a new one. Only sockets whose peer
// is a target and whose lb_sock state says the load balancer chose it are
// destroyed: a pod's own connections to the same address are left alone.
//
// However many targets there are, the programs are loaded once and every
// namespace is entered once: socket iterators only see the namespace they
// are opened in, so the cost is one walk of each namespace's TCP and UDP
// sockets.
func (l *LB) DestroySockets(targets []Target, netns ...string) (map[Target]int, error) {
	if err := l.writable(); err != nil {
		return nil, err
	}
	keys := map[lbiterTarget]Target{}
	var tcp, udp bool
	for _, t := range targets {
		t.Addr = t.Addr.Unmap()
		if !t.Addr.IsValid() || t.Port == 0 {
			return nil, fmt.Errorf("servicelb: DestroySockets: invalid backend %s", t.Backend)
		}
		if t.Proto != l4.TCP && t.Proto != l4.UDP {
			return nil, fmt.Errorf("servicelb: DestroySockets: protocol %d is not TCP or UDP", t.Proto)
		}
		tcp, udp = tcp || t.Proto == l4.TCP, udp || t.Proto == l4.UDP
		keys[targetKey(t)] = t
	}
	if len(keys) == 0 {
		return map[Target]int{}, nil
	}
	spec, err := loadLbiter()
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	spec.Maps[lbiterMapLbTargets].MaxEntries = uint32(len(keys))
	var objs struct {
		Tcp     *ebpf.Program `ebpf:"lb_destroy_tcp"`
		Udp     *ebpf.Program `ebpf:"lb_destroy_udp"`
		Targets *ebpf.Map     `ebpf:"lb_targets"`
	}
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{lbiterMapLbSock: l.objs.LbSock}})
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w (bpf_sock_destroy needs kernel >= 6.5)", pinset.LoadError(err))
	}
	defer objs.Tcp.Close()
	defer objs.Udp.Close()
	defer objs.Targets.Close()
	for k := range keys {
		if err := objs.Targets.Put(k, uint8(1)); err != nil {
			return nil, fmt.Errorf("servicelb: write lb_targets: %w", err)
		}
	}
	var progs []*ebpf.Program
	if tcp {
		progs = append(progs, objs.Tcp)
	}
	if udp {
		progs = append(progs, objs.Udp)
	}
	iters, done, err := attachIters(progs...)
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	defer done()

	all := len(netns) == 0
	if all {
		netns = allNetNS()
	}
	out := map[Target]int{}
	var errs []error
	for _, path := range netns {
		err := walkIn(path, iters, destroyRecord, func(rec []byte) {
			var k lbiterTarget
			if binary.Read(bytes.NewReader(rec[8:]), binary.LittleEndian, &k) == nil {
				if t, ok := keys[k]; ok {
					out[t]++
				}
			}
		})
		if err != nil {
			if all && errors.Is(err, os.ErrNotExist) {
				continue // its last process exited meanwhile
			}
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// targetKey is t as the iterators see a socket's peer.
func targetKey(t Target) lbiterTarget {
	addr, family := pinset.EncodeAddr(t.Addr)
	return lbiterTarget{Addr: addr, Port: netPort(t.Port), Family: family, Proto: uint8(t.Proto)}
}

// destroyRecord is the size of what the destroy iterators write per socket:
// its cookie and its target.
var destroyRecord = 8 + binary.Size(lbiterTarget{})

// walkIn runs the iterators in the network namespace at path and hands
// each record of size bytes they write to found.
func walkIn(path string, iters []*link.Iter, size int, found func([]byte)) error {
	netns, err := ns.GetNS(path)
	if err != nil {
		var nsErr ns.NSPathNotExistErr
		if errors.As(err, &nsErr) {
			return fmt.Errorf("servicelb: netns %s: %w", path, os.ErrNotExist)
		}
		return fmt.Errorf("servicelb: netns %s: %w", path, err)
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		for _, it := range iters {
			r, err := it.Open() // the iterator walks the namespace it is opened in
			if err != nil {
				return err
			}
			data, err := io.ReadAll(r)
			r.Close()
			for ; len(data) >= size; data = data[size:] {
				found(data[:size])
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("servicelb: walk the sockets of %s: %w", path, err)
	}
	return nil
}

// walkAll runs the iterators in every network namespace (see allNetNS);
// namespaces that vanish meanwhile are skipped.
func walkAll(iters []*link.Iter, size int, found func([]byte)) error {
	var errs []error
	for _, path := range allNetNS() {
		if err := walkIn(path, iters, size, found); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// attachIters attaches an iterator per program; close closes them.
func attachIters(progs ...*ebpf.Program) (iters []*link.Iter, close func(), err error) {
	close = func() {
		for _, it := range iters {
			it.Close()
		}
	}
	for _, p := range progs {
		it, err := link.AttachIter(link.IterOptions{Program: p})
		if err != nil {
			close()
			return nil, nil, fmt.Errorf("attach socket iterator: %w", err)
		}
		iters = append(iters, it)
	}
	return iters, close, nil
}

// allNetNS lists one path per network namespace: those of all processes
// and the ones mounted under /run/netns (which may have no process).
func allNetNS() []string {
	seen := map[[2]uint64]bool{}
	var out []string
	add := func(path string) {
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil {
			return
		}
		k := [2]uint64{st.Dev, st.Ino}
		if !seen[k] {
			seen[k] = true
			out = append(out, path)
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				add(filepath.Join("/proc", e.Name(), "ns", "net"))
			}
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			add(filepath.Join("/run/netns", e.Name()))
		}
	}
	return out
}

// RevNAT returns the remembered translations of open sockets (for
// warpctl), one entry per socket and service. Socket-local storage is only
// readable through its socket: RevNAT loads socket iterators (nothing is
// pinned or attached to a cgroup; it needs the privileges to load them,
// root or CAP_BPF with CAP_SYS_ADMIN to enter namespaces) and walks the
// sockets of every network namespace it can find (those of all processes
// and those mounted under /run/netns): a socket in a namespace that is
// neither is not shown.
func (l *LB) RevNAT() ([]RevNATEntry, error) {
	spec, err := loadLbiter()
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	var objs struct {
		Tcp *ebpf.Program `ebpf:"lb_dump_tcp"`
		Udp *ebpf.Program `ebpf:"lb_dump_udp"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{lbiterMapLbSock: l.objs.LbSock}}); err != nil {
		return nil, fmt.Errorf("servicelb: %w", pinset.LoadError(err))
	}
	defer objs.Tcp.Close()
	defer objs.Udp.Close()
	iters, done, err := attachIters(objs.Tcp, objs.Udp)
	if err != nil {
		return nil, fmt.Errorf("servicelb: %w", err)
	}
	defer done()
	size := 8 + binary.Size(lbSockState{})
	var out []RevNATEntry
	seen := map[uint64]bool{}
	var errs []error
	err = walkAll(iters, size, func(rec []byte) {
		cookie := binary.LittleEndian.Uint64(rec)
		var st lbSockState
		if err := binary.Read(bytes.NewReader(rec[8:]), binary.LittleEndian, &st); err != nil {
			errs = append(errs, err)
			return
		}
		if seen[cookie] {
			return
		}
		seen[cookie] = true
		for _, s := range st.Slots {
			if s.Family == 0 {
				continue
			}
			out = append(out, RevNATEntry{
				Cookie:    cookie,
				Frontend:  Frontend{Addr: pinset.DecodeAddr(s.FeAddr, s.Family), Port: netPort(s.FePort), Proto: l4.Protocol(s.Proto)},
				Backend:   Backend{Addr: pinset.DecodeAddr(s.BeAddr, s.Family), Port: netPort(s.BePort)},
				ServiceID: s.SvcId,
				BackendID: s.BackendId,
			})
		}
	})
	if err := errors.Join(append(errs, err)...); err != nil {
		return out, fmt.Errorf("servicelb: read lb_sock: %w", err)
	}
	return out, nil
}

// copySockets copies every socket's state from the lb_sock src into the
// lb_sock dst (a rebuild's new maps), in every network namespace it can
// find, leaving sockets that dst already has alone.
func copySockets(src, dst *ebpf.Map) error {
	spec, err := loadLbiter()
	if err != nil {
		return err
	}
	var objs struct {
		Tcp *ebpf.Program `ebpf:"lb_copy_tcp"`
		Udp *ebpf.Program `ebpf:"lb_copy_udp"`
	}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{lbiterMapLbSock: src, lbiterMapLbSockNew: dst}}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return pinset.LoadError(err)
	}
	defer objs.Tcp.Close()
	defer objs.Udp.Close()
	iters, done, err := attachIters(objs.Tcp, objs.Udp)
	if err != nil {
		return err
	}
	defer done()
	return walkAll(iters, 1, func([]byte) {})
}
