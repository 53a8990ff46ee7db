package nodeport

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/l4"
)

// Service is one Kubernetes service port in one address family as clients
// outside the cluster reach it: its frontends on this node, its backends,
// and how flows reach them.
type Service struct {
	// ID is stable per Kubernetes service port (daemon/services' ID); with
	// IPv6 it names the service (ServiceKey).
	ID   uint32
	IPv6 bool
	// Proto is the service port's protocol, TCP or UDP.
	Proto l4.Protocol
	// Frontends are the addresses and ports clients send to: this node's
	// addresses with the NodePort, local ExternalIPs and LoadBalancer
	// ingress IPs with the service port. All of the service's family.
	Frontends []netip.AddrPort
	// Backends, of the service's family; none drops the packets.
	Backends []netip.AddrPort
	// DSR sends flows to remote backends with the frontend in an IP option
	// so that the backend's node answers the client directly; otherwise
	// (SNAT) the source becomes this node's and replies come back here.
	// Backends on this node always keep the client's address.
	DSR bool
	// Local is externalTrafficPolicy: Local: Backends are this node's only,
	// and the client's address is kept.
	Local bool
	// Random picks a backend at random for each new flow instead of by
	// Maglev consistent hashing.
	Random bool
	// TableSize is the size of the Maglev table (a prime, see
	// CheckTableSize); 0 is DefaultTableSize.
	TableSize int
}

// ServiceKey names a Service in the maps.
type ServiceKey struct {
	ID   uint32
	IPv6 bool
}

// Key is the service's key.
func (s Service) Key() ServiceKey { return ServiceKey{ID: s.ID, IPv6: s.IPv6} }

func (k ServiceKey) String() string {
	if k.IPv6 {
		return fmt.Sprintf("%d/IPv6", k.ID)
	}
	return fmt.Sprintf("%d/IPv4", k.ID)
}

func (k ServiceKey) raw() npNpSvcKey {
	return npNpSvcKey{Id: k.ID, Family: family(k.IPv6)}
}

func keyOf(k npNpSvcKey) ServiceKey { return ServiceKey{ID: k.Id, IPv6: k.Family == pinset.FamilyV6} }

func family(v6 bool) uint8 {
	if v6 {
		return pinset.FamilyV6
	}
	return pinset.FamilyV4
}

// np_svc.flags (NP_SVC_* in nodeport.h).
const (
	svcDSR    = 1 << 0
	svcLocal  = 1 << 1
	svcRandom = 1 << 2
)

// backendKey is a backend as the cache of ids knows it.
type backendKey = netip.AddrPort

// netPort converts a port to network byte order as the programs see it
// (the generated types, and so this package, are little-endian only).
func netPort(p uint16) uint16 { return bits.ReverseBytes16(p) }

func addrPort(addr [16]byte, fam uint8, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(pinset.DecodeAddr(addr, fam), netPort(port))
}

// validate checks s and returns it normalized: unmapped addresses, sorted
// and unique frontends and backends, the table size filled in.
func (s Service) validate(maxBackends int) (Service, error) {
	if s.Proto != l4.TCP && s.Proto != l4.UDP {
		return s, fmt.Errorf("nodeport: service %d: protocol %d is not TCP or UDP", s.ID, s.Proto)
	}
	if s.TableSize == 0 {
		s.TableSize = DefaultTableSize
	}
	if err := CheckTableSize(s.TableSize); err != nil {
		return s, fmt.Errorf("nodeport: service %d: %w", s.ID, err)
	}
	check := func(what string, aps []netip.AddrPort) ([]netip.AddrPort, error) {
		out := make([]netip.AddrPort, 0, len(aps))
		for _, ap := range aps {
			a := ap.Addr().Unmap()
			switch {
			case !a.IsValid() || a.IsUnspecified():
				return nil, fmt.Errorf("nodeport: service %s: %s %v has no address", s.Key(), what, ap)
			case a.Zone() != "":
				return nil, fmt.Errorf("nodeport: service %s: %s %v has a zone", s.Key(), what, ap)
			case a.Is6() != s.IPv6:
				return nil, fmt.Errorf("nodeport: service %s: %s %v is of another address family", s.Key(), what, ap)
			case ap.Port() == 0:
				return nil, fmt.Errorf("nodeport: service %s: %s %v has port 0", s.Key(), what, ap)
			}
			out = append(out, netip.AddrPortFrom(a, ap.Port()))
		}
		slices.SortFunc(out, netip.AddrPort.Compare)
		return slices.Compact(out), nil
	}
	var err error
	if s.Frontends, err = check("frontend", s.Frontends); err != nil {
		return s, err
	}
	if s.Backends, err = check("backend", s.Backends); err != nil {
		return s, err
	}
	if len(s.Backends) > maxBackends || len(s.Backends) > s.TableSize {
		return s, fmt.Errorf("nodeport: service %s has %d backends, at most %d fit (map capacity %d, table size %d)",
			s.Key(), len(s.Backends), min(maxBackends, s.TableSize), maxBackends, s.TableSize)
	}
	return s, nil
}

func (s Service) flags() uint32 {
	var f uint32
	if s.DSR {
		f |= svcDSR
	}
	if s.Local {
		f |= svcLocal
	}
	if s.Random {
		f |= svcRandom
	}
	return f
}

func feKey(ap netip.AddrPort, proto l4.Protocol) npNpFeKey {
	addr, fam := pinset.EncodeAddr(ap.Addr())
	return npNpFeKey{Addr: addr, Port: netPort(ap.Port()), Proto: uint8(proto), Family: fam}
}

// frontendIndex is which service each frontend in np_frontends serves,
// both ways.
type frontendIndex struct {
	owner map[npNpFeKey]ServiceKey
	of    map[ServiceKey]map[npNpFeKey]bool
}

// set records that k serves svc (taking it from the service it served).
func (x *frontendIndex) set(k npNpFeKey, svc ServiceKey) {
	if prev, ok := x.owner[k]; ok && prev != svc {
		delete(x.of[prev], k)
	}
	x.owner[k] = svc
	if x.of[svc] == nil {
		x.of[svc] = map[npNpFeKey]bool{}
	}
	x.of[svc][k] = true
}

// drop records that k is gone.
func (x *frontendIndex) drop(k npNpFeKey) {
	if svc, ok := x.owner[k]; ok {
		delete(x.owner, k)
		delete(x.of[svc], k)
		if len(x.of[svc]) == 0 {
			delete(x.of, svc)
		}
	}
}

// loadCaches fills the caches of backend ids and frontends from the maps,
// once; l.mu held.
func (l *LB) loadCaches() error {
	if l.ids != nil && l.frontends != nil {
		return nil
	}
	fes := &frontendIndex{owner: map[npNpFeKey]ServiceKey{}, of: map[ServiceKey]map[npNpFeKey]bool{}}
	var fk npNpFeKey
	var fv npNpFe
	fit := l.objs.NpFrontends.Iterate()
	for fit.Next(&fk, &fv) {
		fes.set(fk, keyOf(fv.Svc))
	}
	if err := fit.Err(); err != nil {
		return fmt.Errorf("nodeport: read np_frontends: %w", err)
	}
	ids := map[ServiceKey]map[backendKey]uint32{}
	var id uint32
	var be npNpBackend
	it := l.objs.NpBackends.Iterate()
	for it.Next(&id, &be) {
		k := ServiceKey{ID: be.SvcId, IPv6: be.Family == pinset.FamilyV6}
		if ids[k] == nil {
			ids[k] = map[backendKey]uint32{}
		}
		ids[k][addrPort(be.Addr, be.Family, be.Port)] = id
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("nodeport: read np_backends: %w", err)
	}
	l.ids, l.frontends = ids, fes
	return nil
}

// Upsert makes the maps serve svc. Readers never see it half done: new
// backends are written first, then the new Maglev table replaces the old
// one in one update, then the service's header and frontends; backends it
// dropped go last, so a tracked flow of a dropped backend finds it gone and
// fails over to a backend of the new table. Backends that stay keep their
// ids, and with them their flows. Replacing the table in np_maglev waits in
// the kernel for an RCU grace period (tens to hundreds of ms under load):
// new flows avoid a dropped backend that long before its tracked flows
// move, which they have done when Upsert returns.
func (l *LB) Upsert(svc Service) error {
	if err := l.writable(); err != nil {
		return err
	}
	svc, err := svc.validate(l.sizes.Backends)
	if err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.loadCaches(); err != nil {
		return err
	}
	key := svc.Key()
	old := l.ids[key]
	next := map[backendKey]uint32{}
	sorted := SortBackends(svc.Backends)
	var added []uint32
	fail := func(err error) error {
		for _, id := range added {
			l.objs.NpBackends.Delete(id)
		}
		return err
	}
	for _, b := range sorted {
		if id, ok := old[b]; ok {
			next[b] = id
			continue
		}
		addr, fam := pinset.EncodeAddr(b.Addr())
		v := npNpBackend{Addr: addr, Port: netPort(b.Port()), Family: fam, SvcId: svc.ID}
		id, err := l.newBackendID(&v)
		if err != nil {
			return fail(err)
		}
		added = append(added, id)
		next[b] = id
	}
	if len(sorted) > 0 {
		if err := l.putTable(key, svc.TableSize, sorted, next); err != nil {
			return fail(err)
		}
	}
	hdr := npNpSvc{Flags: svc.flags(), Count: uint32(len(sorted)), TableSize: uint32(svc.TableSize)}
	if err := l.objs.NpServices.Put(key.raw(), hdr); err != nil {
		return fail(fmt.Errorf("nodeport: write service %s: %w", key, err))
	}
	if len(sorted) == 0 {
		// count 0 drops before the table is read; the table goes
		if err := l.objs.NpMaglev.Delete(key.raw()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("nodeport: delete the table of %s: %w", key, err)
		}
	}
	// frontends: this service's, and none it no longer has
	want := map[npNpFeKey]bool{}
	for _, f := range svc.Frontends {
		k := feKey(f, svc.Proto)
		want[k] = true
		if err := l.objs.NpFrontends.Put(k, npNpFe{Svc: key.raw()}); err != nil {
			return fmt.Errorf("nodeport: write frontend %v of %s: %w", f, key, err)
		}
		l.frontends.set(k, key)
	}
	if err := l.deleteFrontends(key, want); err != nil {
		return err
	}
	l.ids[key] = next
	var errs []error
	for b, id := range old {
		if _, kept := next[b]; !kept {
			if err := l.objs.NpBackends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("nodeport: delete backend %v of %s: %w", b, key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// newBackendID writes v under a fresh random id.
func (l *LB) newBackendID(v *npNpBackend) (uint32, error) {
	for range 64 {
		id := rand.Uint32()
		if id == 0 {
			continue
		}
		err := l.objs.NpBackends.Update(id, v, ebpf.UpdateNoExist)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, ebpf.ErrKeyExist) {
			return 0, fmt.Errorf("nodeport: write backend: %w", err)
		}
	}
	return 0, errors.New("nodeport: no free backend id found")
}

// putTable computes the service's Maglev table and swaps it in.
func (l *LB) putTable(key ServiceKey, size int, sorted []netip.AddrPort, ids map[backendKey]uint32) error {
	table, err := MaglevTable(sorted, size)
	if err != nil {
		return fmt.Errorf("nodeport: service %s: %w", key, err)
	}
	spec := l.inner.Copy()
	spec.MaxEntries = uint32(size)
	spec.Name = "np_table"
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("nodeport: create the table of %s: %w", key, err)
	}
	defer m.Close()
	keys, vals := make([]uint32, size), make([]uint32, size)
	for i, bi := range table {
		keys[i], vals[i] = uint32(i), ids[sorted[bi]]
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		for i := range keys { // kernels without batch ops on arrays
			if err := m.Put(keys[i], vals[i]); err != nil {
				return fmt.Errorf("nodeport: fill the table of %s: %w", key, err)
			}
		}
	}
	if err := l.objs.NpMaglev.Put(key.raw(), m); err != nil {
		return fmt.Errorf("nodeport: install the table of %s: %w", key, err)
	}
	return nil
}

// deleteFrontends removes the frontends of key that are not in keep
// (from the cache: loadCaches ran).
func (l *LB) deleteFrontends(key ServiceKey, keep map[npNpFeKey]bool) error {
	var errs []error
	for k := range l.frontends.of[key] {
		if keep[k] {
			continue
		}
		if err := l.objs.NpFrontends.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("nodeport: delete a frontend of %s: %w", key, err))
			continue
		}
		l.frontends.drop(k)
	}
	return errors.Join(errs...)
}

// Delete removes a service: frontends first (packets to them pass to the
// node's stack), then the header, the table and the backends.
func (l *LB) Delete(key ServiceKey) error {
	if err := l.writable(); err != nil {
		return err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.loadCaches(); err != nil {
		return err
	}
	errs := []error{l.deleteFrontends(key, nil)}
	for _, m := range []*ebpf.Map{l.objs.NpServices, l.objs.NpMaglev} {
		if err := m.Delete(key.raw()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("nodeport: delete %s: %w", key, err))
		}
	}
	for b, id := range l.ids[key] {
		if err := l.objs.NpBackends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("nodeport: delete backend %v of %s: %w", b, key, err))
		}
	}
	delete(l.ids, key)
	return errors.Join(errs...)
}

// Services reads back every service from the maps, sorted by key.
func (l *LB) Services() ([]Service, error) {
	byKey := map[ServiceKey]*Service{}
	var sk npNpSvcKey
	var sv npNpSvc
	it := l.objs.NpServices.Iterate()
	for it.Next(&sk, &sv) {
		k := keyOf(sk)
		byKey[k] = &Service{ID: k.ID, IPv6: k.IPv6, DSR: sv.Flags&svcDSR != 0, Local: sv.Flags&svcLocal != 0,
			Random: sv.Flags&svcRandom != 0, TableSize: int(sv.TableSize)}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_services: %w", err)
	}
	var fk npNpFeKey
	var fv npNpFe
	fit := l.objs.NpFrontends.Iterate()
	for fit.Next(&fk, &fv) {
		if s := byKey[keyOf(fv.Svc)]; s != nil {
			s.Proto = l4.Protocol(fk.Proto)
			s.Frontends = append(s.Frontends, addrPort(fk.Addr, fk.Family, fk.Port))
		}
	}
	if err := fit.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_frontends: %w", err)
	}
	var id uint32
	var be npNpBackend
	bit := l.objs.NpBackends.Iterate()
	for bit.Next(&id, &be) {
		if s := byKey[ServiceKey{ID: be.SvcId, IPv6: be.Family == pinset.FamilyV6}]; s != nil {
			s.Backends = append(s.Backends, addrPort(be.Addr, be.Family, be.Port))
		}
	}
	if err := bit.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_backends: %w", err)
	}
	out := make([]Service, 0, len(byKey))
	for _, s := range byKey {
		slices.SortFunc(s.Frontends, netip.AddrPort.Compare)
		slices.SortFunc(s.Backends, netip.AddrPort.Compare)
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Service) int {
		if a.ID != b.ID {
			return int(int64(a.ID) - int64(b.ID))
		}
		if a.IPv6 == b.IPv6 {
			return 0
		}
		if b.IPv6 {
			return -1
		}
		return 1
	})
	return out, nil
}

// Table reads the Maglev table of a service: the backend of every slot
// (the zero AddrPort where a slot names no backend of the service).
func (l *LB) Table(key ServiceKey) ([]netip.AddrPort, error) {
	var innerID uint32
	if err := l.objs.NpMaglev.Lookup(key.raw(), &innerID); err != nil {
		return nil, fmt.Errorf("nodeport: the table of %s: %w", key, err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
	if err != nil {
		return nil, fmt.Errorf("nodeport: open the table of %s: %w", key, err)
	}
	defer m.Close()
	bes := map[uint32]netip.AddrPort{}
	var id uint32
	var be npNpBackend
	it := l.objs.NpBackends.Iterate()
	for it.Next(&id, &be) {
		if be.SvcId == key.ID && (be.Family == pinset.FamilyV6) == key.IPv6 {
			bes[id] = addrPort(be.Addr, be.Family, be.Port)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_backends: %w", err)
	}
	out := make([]netip.AddrPort, m.MaxEntries())
	for i := range out {
		var v uint32
		if err := m.Lookup(uint32(i), &v); err != nil {
			return nil, fmt.Errorf("nodeport: read the table of %s: %w", key, err)
		}
		out[i] = bes[v]
	}
	return out, nil
}

// Settings are the node-wide parameters of the programs.
type Settings struct {
	// SNATPorts is the range of ports (inclusive) SNAT gives flows on
	// this node's addresses. Keep it clear of the node's own ephemeral
	// range (net.ipv4.ip_local_port_range) if the node itself connects to
	// backends of NodePort services.
	SNATPorts [2]uint16
	// Idle timeouts of tracked flows, per protocol and TCP state.
	TCPSyn, TCPEstablished, TCPClosing, UDP time.Duration
	// Tunnel, when set, lets the programs encapsulate flows to backends
	// behind the cluster network's VXLAN tunnel themselves.
	Tunnel *Tunnel
}

// Tunnel is the cluster network's VXLAN tunnel as the peers' devices
// expect it.
type Tunnel struct {
	VNI  uint32
	Port uint16
	// MAC is this node's VTEP MAC (the inner source address).
	MAC net.HardwareAddr
}

// DefaultSettings are Settings' defaults: Cilium's timeouts, the upper
// half of the port space for SNAT.
var DefaultSettings = Settings{SNATPorts: [2]uint16{32768, 65535}, TCPSyn: time.Minute, TCPEstablished: 6 * time.Hour,
	TCPClosing: 10 * time.Second, UDP: time.Minute}

// Configure writes the settings.
func (l *LB) Configure(s Settings) error {
	if err := l.writable(); err != nil {
		return err
	}
	if s.SNATPorts[0] == 0 || s.SNATPorts[1] < s.SNATPorts[0] {
		return fmt.Errorf("nodeport: SNAT ports %d-%d: want a range within 1-65535", s.SNATPorts[0], s.SNATPorts[1])
	}
	secs := func(name string, d time.Duration) (uint32, error) {
		if d < time.Second || d > 30*24*time.Hour {
			return 0, fmt.Errorf("nodeport: %s timeout %v: want 1s to 720h", name, d)
		}
		return uint32(d / time.Second), nil
	}
	var c npNpCfg
	var err error
	c.SnatMin, c.SnatMax = s.SNATPorts[0], s.SNATPorts[1]
	for _, t := range []struct {
		name string
		d    time.Duration
		dst  *uint32
	}{{"TCP SYN", s.TCPSyn, &c.TcpSyn}, {"TCP established", s.TCPEstablished, &c.TcpEstablished},
		{"TCP closing", s.TCPClosing, &c.TcpClosing}, {"UDP", s.UDP, &c.Udp}} {
		if *t.dst, err = secs(t.name, t.d); err != nil {
			return err
		}
	}
	if t := s.Tunnel; t != nil {
		if t.VNI == 0 || t.VNI >= 1<<24 || t.Port == 0 || len(t.MAC) != 6 {
			return fmt.Errorf("nodeport: tunnel VNI %d port %d MAC %v: want a VNI of 1 to %d, a port and a MAC", t.VNI, t.Port, t.MAC, 1<<24-1)
		}
		c.Flags |= cfgTunnel
		c.Vni, c.VxlanPort = t.VNI, netPort(t.Port)
		copy(c.VtepMac[:], t.MAC)
	}
	if err := l.objs.NpConfig.Put(uint32(0), c); err != nil {
		return fmt.Errorf("nodeport: write np_config: %w", err)
	}
	return nil
}

// np_cfg.flags (NP_CFG_* in nodeport.h).
const cfgTunnel = 1 << 0

// Role is what an interface is to the programs.
type Role uint32

// Roles (NP_IF_* in nodeport.h).
const (
	// External interfaces receive the clients' traffic: frontends apply.
	External Role = 1
	// Pod is a pod's host-side veth: replies of local backends pass it.
	Pod Role = 2
	// TunnelDevice is the cluster network's VXLAN device.
	TunnelDevice Role = 3
	// Other is any other interface (SR-IOV uplinks, bridges, ...).
	Other Role = 4
)

func (r Role) String() string {
	switch r {
	case External:
		return "external"
	case Pod:
		return "pod"
	case TunnelDevice:
		return "tunnel"
	case Other:
		return "other"
	}
	return fmt.Sprintf("role(%d)", uint32(r))
}

// SetInterfaces makes roles the interfaces the programs know (ifindex →
// role), removing the others: packets on an interface the map does not
// hold pass untouched.
func (l *LB) SetInterfaces(roles map[int]Role) error {
	if err := l.writable(); err != nil {
		return err
	}
	var errs []error
	for idx, r := range roles {
		if err := l.objs.NpIfaces.Put(uint32(idx), npNpIface{Role: uint32(r)}); err != nil {
			errs = append(errs, fmt.Errorf("nodeport: interface %d: %w", idx, err))
		}
	}
	cur, err := l.Interfaces()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for idx := range cur {
		if _, ok := roles[idx]; !ok {
			if err := l.objs.NpIfaces.Delete(uint32(idx)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("nodeport: interface %d: %w", idx, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Interfaces reads the interfaces the programs know.
func (l *LB) Interfaces() (map[int]Role, error) {
	out := map[int]Role{}
	var idx uint32
	var v npNpIface
	it := l.objs.NpIfaces.Iterate()
	for it.Next(&idx, &v) {
		out[int(idx)] = Role(v.Role)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_ifaces: %w", err)
	}
	return out, nil
}

// SetTunnelPeers makes peers (VTEP MAC → underlay address) the tunnel
// peers the programs encapsulate to, removing the others.
func (l *LB) SetTunnelPeers(peers map[string]netip.Addr) error {
	if err := l.writable(); err != nil {
		return err
	}
	want := map[npNpTunnelKey]npNpTunnel{}
	for mac, a := range peers {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return fmt.Errorf("nodeport: tunnel peer MAC %q: %v", mac, err)
		}
		var k npNpTunnelKey
		copy(k.Mac[:], hw)
		addr, fam := pinset.EncodeAddr(a)
		want[k] = npNpTunnel{Addr: addr, Family: fam}
	}
	var errs []error
	for k, v := range want {
		if err := l.objs.NpTunnels.Put(k, v); err != nil {
			errs = append(errs, fmt.Errorf("nodeport: tunnel peer %v: %w", net.HardwareAddr(k.Mac[:]), err))
		}
	}
	var k npNpTunnelKey
	var v npNpTunnel
	var stale []npNpTunnelKey
	it := l.objs.NpTunnels.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("nodeport: read np_tunnels: %w", err))
	}
	for _, k := range stale {
		if err := l.objs.NpTunnels.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Conn is one tracked connection entry.
type Conn struct {
	Proto l4.Protocol
	// Reply is false for the client's side (Src the client, Dst the
	// frontend) and true for the side its replies match (Src the
	// backend, Dst this node's SNAT address or the client).
	Reply    bool
	Src, Dst netip.AddrPort
	// Client side: Backend and, with SNAT, the SNAT address the backend
	// sees. Reply side: the frontend and client the reply is sent as and
	// to.
	Backend, SNAT      netip.AddrPort
	Frontend, Client   netip.AddrPort
	ServiceID          uint32
	State              string // new, established, closing
	SNATed, DSR, Local bool
	Tunnel             bool
	// OnBackendNode marks the entry a DSR flow keeps on the backend's node.
	OnBackendNode bool
	Age, Idle     time.Duration
}

// np_ct flags and states (nodeport.h).
const (
	ctSNAT    = 1 << 0
	ctDSR     = 1 << 1
	ctLocal   = 1 << 2
	ctTunnel  = 1 << 3
	ctBackend = 1 << 4
)

var ctStates = []string{"new", "established", "closing"}

// monotonic is the clock of the programs' timestamps
// (bpf_ktime_get_coarse_ns).
func monotonic() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

// Conns reads the connection table.
func (l *LB) Conns() ([]Conn, error) {
	now := monotonic()
	var out []Conn
	var k npNpCtKey
	var v npNpCt
	it := l.objs.NpConns.Iterate()
	for it.Next(&k, &v) {
		c := Conn{Proto: l4.Protocol(k.Proto), Reply: k.Dir == 1,
			Src: addrPort(k.Saddr, k.Family, k.Sport), Dst: addrPort(k.Daddr, k.Family, k.Dport),
			ServiceID: v.SvcId, SNATed: v.Flags&ctSNAT != 0, DSR: v.Flags&ctDSR != 0, Local: v.Flags&ctLocal != 0,
			Tunnel: v.Flags&ctTunnel != 0, OnBackendNode: v.Flags&ctBackend != 0}
		if int(v.State) < len(ctStates) {
			c.State = ctStates[v.State]
		}
		if c.Reply {
			c.Frontend, c.Client = addrPort(v.Addr1, v.Family, v.Port1), addrPort(v.Addr2, v.Family, v.Port2)
		} else {
			c.Backend = addrPort(v.Addr1, v.Family, v.Port1)
			if c.SNATed {
				c.SNAT = addrPort(v.Addr2, v.Family, v.Port2)
			}
		}
		if now > v.Created {
			c.Age = time.Duration(now - v.Created)
		}
		if now > v.LastSeen {
			c.Idle = time.Duration(now - v.LastSeen)
		}
		out = append(out, c)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_conns: %w", err)
	}
	return out, nil
}

// Verdict is what the programs did with a packet (NP_V_* in nodeport.h).
type Verdict int

// Verdicts, as counted per service.
const (
	VerdictLocal       Verdict = iota // to a backend on this node
	VerdictSNAT                       // to a remote backend, source translated
	VerdictDSR                        // to a remote backend, the frontend in an IP option
	VerdictTunnel                     // ... encapsulated (counted besides SNAT or DSR)
	VerdictReply                      // a reply translated back to the client
	VerdictDSRRestore                 // the backend's node: a DSR flow delivered to its pod
	VerdictNoBackend                  // dropped: no backend
	VerdictNoPort                     // dropped: no SNAT port free
	VerdictTooBig                     // answered with ICMP fragmentation needed / packet too big
	VerdictFragment                   // an IP fragment to a frontend, passed to the stack
	VerdictError                      // dropped: a helper failed, or no route
	VerdictXDPDeferred                // XDP left the packet to the tc program
	numVerdicts
)

var verdictNames = []string{"local", "snat", "dsr", "tunnel", "reply", "dsr-restore", "no-backend", "no-port", "too-big",
	"fragment", "error", "xdp-deferred"}

func (v Verdict) String() string {
	if v >= 0 && int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Counter is a packet and byte count.
type Counter struct{ Packets, Bytes uint64 }

// Stat is what happened to the packets of one service (ID 0: packets of
// no known service, such as fragments) with one verdict, summed over CPUs.
type Stat struct {
	Service ServiceKey
	Verdict Verdict
	Counter
}

// Stats reads the counters.
func (l *LB) Stats() ([]Stat, error) {
	var out []Stat
	var k npNpStatKey
	var per []npNpStat
	it := l.objs.NpStats.Iterate()
	for it.Next(&k, &per) {
		s := Stat{Service: ServiceKey{ID: k.SvcId, IPv6: k.Family == pinset.FamilyV6}, Verdict: Verdict(k.Verdict)}
		for _, c := range per {
			s.Packets += c.Packets
			s.Bytes += c.Bytes
		}
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("nodeport: read np_stats: %w", err)
	}
	slices.SortFunc(out, func(a, b Stat) int {
		if a.Service != b.Service {
			if a.Service.ID != b.Service.ID {
				return int(int64(a.Service.ID) - int64(b.Service.ID))
			}
			if !a.Service.IPv6 {
				return -1
			}
			return 1
		}
		return int(a.Verdict) - int(b.Verdict)
	})
	return out, nil
}

// GC removes what no program needs any more: connections idle longer than
// their timeout (the programs ignore them, but they hold SNAT ports until
// then and fill the table), and entries an interrupted Upsert or Delete
// left behind (backends, frontends, tables and counters of services that
// do not exist). It returns how many entries it removed.
func (l *LB) GC() (int, error) {
	if err := l.writable(); err != nil {
		return 0, err
	}
	release, err := l.obj.Lock(true)
	if err != nil {
		return 0, fmt.Errorf("nodeport: %w", err)
	}
	defer release()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids, l.frontends = nil, nil // re-read after the sweep

	var cfg npNpCfg
	if err := l.objs.NpConfig.Lookup(uint32(0), &cfg); err != nil {
		return 0, fmt.Errorf("nodeport: read np_config: %w", err)
	}
	now := monotonic()
	timeout := func(proto, state uint8) uint64 {
		s := cfg.Udp
		if proto == uint8(l4.TCP) {
			switch state {
			case 1:
				s = cfg.TcpEstablished
			case 2:
				s = cfg.TcpClosing
			default:
				s = cfg.TcpSyn
			}
		}
		return uint64(s) * uint64(time.Second)
	}
	var errs []error
	n := 0
	del := func(m *ebpf.Map, key any) {
		if err := m.Delete(key); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	var ck npNpCtKey
	var cv npNpCt
	var expired []npNpCtKey
	cit := l.objs.NpConns.Iterate()
	for cit.Next(&ck, &cv) {
		if now > cv.LastSeen && now-cv.LastSeen > timeout(ck.Proto, cv.State) {
			expired = append(expired, ck)
		}
	}
	for _, k := range expired {
		del(l.objs.NpConns, k)
	}

	svcs := map[npNpSvcKey]bool{}
	var sk npNpSvcKey
	var sv npNpSvc
	sit := l.objs.NpServices.Iterate()
	for sit.Next(&sk, &sv) {
		svcs[sk] = true
	}
	if err := sit.Err(); err != nil {
		return n, fmt.Errorf("nodeport: read np_services: %w", err)
	}
	var id uint32
	var be npNpBackend
	var orphans []uint32
	bit := l.objs.NpBackends.Iterate()
	for bit.Next(&id, &be) {
		if !svcs[npNpSvcKey{Id: be.SvcId, Family: be.Family}] {
			orphans = append(orphans, id)
		}
	}
	for _, id := range orphans {
		del(l.objs.NpBackends, id)
	}
	var fk npNpFeKey
	var fv npNpFe
	var staleFE []npNpFeKey
	fit := l.objs.NpFrontends.Iterate()
	for fit.Next(&fk, &fv) {
		if !svcs[fv.Svc] {
			staleFE = append(staleFE, fk)
		}
	}
	for _, k := range staleFE {
		del(l.objs.NpFrontends, k)
	}
	var mk npNpSvcKey
	var inner uint32
	var staleTables []npNpSvcKey
	mit := l.objs.NpMaglev.Iterate()
	for mit.Next(&mk, &inner) {
		if !svcs[mk] {
			staleTables = append(staleTables, mk)
		}
	}
	for _, k := range staleTables {
		del(l.objs.NpMaglev, k)
	}
	var stk npNpStatKey
	var per []npNpStat
	var staleStats []npNpStatKey
	stit := l.objs.NpStats.Iterate()
	for stit.Next(&stk, &per) {
		if stk.SvcId != 0 && !svcs[npNpSvcKey{Id: stk.SvcId, Family: stk.Family}] {
			staleStats = append(staleStats, stk)
		}
	}
	for _, k := range staleStats {
		del(l.objs.NpStats, k)
	}
	return n, errors.Join(errs...)
}
