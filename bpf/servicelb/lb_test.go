package servicelb

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/warpnet/warpnet/bpf/internal/topo"
	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// nProgs is the number of programs, one link per cgroup each.
var nProgs = len(pinset.Programs(&lbPrograms{}))

// --- unit tests (no root) ---

func TestLBSpecMatchesGo(t *testing.T) {
	spec, err := loadLb()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		typ        ebpf.MapType
		key, value any
	}{
		lbMapLbServices: {ebpf.Hash, lbSvcKey{}, lbSvc{}},
		lbMapLbBackends: {ebpf.Hash, uint32(0), lbBackend{}},
		lbMapLbSock:     {ebpf.SkStorage, int32(0), lbSockState{}},
		lbMapLbAffinity: {ebpf.LRUHash, lbAffKey{}, lbAff{}},
		lbMapLbConfig:   {ebpf.Array, uint32(0), lbConfig{}},
		lbMapLbMeta:     {ebpf.Array, uint32(0), pinset.Meta{}},
	}
	if len(spec.Maps) != len(want) || len(pinset.Maps(&lbMaps{})) != len(want) {
		t.Errorf("ELF has %d maps, lbMaps %d, want %d", len(spec.Maps), len(pinset.Maps(&lbMaps{})), len(want))
	}
	for name, w := range want {
		ms := spec.Maps[name]
		if ms == nil {
			t.Errorf("map %s missing", name)
			continue
		}
		if ms.Type != w.typ || ms.Pinning != ebpf.PinByName {
			t.Errorf("%s: type %v pinning %v", name, ms.Type, ms.Pinning)
		}
		if k, v := binary.Size(w.key), binary.Size(w.value); uint32(k) != ms.KeySize || uint32(v) != ms.ValueSize {
			t.Errorf("%s: key/value size %d/%d, Go types have %d/%d", name, ms.KeySize, ms.ValueSize, k, v)
		}
	}
	// The default capacities of the ELF are DefaultSizes.
	for name, n := range DefaultSizes.maxEntries() {
		if spec.Maps[name].MaxEntries != n {
			t.Errorf("%s: ELF max_entries %d, DefaultSizes give %d", name, spec.Maps[name].MaxEntries, n)
		}
	}
	// Each program is attached to its hook (from its ELF section).
	hooks := map[string]ebpf.AttachType{
		lbProgLbConnect4:     ebpf.AttachCGroupInet4Connect,
		lbProgLbConnect6:     ebpf.AttachCGroupInet6Connect,
		lbProgLbSendmsg4:     ebpf.AttachCGroupUDP4Sendmsg,
		lbProgLbSendmsg6:     ebpf.AttachCGroupUDP6Sendmsg,
		lbProgLbRecvmsg4:     ebpf.AttachCGroupUDP4Recvmsg,
		lbProgLbRecvmsg6:     ebpf.AttachCGroupUDP6Recvmsg,
		lbProgLbGetpeername4: ebpf.AttachCgroupInet4GetPeername,
		lbProgLbGetpeername6: ebpf.AttachCgroupInet6GetPeername,
	}
	types, err := attachTypes()
	if err != nil || !reflect.DeepEqual(types, hooks) || len(pinset.Programs(&lbPrograms{})) != len(hooks) {
		t.Errorf("attach types %v (%v), want %v", types, err, hooks)
	}
	// sock_iter.c reads and writes lb_sock with the same layout.
	ispec, err := loadLbiter()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{lbiterMapLbSock, lbiterMapLbSockNew} {
		if d, m := ispec.Maps[name], spec.Maps[lbMapLbSock]; d.KeySize != m.KeySize ||
			d.ValueSize != m.ValueSize || d.Type != m.Type || d.Flags != m.Flags {
			t.Errorf("sock_iter.c's %s differs from lb_sock: %v vs %v", name, d, m)
		}
	}
	if binary.Size(lbiterSockState{}) != binary.Size(lbSockState{}) {
		t.Error("sock_iter.c's struct sock_state differs")
	}
}

func TestLBEncoding(t *testing.T) {
	fe := Frontend{Addr: netip.MustParseAddr("::ffff:10.96.0.10"), Port: 80, Proto: l4.TCP}
	n, err := fe.normalize()
	if err != nil {
		t.Fatal(err)
	}
	k := n.key(0, 0)
	if k.Family != pinset.FamilyV4 || k.Addr != [16]byte{10, 96, 0, 10} || k.Port != 0x5000 || k.Proto != 6 {
		t.Errorf("key of %s: %+v", fe, k)
	}
	if got := frontendOf(k); got != (Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: l4.TCP}) {
		t.Errorf("round trip: %v", got)
	}
	k6 := Frontend{Addr: netip.MustParseAddr("fd00:96::10"), Port: 443, Proto: l4.UDP}.key(2, 7)
	if k6.Family != pinset.FamilyV6 || frontendOf(k6).Addr.String() != "fd00:96::10" || k6.Slot != 7 || k6.Gen != 2 {
		t.Errorf("v6 key: %+v", k6)
	}
}

func TestLBServiceValidation(t *testing.T) {
	good := Service{
		Frontend: Frontend{Addr: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: l4.TCP},
		ID:       1,
		Backends: []Backend{{netip.MustParseAddr("10.244.0.1"), 8080}, {netip.MustParseAddr("::ffff:10.244.0.2"), 8080}},
	}
	svc, ms, err := good.validate(100)
	if err != nil || ms != 0 || !svc.Backends[1].Addr.Is4() {
		t.Fatalf("valid service: %+v %d %v", svc, ms, err)
	}
	good.AffinityTimeout = 1500 * time.Microsecond
	if _, ms, _ := good.validate(100); ms != 2 {
		t.Errorf("1.5ms affinity rounds to %d ms, want 2", ms)
	}
	bad := map[string]func(*Service){
		"no address":     func(s *Service) { s.Addr = netip.Addr{} },
		"port 0":         func(s *Service) { s.Port = 0 },
		"icmp":           func(s *Service) { s.Proto = 1 },
		"mixed families": func(s *Service) { s.Backends[0].Addr = netip.MustParseAddr("fd00::1") },
		"backend port 0": func(s *Service) { s.Backends[0].Port = 0 },
		"duplicate":      func(s *Service) { s.Backends[1] = s.Backends[0] },
		"unspecified":    func(s *Service) { s.Backends[0].Addr = netip.IPv4Unspecified() },
		"negative aff":   func(s *Service) { s.AffinityTimeout = -time.Second },
		"too many":       func(s *Service) { s.Backends = append(s.Backends, make([]Backend, 99)...) },
	}
	for name, mutate := range bad {
		s := good
		s.Backends = slices.Clone(good.Backends)
		mutate(&s)
		if _, _, err := s.validate(100); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// --- e2e: a node namespace, a client pod and two backend pods ---

var (
	svcIP4 = netip.MustParseAddr("10.96.0.10")
	svcIP6 = netip.MustParseAddr("fd00:96::10")
	mapped = netip.MustParseAddr("::ffff:10.96.0.10")
)

const (
	svcPort = 80
	bePort  = 8080
)

// lbEnv is the routed topology of internal/topo with three pods: pod0 runs
// the clients, pod1 and pod2 echo servers ("pod1:<msg>"); the node has
// unreachable routes for the service ranges, so an untranslated connect
// fails fast and nothing leaves the test's namespaces. The LB is attached
// to a private cgroup in which every client is born.
type lbEnv struct {
	*topo.Topo
	cg     *harness.Cgroup
	lb     *LB
	client *lbClient
}

func newLBEnv(t *testing.T) *lbEnv {
	t.Helper()
	tp := topo.New(t, 3)
	tp.Node.Exec(t, "ip", "route", "add", "unreachable", "10.96.0.0/16")
	tp.Node.Exec(t, "ip", "-6", "route", "add", "unreachable", "fd00:96::/64")
	tp.Env.EchoServer(tp.Pods[1].NS, "pod1", bePort)
	tp.Env.EchoServer(tp.Pods[2].NS, "pod2", bePort)
	le := &lbEnv{Topo: tp, cg: tp.Env.Cgroup("pods")}
	le.lb = le.open(Sizes{})
	if err := le.lb.Attach(le.cg.Path); err != nil {
		t.Fatal(err)
	}
	le.client = startLBClient(t, le.cg, tp.Pods[0].NS)
	return le
}

func (le *lbEnv) open(sizes Sizes) *LB {
	le.T.Helper()
	l, err := Open(le.PinDir, sizes)
	if err != nil {
		le.T.Fatal(err)
	}
	le.T.Cleanup(func() { l.Close() })
	return l
}

// backend is pod i's echo server in the family of a.
func (le *lbEnv) backend(a netip.Addr, i int) Backend {
	p := le.Pods[i]
	if a.Unmap().Is4() {
		return Backend{p.IP4, bePort}
	}
	return Backend{p.IP6, bePort}
}

// svc is a service at a:80 over proto with the echo servers of the given
// pods as backends.
func (le *lbEnv) svc(a netip.Addr, proto l4.Protocol, id uint32, pods ...int) Service {
	s := Service{Frontend: Frontend{Addr: a, Port: svcPort, Proto: proto}, ID: id, Backends: []Backend{}}
	for _, i := range pods {
		s.Backends = append(s.Backends, le.backend(a, i))
	}
	return s
}

func (le *lbEnv) upsert(svcs ...Service) {
	le.T.Helper()
	for _, s := range svcs {
		if err := le.lb.Upsert(s); err != nil {
			le.T.Fatal(err)
		}
	}
}

// all four services (TCP/UDP × IPv4/IPv6) on both backends; the IPv4 and
// IPv6 frontends of one service port share its ID.
func (le *lbEnv) upsertAll(pods ...int) {
	le.T.Helper()
	le.upsert(le.svc(svcIP4, l4.TCP, 1, pods...), le.svc(svcIP6, l4.TCP, 1, pods...),
		le.svc(svcIP4, l4.UDP, 2, pods...), le.svc(svcIP6, l4.UDP, 2, pods...))
}

// dst is a client request to the service as seen through socket family
// fam (6 with an IPv4 address means IPv4-mapped).
func dst(op string, fam int, a netip.Addr, msg string) lbReq {
	return lbReq{Op: op, Family: fam, Addr: a.String(), Port: svcPort, Msg: msg}
}

var lbFamilies = []struct {
	name string
	fam  int
	addr netip.Addr
}{
	{"ipv4", 4, svcIP4},
	{"ipv6", 6, svcIP6},
	{"mapped", 6, mapped},
}

func isBackend(s string) bool { return s == "pod1" || s == "pod2" }

func TestLBTranslate(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	c := le.client
	for _, f := range lbFamilies {
		want := netip.AddrPortFrom(f.addr, svcPort).String()
		t.Run(f.name, func(t *testing.T) {
			c.t = t
			defer func() { c.t = le.T }()
			// TCP and connected UDP reach a backend; getpeername
			// shows the service.
			for _, op := range []string{"tcp", "udp-conn"} {
				r := c.must(dst(op, f.fam, f.addr, "hello"))
				if !isBackend(r.Server) {
					t.Errorf("%s: answered by %q", op, r.Server)
				}
				if r.Peer != want {
					t.Errorf("%s: getpeername %s, want %s", op, r.Peer, want)
				}
			}
			// Unconnected UDP: the replies come from the service
			// address (recvmsg), and one socket stays on one backend.
			req := dst("udp-unconn", f.fam, f.addr, "dgram")
			req.Count = 10
			r := c.must(req)
			for i := range r.Servers {
				if r.Servers[i] != r.Servers[0] || !isBackend(r.Servers[i]) {
					t.Errorf("unconnected UDP socket switched backends: %v", r.Servers)
					break
				}
				if r.From[i] != want {
					t.Errorf("reply %d from %s, want %s", i, r.From[i], want)
				}
			}
			// A second connect() on a connected TCP socket fails
			// with EISCONN and changes nothing (the kernel runs the
			// hook only for an unconnected socket in TCP_CLOSE).
			for range 10 {
				r := c.must(dst("tcp-twice", f.fam, f.addr, "twice"))
				if r.Peer != want || !isBackend(r.Server) {
					t.Fatalf("after a second connect: peer %s, server %q", r.Peer, r.Server)
				}
			}
			// Connections spread over both backends.
			loop := dst("tcp-loop", f.fam, f.addr, "spread")
			loop.Count, loop.Duration = 60, 20*time.Second
			r = c.do(loop)
			if r.Failed > 0 || r.OK != 60 || r.Hist["pod1"] == 0 || r.Hist["pod2"] == 0 {
				t.Errorf("60 connects: %d ok, %d failed %v, per backend %v", r.OK, r.Failed, r.Errors, r.Hist)
			}
			seen := map[string]bool{}
			for range 30 {
				seen[c.must(dst("udp-conn", f.fam, f.addr, "x")).Server] = true
			}
			if !seen["pod1"] || !seen["pod2"] {
				t.Errorf("30 connected UDP sockets all went to %v", seen)
			}
		})
	}

	t.Run("sticky-unconnected-udp", func(t *testing.T) {
		c.t = t
		defer func() { c.t = le.T }()
		req := dst("udp-unconn", 4, svcIP4, "s")
		req.Count, req.Name = 5, "sticky"
		first := c.must(req).Servers[0]
		other, gone := 2, 1
		if first == "pod2" {
			other, gone = 1, 2
		}
		// Its backend leaves: the socket moves to the other one and
		// stays there when the first comes back.
		le.upsert(le.svc(svcIP4, l4.UDP, 2, other))
		r := c.must(req)
		for _, s := range r.Servers {
			if s != fmt.Sprintf("pod%d", other) {
				t.Fatalf("after pod%d left: answered by %v", gone, r.Servers)
			}
		}
		le.upsert(le.svc(svcIP4, l4.UDP, 2, 1, 2))
		r = c.must(req)
		for i, s := range r.Servers {
			if s != fmt.Sprintf("pod%d", other) || r.From[i] != "10.96.0.10:80" {
				t.Fatalf("socket did not stay on pod%d: %v from %v", other, r.Servers, r.From)
			}
		}
		c.must(lbReq{Op: "close", Name: "sticky"})
	})

	t.Run("revnat-and-release", func(t *testing.T) {
		c.t = t
		defer func() { c.t = le.T }()
		open := dst("udp-open", 6, svcIP6, "keep")
		open.Name = "kept"
		r := c.must(open)
		if r.Cookie == 0 {
			t.Fatal("no socket cookie")
		}
		find := func() *RevNATEntry {
			entries, err := le.lb.RevNAT()
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if e.Cookie == r.Cookie {
					return &e
				}
			}
			return nil
		}
		e := find()
		wantFE := Frontend{Addr: svcIP6, Port: svcPort, Proto: l4.UDP}
		if e == nil || e.Frontend != wantFE || e.Backend != le.backend(svcIP6, map[string]int{"pod1": 1, "pod2": 2}[r.Server]) ||
			e.ServiceID != 2 {
			t.Fatalf("RevNAT entry of the socket: %+v (answered by %s)", e, r.Server)
		}
		// Socket-local storage is freed with the socket (UDP sockets
		// after an RCU grace period).
		c.must(lbReq{Op: "close", Name: "kept"})
		harness.WaitFor(t, "the closed socket's entry to go", 10*time.Second, func() bool { return find() == nil })
	})

	t.Run("services", func(t *testing.T) {
		got, err := le.lb.Services()
		if err != nil {
			t.Fatal(err)
		}
		want := []Service{le.svc(svcIP4, l4.TCP, 1, 1, 2), le.svc(svcIP4, l4.UDP, 2, 1, 2),
			le.svc(svcIP6, l4.TCP, 1, 1, 2), le.svc(svcIP6, l4.UDP, 2, 1, 2)}
		if !servicesEqual(got, want) {
			t.Errorf("Services() = %+v, want %+v", got, want)
		}
	})

	t.Run("other-protocols-pass", func(t *testing.T) {
		// A ping socket (ICMP, SOCK_DGRAM) connect()s through the same
		// hook: it must not be translated.
		le.Pods[0].NS.Exec(t, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
		c.t = t
		defer func() { c.t = le.T }()
		r := c.must(dst("icmp-conn", 4, svcIP4, ""))
		if !strings.HasPrefix(r.Peer, "10.96.0.10:") {
			t.Errorf("ping socket's peer is %s", r.Peer)
		}
	})
}

// servicesEqual compares services ignoring backend order.
func servicesEqual(a, b []Service) bool {
	if len(a) != len(b) {
		return false
	}
	norm := func(s Service) Service {
		s.Backends = slices.Clone(s.Backends)
		slices.SortFunc(s.Backends, func(x, y Backend) int { return strings.Compare(x.String(), y.String()) })
		if len(s.Backends) == 0 {
			s.Backends = nil
		}
		return s
	}
	for i := range a {
		if !reflect.DeepEqual(norm(a[i]), norm(b[i])) {
			return false
		}
	}
	return true
}

func TestLBNoBackends(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll() // no backends
	for _, f := range lbFamilies {
		for _, op := range []string{"tcp", "udp-conn", "udp-unconn"} {
			r := le.client.do(dst(op, f.fam, f.addr, "nobody"))
			if r.Errno != "ECONNREFUSED" {
				t.Errorf("%s %s: want ECONNREFUSED, got %q (%s)", f.name, op, r.Errno, r.Err)
			}
			// Loose bound (a loaded machine is slow, never this slow):
			// only catches a connect that waited for the client's 3 s
			// timeout instead of failing at once.
			if r.Elapsed > 2*time.Second {
				t.Errorf("%s %s: took %v to fail", f.name, op, r.Elapsed)
			}
		}
	}
	svcs, err := le.lb.Services()
	if err != nil || len(svcs) != 4 || len(svcs[0].Backends) != 0 {
		t.Errorf("Services() = %+v, %v", svcs, err)
	}
	// Backends arrive: connections work.
	le.upsertAll(2)
	if r := le.client.must(dst("tcp", 4, svcIP4, "now")); r.Server != "pod2" {
		t.Errorf("answered by %q", r.Server)
	}
}

// TestLBAffinity: a client sticks to its backend while its affinity entry
// is younger than the timeout, and is balanced again once it is older. The
// stickiness is checked with an hour-long timeout and the expiry with a 1 ms
// one (same service, same backends: the entries stay), so no step depends
// on how fast a loaded machine connects.
func TestLBAffinity(t *testing.T) {
	le := newLBEnv(t)
	withAffinity := func(a netip.Addr, timeout time.Duration) {
		s := le.svc(a, l4.TCP, 7, 1, 2) // one ID for both families
		s.AffinityTimeout = timeout
		le.upsert(s)
	}
	withAffinity(svcIP4, time.Hour)
	withAffinity(svcIP6, time.Hour)
	c := le.client
	sticky := func(fam int, a netip.Addr) string {
		t.Helper()
		loop := dst("tcp-loop", fam, a, "aff")
		loop.Count, loop.Duration = 20, 10*time.Second
		r := c.do(loop)
		if r.Failed > 0 || len(r.Hist) != 1 {
			t.Fatalf("%s: 20 connects with affinity: %d failed %v, per backend %v", a, r.Failed, r.Errors, r.Hist)
		}
		for s := range r.Hist {
			return s
		}
		return ""
	}
	first := sticky(4, svcIP4)
	sticky(6, svcIP6)

	entries, err := le.lb.Affinity()
	if err != nil {
		t.Fatal(err)
	}
	var v4 *AffinityEntry
	for i, e := range entries {
		if e.ServiceID == 7 && !e.IPv6 {
			v4 = &entries[i]
		}
	}
	if v4 == nil || v4.Backend.Addr != le.backend(svcIP4, map[string]int{"pod1": 1, "pod2": 2}[first]).Addr ||
		v4.NetNSCookie == 0 || time.Since(v4.LastUsed) > time.Minute || time.Since(v4.LastUsed) < -time.Second {
		t.Fatalf("affinity entries %+v; first backend %s", entries, first)
	}

	// Once the client's entry is older than the timeout, it is ignored and
	// another backend becomes possible (50% per round).
	withAffinity(svcIP4, time.Millisecond)
	last := first
	for round := 0; last == first; round++ {
		if round == 30 {
			t.Fatalf("30 connects after the affinity timeout all went to %s", first)
		}
		time.Sleep(5 * time.Millisecond) // age the entry past the 1 ms timeout
		last = c.must(dst("tcp", 4, svcIP4, "again")).Server
	}
	// That connect made a new entry, which sticks.
	withAffinity(svcIP4, time.Hour)
	if now := sticky(4, svcIP4); now != last {
		t.Errorf("after the timeout the client went to %s, then to %s", last, now)
	}

	// Without affinity, connections spread again.
	le.upsert(le.svc(svcIP4, l4.TCP, 7, 1, 2))
	loop := dst("tcp-loop", 4, svcIP4, "spread")
	loop.Count, loop.Duration = 40, 10*time.Second
	if r := c.do(loop); len(r.Hist) != 2 || r.Failed > 0 {
		t.Errorf("affinity off: %v, %d failed", r.Hist, r.Failed)
	}
}

// TestLBUpsertAtomic swaps backend sets under a stream of connects: none
// may fail, which they would if a connect saw a service half-written.
func TestLBUpsertAtomic(t *testing.T) {
	le := newLBEnv(t)
	sets := [][]int{{1, 2}, {2}, {1}, {2, 1}, {1}}
	le.upsert(le.svc(svcIP4, l4.TCP, 1, 1, 2), le.svc(svcIP6, l4.TCP, 1, 1, 2))
	loop := dst("tcp-loop", 4, svcIP4, "hammer")
	loop.Count, loop.Duration, loop.Parallel = 200000, 3*time.Second, 4
	loop6 := dst("tcp-loop", 6, svcIP6, "hammer")
	loop6.Count, loop6.Duration, loop6.Parallel = 200000, 3*time.Second, 2
	c6 := startLBClient(t, le.cg, le.Pods[0].NS)
	type res struct {
		r  lbResp
		v6 bool
	}
	done := make(chan res, 2)
	go func() { done <- res{le.client.do(loop), false} }()
	go func() { done <- res{c6.do(loop6), true} }()
	start := time.Now()
	for i := range 200 {
		for _, a := range []netip.Addr{svcIP4, svcIP6} {
			s := le.svc(a, l4.TCP, 1, sets[i%len(sets)]...)
			if i%7 == 3 {
				s.AffinityTimeout = 10 * time.Second
			}
			if err := le.lb.Upsert(s); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	swaps := time.Since(start)
	for range 2 {
		r := <-done
		t.Logf("v6=%v: %d connects (%d failed) during 200 swaps in %v; per backend %v", r.v6, r.r.OK, r.r.Failed, swaps, r.r.Hist)
		if r.r.Failed > 0 || r.r.Err != "" {
			t.Errorf("v6=%v: %d connects failed while backends were swapped: %v %s", r.v6, r.r.Failed, r.r.Errors, r.r.Err)
		}
		if !r.r.First.Before(start.Add(swaps/2)) || !r.r.Last.After(start.Add(swaps/2)) {
			t.Errorf("v6=%v: connects from %v to %v: the hammer did not overlap the swaps (%v from %v)",
				r.v6, r.r.First, r.r.Last, swaps, start)
		}
	}
	// Nothing leaked: one header and one generation of slots per
	// frontend, one backend entry per slot.
	var nSvc, nBackends int
	var k lbSvcKey
	var v lbSvc
	for it := le.lb.objs.LbServices.Iterate(); it.Next(&k, &v); {
		nSvc++
	}
	var id uint32
	var b lbBackend
	for it := le.lb.objs.LbBackends.Iterate(); it.Next(&id, &b); {
		nBackends++
	}
	last := len(sets[199%len(sets)])
	if nSvc != 2*(1+last) || nBackends != 2*last {
		t.Errorf("maps hold %d service entries and %d backends, want %d and %d", nSvc, nBackends, 2*(1+last), 2*last)
	}
}

func TestLBDeleteAndHostOnly(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	c := le.client
	c.must(dst("tcp", 4, svcIP4, "before"))

	fe := Frontend{Addr: svcIP4, Port: svcPort, Proto: l4.TCP}
	if err := le.lb.Delete(fe); err != nil {
		t.Fatal(err)
	}
	if r := c.do(dst("tcp", 4, svcIP4, "deleted")); r.Err == "" || r.Server != "" {
		t.Errorf("connect after Delete was translated: %+v", r)
	} else {
		t.Logf("untranslated connect: %s", r.Err)
	}
	c.must(dst("tcp", 6, svcIP6, "other services stay")) // the IPv6 one stays
	if err := le.lb.Delete(fe); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	svcs, _ := le.lb.Services()
	if len(svcs) != 3 {
		t.Errorf("Services() after Delete: %+v", svcs)
	}
	le.upsert(le.svc(svcIP4, l4.TCP, 1, 1, 2))
	c.must(dst("tcp", 4, svcIP4, "back"))

	// Host-only: the node namespace is the host; pods pass untranslated.
	nodeClient := startLBClient(t, le.cg, le.Node)
	le.InNode(func() error { return le.lb.SetHostOnly(true) })
	if on, err := le.lb.HostOnly(); !on || err != nil {
		t.Errorf("HostOnly() = %v, %v", on, err)
	}
	for _, op := range []string{"tcp", "udp-conn", "udp-unconn"} {
		req := dst(op, 4, svcIP4, "pod")
		req.Timeout = 500 * time.Millisecond // an unconnected UDP socket hears of no ICMP error
		if r := c.do(req); r.Err == "" {
			t.Errorf("host-only: %s from a pod was translated: %+v", op, r)
		}
		r := nodeClient.must(dst(op, 4, svcIP4, "node"))
		if op == "udp-unconn" {
			r.Server = r.Servers[0]
		}
		if !isBackend(r.Server) {
			t.Errorf("host-only: %s from the node answered by %q", op, r.Server)
		}
	}
	nodeClient.must(dst("tcp", 6, svcIP6, "node6"))
	le.InNode(func() error { return le.lb.SetHostOnly(false) })
	c.must(dst("tcp", 4, svcIP4, "pods again"))
}

// linkIDs returns the pinned links' IDs by pin path.
func linkIDs(t *testing.T, l *LB) map[string]link.ID {
	t.Helper()
	ids := map[string]link.ID{}
	if err := walkLinks(l.obj, func(pinPath string, _ link.Link, info *link.Info) error {
		ids[pinPath] = info.ID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	id := pinset.MapID(m)
	if id == 0 {
		t.Fatal("no map ID")
	}
	return id
}

func TestLBPinsAndAttachments(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	aff := le.svc(svcIP6, l4.UDP, 2, 1)
	aff.AffinityTimeout = time.Hour
	le.upsert(aff)
	want, err := le.lb.Services()
	if err != nil {
		t.Fatal(err)
	}
	svcMap := mapID(t, le.lb.objs.LbServices)
	links := linkIDs(t, le.lb)
	if len(links) != nProgs {
		t.Fatalf("pinned links: %v", links)
	}
	le.lb.Close()

	// The links stay attached with no LB open.
	le.client.must(dst("tcp", 4, svcIP4, "closed"))

	// Reopening reuses the pins (no sizes given: the pinned ones).
	l := le.open(Sizes{})
	if got, err := l.Services(); err != nil || !servicesEqual(got, want) {
		t.Errorf("Services() after reopening = %+v, %v; want %+v", got, err, want)
	}
	if id := mapID(t, l.objs.LbServices); id != svcMap {
		t.Errorf("lb_services was recreated: id %d, was %d", id, svcMap)
	}
	if l.Sizes() != DefaultSizes {
		t.Errorf("sizes %+v", l.Sizes())
	}
	// Attach is idempotent.
	if err := l.Attach(le.cg.Path + "/"); err != nil {
		t.Fatal(err)
	}
	if got := linkIDs(t, l); !reflect.DeepEqual(got, links) {
		t.Errorf("second Attach changed the links: %v -> %v", links, got)
	}
	att, err := l.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(maps.Keys(pinset.Programs(&lbPrograms{})))
	if !reflect.DeepEqual(att, map[string][]string{le.cg.Path: names}) {
		t.Errorf("Attachments() = %v", att)
	}

	// A cgroup that is removed takes the programs with it; its pins stay
	// as defunct links until Attach (same path) or Detach removes them.
	gone := le.Env.Cgroup("gone")
	if err := l.Attach(gone.Path); err != nil {
		t.Fatal(err)
	}
	if att, _ := l.Attachments(); len(att[gone.Path]) != nProgs {
		t.Fatalf("Attachments() = %v", att)
	}
	if err := os.Remove(gone.Path); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, "the removed cgroup's links to turn defunct", 5*time.Second, func() bool {
		att, _ := l.Attachments()
		return len(att["(removed cgroup)"]) == nProgs
	})
	if err := os.Mkdir(gone.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.Attach(gone.Path); err != nil {
		t.Fatal(err)
	}
	if att, _ := l.Attachments(); len(att) != 2 || len(att[gone.Path]) != nProgs {
		t.Errorf("Attachments() after re-attaching the re-created cgroup = %v", att)
	}
	if err := l.Detach(gone.Path); err != nil {
		t.Fatal(err)
	}
	if att, _ := l.Attachments(); !reflect.DeepEqual(att, map[string][]string{le.cg.Path: names}) {
		t.Errorf("Attachments() after Detach(other) = %v", att)
	}

	// Other capacities than the pinned ones stage a rebuild (see
	// TestLBRebuild); closed uncommitted, it leaves the pins alone.
	if ls, err := Open(le.PinDir, Sizes{Services: 1000}); err != nil || !strings.Contains(ls.Staged(), "MaxEntries") {
		t.Errorf("Open with other sizes: staged %q, %v", ls.Staged(), err)
	} else {
		ls.Close()
	}
	if ro, err := OpenReadOnly(le.PinDir); err != nil || mapID(t, ro.objs.LbServices) != svcMap || ro.Sizes() != DefaultSizes {
		t.Errorf("pins after an uncommitted rebuild: %v", err)
	} else {
		ro.Close()
	}
	// Explicit sizes on a fresh pin set are used.
	other := filepath.Join(le.PinDir, "other")
	small := Sizes{Services: 10, Backends: 20, Affinity: 40}
	ls, err := Open(other, small)
	if err != nil {
		t.Fatal(err)
	}
	if ls.Sizes() != small || ls.objs.LbServices.MaxEntries() != 30 || ls.objs.LbAffinity.MaxEntries() != 40 {
		t.Errorf("sizes %+v, lb_services capacity %d", ls.Sizes(), ls.objs.LbServices.MaxEntries())
	}
	ls.Close()
	if ls2, err := Open(other, Sizes{}); err != nil || ls2.Sizes() != small {
		t.Errorf("reopen with zero sizes: %+v %v", ls2.Sizes(), err)
	} else {
		ls2.Close()
	}

	// Detach: no more translation, no attachments; twice is fine.
	if err := l.Detach(le.cg.Path); err != nil {
		t.Fatal(err)
	}
	if r := le.client.do(dst("tcp", 4, svcIP4, "detached")); r.Err == "" {
		t.Errorf("translated after Detach: %+v", r)
	}
	if att, err := l.Attachments(); err != nil || len(att) != 0 {
		t.Errorf("Attachments() after Detach = %v, %v", att, err)
	}
	if err := l.Detach(le.cg.Path); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if err := l.Attach(le.cg.Path); err != nil {
		t.Fatal(err)
	}
	le.client.must(dst("tcp", 4, svcIP4, "again"))
}

func TestLBOpenConcurrent(t *testing.T) {
	e := harness.New(t)
	pinDir := topo.PinDir(e)
	const n = 8
	type res struct {
		l   *LB
		err error
	}
	ch := make(chan res, n)
	for range n {
		go func() {
			l, err := Open(pinDir, Sizes{})
			ch <- res{l, err}
		}()
	}
	ids := map[ebpf.MapID]bool{}
	for range n {
		r := <-ch
		if r.err != nil {
			t.Error(r.err)
			continue
		}
		ids[mapID(t, r.l.objs.LbServices)] = true
		r.l.Close()
	}
	if len(ids) != 1 {
		t.Errorf("concurrent Opens ended with different maps: %v", ids)
	}
}

func TestLBDestroySockets(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	c := le.client
	// Connected UDP sockets until both backends have one (at most 40).
	byServer := map[string][]string{}
	for i := 0; i < 40 && (len(byServer["pod1"]) == 0 || len(byServer["pod2"]) == 0 || i < 6); i++ {
		req := dst("udp-open", 4, svcIP4, "q")
		req.Name = fmt.Sprintf("s%d", i)
		r := c.must(req)
		byServer[r.Server] = append(byServer[r.Server], req.Name)
	}
	if len(byServer["pod1"]) == 0 || len(byServer["pod2"]) == 0 {
		t.Fatalf("sockets per backend: %v", byServer)
	}
	// A TCP connection to pod2 (over IPv6: mapped and plain addresses
	// both work), which the server has closed: CLOSE_WAIT, a full socket.
	tcpReq := dst("tcp-open", 6, svcIP6, "t")
	tcpReq.Name = "tcp"
	le.upsert(le.svc(svcIP6, l4.TCP, 1, 2))
	c.must(tcpReq)

	// pod1 leaves the UDP service and pod2 the IPv6 TCP one: one call
	// (one load, one walk of the namespace) destroys the sockets of both,
	// and only those: pod2's UDP sockets over IPv4 stay.
	le.upsert(le.svc(svcIP4, l4.UDP, 2, 2))
	b := Target{le.backend(svcIP4, 1), l4.UDP}
	if got, err := le.lb.DestroySockets([]Target{{b.Backend, l4.TCP}}, le.Pods[0].NS.Path); err != nil || len(got) != 0 {
		t.Errorf("DestroySockets(pod1 TCP) = %v, %v; want none", got, err)
	}
	tcp := Target{le.backend(svcIP6, 2), l4.TCP}
	got, err := le.lb.DestroySockets([]Target{b, tcp}, le.Pods[0].NS.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[Target]int{b: len(byServer["pod1"]), tcp: 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("destroyed %v, want %v (%v)", got, want, byServer)
	}
	for _, name := range byServer["pod1"] {
		r := c.do(lbReq{Op: "udp-io", Name: name, Msg: "still there?"})
		if r.WriteErr == "" && r.ReadErr == "" {
			t.Errorf("socket %s to the removed backend still works: %+v", name, r)
		} else if r.WriteErr != "ECONNABORTED" && r.ReadErr != "ECONNABORTED" {
			t.Logf("socket %s: write %q read %q", name, r.WriteErr, r.ReadErr)
		}
	}
	for _, name := range byServer["pod2"] {
		if r := c.do(lbReq{Op: "udp-io", Name: name, Msg: "ok?"}); r.Server != "pod2" {
			t.Errorf("socket %s to the remaining backend: %+v", name, r)
		}
	}
	r := c.do(lbReq{Op: "udp-io", Name: "tcp", Msg: "x"})
	if r.WriteErr != "ECONNABORTED" && r.ReadErr != "ECONNABORTED" {
		t.Errorf("destroyed TCP socket: write %q read %q, want ECONNABORTED", r.WriteErr, r.ReadErr)
	}
	// All namespaces: nothing is left to destroy.
	if got, err := le.lb.DestroySockets([]Target{b, tcp}); err != nil || len(got) != 0 {
		t.Errorf("DestroySockets in all namespaces = %v, %v", got, err)
	}
	// A new socket gets the remaining backend.
	if r := c.must(dst("udp-conn", 4, svcIP4, "new")); r.Server != "pod2" {
		t.Errorf("new socket answered by %q", r.Server)
	}
}

// TestLBUpgrade: pins of an "older build" (other program instances,
// another build ID) are upgraded in place by Open: the links switch to the
// new programs atomically, under a stream of connects, and the maps stay.
func TestLBUpgrade(t *testing.T) {
	le := newLBEnv(t)
	le.upsertAll(1, 2)
	svcMap := mapID(t, le.lb.objs.LbServices)
	links := linkIDs(t, le.lb)

	// Another instance of the programs on the same maps stands in for the
	// older build: pinned, attached through the links, build ID "old".
	spec, err := le.lb.Sizes().spec()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: le.lb.obj.MapsDir()}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if err := updateLinks(le.lb.obj, coll.Programs); err != nil {
		t.Fatal(err)
	}
	oldIDs := map[string]uint32{}
	for name, p := range coll.Programs {
		if err := pinset.PinReplace(p, le.lb.obj.ProgPin(name)); err != nil {
			t.Fatal(err)
		}
		oldIDs[name], _ = pinset.ProgID(p)
	}
	m, err := pinset.ReadMeta(le.lb.objs.LbMeta)
	if err != nil {
		t.Fatal(err)
	}
	m.Build = [32]byte{'o', 'l', 'd'}
	if err := le.lb.objs.LbMeta.Put(uint32(0), &m); err != nil {
		t.Fatal(err)
	}
	le.lb.Close()

	loop := dst("tcp-loop", 4, svcIP4, "upgrade")
	loop.Count, loop.Duration, loop.Parallel = 100000, 2*time.Second, 2
	done := make(chan lbResp, 1)
	go func() { done <- le.client.do(loop) }()
	before := time.Now()
	l := le.open(Sizes{}) // loads the programs: the loop is connecting meanwhile
	after := time.Now()
	r := <-done
	if r.Failed > 0 || r.OK == 0 {
		t.Errorf("connects across the upgrade: %d ok, %d failed %v", r.OK, r.Failed, r.Errors)
	}
	if !r.First.Before(after) || !r.Last.After(after) {
		t.Errorf("the connects (%v to %v) did not span the upgrade (%v to %v)", r.First, r.Last, before, after)
	}

	if got, _ := pinset.ReadMeta(l.objs.LbMeta); got.Build != buildID() {
		t.Errorf("build not recorded: %x", got.Build)
	}
	if id := mapID(t, l.objs.LbServices); id != svcMap {
		t.Errorf("maps recreated by the upgrade")
	}
	if got := linkIDs(t, l); !reflect.DeepEqual(got, links) {
		t.Errorf("links replaced instead of updated: %v -> %v", links, got)
	}
	if err := walkLinks(l.obj, func(pinPath string, _ link.Link, info *link.Info) error {
		name := filepath.Base(pinPath)
		want, _ := pinset.ProgID(pinset.Programs(&l.objs.lbPrograms)[name])
		if uint32(info.Program) != want || uint32(info.Program) == oldIDs[name] {
			return fmt.Errorf("link %s runs program %d, want the new %d (old %d)", name, info.Program, want, oldIDs[name])
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	le.client.must(dst("udp-unconn", 6, svcIP6, "after"))
}
