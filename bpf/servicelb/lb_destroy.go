package servicelb

import (
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

// DestroySockets destroys the sockets that the load balancer connected to
// backend b over proto, in the network namespaces at the given paths
// (/proc/PID/ns/net, /run/netns/NAME), or in every network namespace it can
// find (those of all processes and those mounted under /run/netns) when
// none are given. It returns how many it destroyed.
//
// It exists for connected UDP sockets: after b leaves its service, a
// connected UDP socket (a DNS resolver's, say) would keep sending to it,
// while kube-proxy would have flushed the conntrack entries that sent it
// there. Destroying the socket (bpf_sock_destroy from an iter/udp or
// iter/tcp program, kernel >= 6.5) makes its next read or write fail with
// ECONNABORTED, so the application opens a new one. Only sockets whose peer
// is b and whose reverse translation says the load balancer chose b are
// destroyed: a pod's own connections to b's address are left alone.
//
// Socket iterators only see the namespace they are opened in, hence one
// pass per namespace.
func (l *LB) DestroySockets(b Backend, proto l4.Protocol, netns ...string) (int, error) {
	if err := l.writable(); err != nil {
		return 0, err
	}
	b.Addr = b.Addr.Unmap()
	if !b.Addr.IsValid() || b.Port == 0 {
		return 0, fmt.Errorf("servicelb: DestroySockets: invalid backend %s", b)
	}
	if proto != l4.TCP && proto != l4.UDP {
		return 0, fmt.Errorf("servicelb: DestroySockets: protocol %d is not TCP or UDP", proto)
	}
	spec, err := loadLbdestroy()
	if err != nil {
		return 0, fmt.Errorf("servicelb: %w", err)
	}
	addr, family := pinset.EncodeAddr(b.Addr)
	if err := spec.Variables[lbdestroyVarTarget].Set(lbBackend{Addr: addr, Port: netPort(b.Port), Family: family}); err != nil {
		return 0, fmt.Errorf("servicelb: %w", err)
	}
	revnat := l.objs.LbRevnat
	spec.Maps[lbdestroyMapLbRevnat].MaxEntries = revnat.MaxEntries()
	var progs lbdestroyPrograms
	err = spec.LoadAndAssign(&progs, &ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{lbdestroyMapLbRevnat: revnat},
	})
	if err != nil {
		return 0, fmt.Errorf("servicelb: %w (bpf_sock_destroy needs kernel >= 6.5)", pinset.LoadError(err))
	}
	defer progs.Close()
	prog := progs.LbDestroyTcp
	if proto == l4.UDP {
		prog = progs.LbDestroyUdp
	}
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return 0, fmt.Errorf("servicelb: attach socket iterator: %w", err)
	}
	defer it.Close()

	all := len(netns) == 0
	if all {
		netns = allNetNS()
	}
	total := 0
	var errs []error
	for _, path := range netns {
		n, err := destroyIn(path, it)
		total += n
		if err != nil {
			if all && errors.Is(err, os.ErrNotExist) {
				continue // its last process exited meanwhile
			}
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// destroyIn runs the iterator in the network namespace at path; every
// destroyed socket wrote its cookie (8 bytes).
func destroyIn(path string, it *link.Iter) (int, error) {
	netns, err := ns.GetNS(path)
	if err != nil {
		var nsErr ns.NSPathNotExistErr
		if errors.As(err, &nsErr) {
			return 0, fmt.Errorf("servicelb: netns %s: %w", path, os.ErrNotExist)
		}
		return 0, fmt.Errorf("servicelb: netns %s: %w", path, err)
	}
	defer netns.Close()
	var n int
	err = netns.Do(func(ns.NetNS) error {
		r, err := it.Open() // the iterator walks the namespace it is opened in
		if err != nil {
			return err
		}
		defer r.Close()
		data, err := io.ReadAll(r)
		n = len(data) / 8
		return err
	})
	if err != nil {
		return n, fmt.Errorf("servicelb: destroy sockets in %s: %w", path, err)
	}
	return n, nil
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
