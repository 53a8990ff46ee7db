// Package allocator hands out one address per range set to an attachment,
// honouring fixed requests, exclusions and gateways, and re-picks an address
// that conflict detection finds in use on the network. It talks to
// reservations only through store.Store.
package allocator

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/rollback"
	"github.com/warpnet/warpnet/ipam/config"
	"github.com/warpnet/warpnet/ipam/store"
)

// Errors callers map to CNI error codes.
var (
	ErrAlreadyAllocated = errors.New("attachment already has addresses")
	ErrInUse            = errors.New("address is held by another attachment")
	ErrExhausted        = errors.New("no free address")
	ErrConflict         = errors.New("address is already used on the network")
)

// maxScan bounds one search for a free address, so a huge (IPv6) range
// that is somehow dense cannot stall an ADD; 2^20 probes of the store is
// already seconds of work.
const maxScan = 1 << 20

// maxConflicts bounds how many addresses answered by other hosts one ADD
// skips before giving up: that many squatters means the range is shared
// with something that does not use this IPAM.
const maxConflicts = 16

// Lease is an address given to an attachment from one range set.
type Lease struct {
	Set   int
	IP    netip.Addr
	Range config.Range // the range holding IP: its subnet and gateway go in the result
	Fixed bool         // requested by the runtime rather than picked
}

// Prober reports, for each address (in order), whether another host on the
// network answers for it. Addresses are probed in one batch so that a
// dual-stack ADD waits for one probe window, not one per address.
type Prober func(addrs []netip.Addr) ([]Answer, error)

// Answer is what probing one address found; Holder describes the other host
// for the error message.
type Answer struct {
	InUse  bool
	Holder string
}

// Allocator allocates from cfg's range sets into st.
type Allocator struct {
	cfg *config.Config
	st  store.Store
	// claimer is st when its Reserve is a claim on its own: the lock then
	// guards the cursors only (see store.Claimer).
	claimer store.Claimer
}

// New returns an allocator over cfg's ranges and exclusions.
func New(cfg *config.Config, st store.Store) *Allocator {
	a := &Allocator{cfg: cfg, st: st}
	a.claimer, _ = st.(store.Claimer)
	return a
}

// locked runs fn with the store lock held.
func (a *Allocator) locked(fn func() error) error {
	if err := a.st.Lock(); err != nil {
		return err
	}
	err := fn()
	if uerr := a.st.Unlock(); err == nil {
		err = uerr
	}
	return err
}

// forKey runs fn, which touches only key's own addresses: under the lock,
// unless the store's claims need none.
func (a *Allocator) forKey(fn func() error) error {
	if a.claimer != nil {
		return fn()
	}
	return a.locked(fn)
}

// Allocate gives key one address from every range set: the requested one
// (cfg.Requested) where there is one, else the next free one after the
// set's cursor. When probe is not nil every address is probed outside the
// lock; a dynamic address in use is swapped for the next free one, a fixed
// one fails. On error nothing stays reserved.
func (a *Allocator) Allocate(key store.Key, probe Prober) ([]Lease, error) {
	var leases []Lease
	err := a.forKey(func() error {
		held, err := a.st.ByKey(key)
		if err != nil {
			return err
		}
		if len(held) > 0 {
			return fmt.Errorf("%w: %s already holds %s; a runtime must DEL before it ADDs the same container and interface again",
				ErrAlreadyAllocated, key, joinAddrs(held))
		}
		for set := range a.cfg.Ranges {
			l, err := a.reserve(key, set)
			if err != nil {
				return rollback.With(err, a.release(key, leases))
			}
			leases = append(leases, l)
		}
		return nil
	})
	if err != nil || probe == nil {
		return leases, err
	}
	faultpoint.Hit("warp-ipam.add.before-probe") // reserved, lock released
	if err := a.resolveConflicts(key, leases, probe); err != nil {
		return nil, rollback.With(err, a.forKey(func() error { return a.release(key, leases) }))
	}
	faultpoint.Hit("warp-ipam.add.after-probe")
	return leases, nil
}

// reserve takes the requested or next free address of one range set.
func (a *Allocator) reserve(key store.Key, set int) (Lease, error) {
	if ip, ok := a.cfg.Requested[set]; ok {
		ok, err := a.st.Reserve(key, ip)
		if err != nil {
			return Lease{}, err
		}
		if !ok {
			return Lease{}, fmt.Errorf("%w: %s is held by %s", ErrInUse, ip, a.describeOwner(ip))
		}
		r, _ := a.cfg.Ranges[set].RangeFor(ip)
		return Lease{Set: set, IP: ip, Range: r, Fixed: true}, nil
	}
	return a.reserveNext(key, set)
}

// describeOwner names who holds ip, for the error of a fixed request.
func (a *Allocator) describeOwner(ip netip.Addr) string {
	if d, ok := a.st.(store.OwnerDescriber); ok {
		if s, err := d.DescribeOwner(ip); err == nil {
			return s
		}
	}
	owner, held, err := a.st.Owner(ip)
	if err != nil || !held {
		return "another attachment"
	}
	return fmt.Sprintf("container %s interface %s", owner.ContainerID, owner.IfName)
}

func (a *Allocator) reserveNext(key store.Key, set int) (Lease, error) {
	if a.claimer != nil {
		return a.claimNext(key, set)
	}
	var lease Lease
	found, err := a.scan(set, func(ip netip.Addr, r config.Range) (bool, error) {
		ok, err := a.st.Reserve(key, ip)
		if err != nil || !ok {
			return false, err
		}
		lease = Lease{Set: set, IP: ip, Range: r}
		if err := a.st.SetCursor(set, ip); err != nil {
			return true, err
		}
		faultpoint.Hit("warp-ipam.add.after-cursor")
		return true, nil
	})
	if err != nil {
		return Lease{}, err
	}
	if !found {
		return Lease{}, a.exhausted(set)
	}
	return lease, nil
}

func (a *Allocator) exhausted(set int) error {
	return fmt.Errorf("%w in range set %d (%s): every address is reserved or excluded", ErrExhausted, set, a.cfg.Ranges[set])
}

// claimNext is reserveNext for a Claimer: the lock is held only to pick the
// next candidate not known to be held and to move the cursor past it; the
// claim runs after it is released, so the node's other allocators pick
// their own candidates meanwhile. A candidate won by another allocator
// (another node, or a fixed request) is known held from then on, so the
// picks move on and end once no candidate is left.
func (a *Allocator) claimNext(key store.Key, set int) (Lease, error) {
	for picks := 0; picks < maxScan; picks++ {
		var ip netip.Addr
		var r config.Range
		found := false
		err := a.locked(func() (err error) {
			found, err = a.scan(set, func(c netip.Addr, cr config.Range) (bool, error) {
				if held, err := a.claimer.KnownHeld(c); held || err != nil {
					return false, err
				}
				ip, r = c, cr
				return true, a.st.SetCursor(set, c)
			})
			return err
		})
		if err != nil {
			return Lease{}, err
		}
		if !found {
			return Lease{}, a.exhausted(set)
		}
		faultpoint.Hit("warp-ipam.add.after-cursor")
		ok, err := a.st.Reserve(key, ip)
		if err != nil {
			return Lease{}, err
		}
		if ok {
			return Lease{Set: set, IP: ip, Range: r}, nil
		}
	}
	return Lease{}, a.exhausted(set)
}

// scan visits the candidate addresses of a range set, starting after the
// set's cursor and wrapping around once, until visit returns true. Whether
// an address is free is the visitor's business: reserving checks it anyway,
// so ADD reads each candidate's reservation once. Gateways, exclusions and the subnet's network and
// broadcast addresses are never visited.
func (a *Allocator) scan(set int, visit func(netip.Addr, config.Range) (bool, error)) (bool, error) {
	rs := a.cfg.Ranges[set]
	cursor, err := a.st.Cursor(set)
	if err != nil {
		return false, err
	}
	// Start after the cursor when it lies in one of the ranges.
	startRange, start := 0, rs[0].Start
	for i, r := range rs {
		if cursor.IsValid() && r.Contains(cursor) {
			startRange, start = i, cursor.Next()
			if !r.Contains(start) {
				startRange = (i + 1) % len(rs)
				start = rs[startRange].Start
			}
			break
		}
	}
	scanned := 0
	// len(rs)+1 passes: the start range is visited from the cursor to
	// its end first and from its beginning up to the cursor last.
	for pass := 0; pass <= len(rs); pass++ {
		ri := (startRange + pass) % len(rs)
		r := rs[ri]
		from, to := r.Start, r.End
		if pass == 0 {
			from = start
		} else if pass == len(rs) {
			if start == r.Start {
				break
			}
			to = start.Prev()
		}
		for ip := from; ip.IsValid() && ip.Compare(to) <= 0; ip = ip.Next() {
			if scanned++; scanned > maxScan {
				return false, nil
			}
			if !a.candidate(ip, r) {
				continue
			}
			done, err := visit(ip, r)
			if done || err != nil {
				return done, err
			}
		}
	}
	return false, nil
}

func (a *Allocator) candidate(ip netip.Addr, r config.Range) bool {
	return ip != r.Gateway && !r.NetworkOrBroadcast(ip) && !a.cfg.Excluded(ip)
}

// release frees leases on a path that already fails; it runs with the lock
// held, keeps going past failures and returns them all, so the caller can
// report what stayed reserved beside its own error.
func (a *Allocator) release(key store.Key, leases []Lease) error {
	var errs []error
	for _, l := range leases {
		if err := a.st.Release(key, l.IP); err != nil {
			errs = append(errs, fmt.Errorf("release %s: %w", l.IP, err))
		}
	}
	return errors.Join(errs...)
}

// resolveConflicts probes the leases and, while another host answers for a
// dynamic one, swaps it for the next free address of its set and probes
// again; a fixed lease that is answered for fails the ADD. Probes run outside
// the store lock so that slow probes do not hold up other pods' ADDs.
func (a *Allocator) resolveConflicts(key store.Key, leases []Lease, probe Prober) error {
	pending := make([]int, len(leases)) // indexes of leases still to probe
	for i := range pending {
		pending[i] = i
	}
	conflicts := 0
	for len(pending) > 0 {
		addrs := make([]netip.Addr, len(pending))
		for i, li := range pending {
			addrs[i] = leases[li].IP
		}
		answers, err := probe(addrs)
		if err != nil {
			return fmt.Errorf("conflict detection for %s: %w", joinAddrs(addrs), err)
		}
		var next []int
		for i, li := range pending {
			if !answers[i].InUse {
				continue
			}
			l, holder := &leases[li], answers[i].Holder
			if l.Fixed {
				return fmt.Errorf("%w: requested address %s is answered for by %s; remove it from that host or request another address", ErrConflict, l.IP, holder)
			}
			if conflicts++; conflicts >= maxConflicts {
				return fmt.Errorf("%w: %d addresses are answered for by other hosts (last %s by %s); exclude them with ipam.exclude",
					ErrConflict, conflicts, l.IP, holder)
			}
			if err := a.forKey(func() error { return a.swap(key, l, holder) }); err != nil {
				return err
			}
			next = append(next, li)
		}
		pending = next
	}
	return nil
}

// swap releases a lease's address and reserves the next free one of its set.
func (a *Allocator) swap(key store.Key, l *Lease, holder string) error {
	taken := l.IP
	if err := a.st.Release(key, taken); err != nil {
		return err
	}
	next, err := a.reserveNext(key, l.Set)
	if err != nil {
		return fmt.Errorf("%s is answered for by %s and no other address is free: %w", taken, holder, err)
	}
	*l = next
	return nil
}

// Held returns what key holds.
func (a *Allocator) Held(key store.Key) ([]netip.Addr, error) {
	var held []netip.Addr
	err := a.forKey(func() (err error) {
		held, err = a.st.ByKey(key)
		return err
	})
	return held, err
}

// Release frees everything key holds; releasing nothing is not an error.
func (a *Allocator) Release(key store.Key) ([]netip.Addr, error) {
	var freed []netip.Addr
	err := a.forKey(func() (err error) {
		freed, err = a.st.ReleaseKey(key)
		return err
	})
	return freed, err
}

// Exhausted returns the range sets in which no address is free; ADD cannot
// succeed while any is.
func (a *Allocator) Exhausted() ([]int, error) {
	var full []int
	err := a.locked(func() error {
		for set := range a.cfg.Ranges {
			found, err := a.scan(set, func(ip netip.Addr, _ config.Range) (bool, error) {
				held, err := a.st.Held(ip)
				return !held, err
			})
			if err != nil {
				return err
			}
			if !found {
				full = append(full, set)
			}
		}
		return nil
	})
	return full, err
}

// GC releases every attachment not in keep. It goes on past errors and
// returns them all, so one bad entry cannot pin every other leak.
func (a *Allocator) GC(keep map[store.Key]bool) ([]store.Reservation, error) {
	var freed []store.Reservation
	var errs []error
	err := a.locked(func() error {
		keys, err := a.st.Keys()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if keep[k] {
				continue
			}
			ips, err := a.st.ReleaseKey(k)
			if err != nil {
				errs = append(errs, fmt.Errorf("release %s: %w", k, err))
			}
			for _, ip := range ips {
				freed = append(freed, store.Reservation{IP: ip, Key: k})
			}
		}
		// Address files whose owner has no index entry (written by a
		// foreign writer after the index was built) are released here.
		all, err := a.st.List()
		if err != nil {
			return err
		}
		for _, r := range all {
			if keep[r.Key] {
				continue
			}
			if err := a.st.Release(r.Key, r.IP); err != nil {
				errs = append(errs, fmt.Errorf("release %s of %s: %w", r.IP, r.Key, err))
				continue
			}
			freed = append(freed, r)
		}
		return nil
	})
	return freed, errors.Join(append([]error{err}, errs...)...)
}

func joinAddrs(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ", ")
}
