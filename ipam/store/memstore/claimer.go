package memstore

import (
	"net/netip"
	"sync"

	"github.com/warpnet/warpnet/ipam/store"
)

// Claimer is a store.Claimer in memory, for the allocator's claim path:
// its reservations are atomic on their own (as creates in the API server),
// its lock guards the cursors only, and Foreign marks addresses another
// node holds without this one knowing, so a claim of them is lost.
type Claimer struct {
	inner    *Store     // reservations; each call locks it on its own
	cursorMu sync.Mutex // the lock of Lock/Unlock

	mu      sync.Mutex
	locked  bool                // the cursor lock (Lock/Unlock)
	foreign map[netip.Addr]bool // held elsewhere
	known   map[netip.Addr]bool // lost claims: KnownHeld from then on
	// ReservedLocked counts Reserves called with the cursor lock held:
	// the claim path never does that.
	ReservedLocked int
}

var _ store.Claimer = (*Claimer)(nil)

// NewClaimer returns an empty Claimer.
func NewClaimer() *Claimer {
	return &Claimer{inner: New(), foreign: map[netip.Addr]bool{}, known: map[netip.Addr]bool{}}
}

// Foreign marks ip as held by another node.
func (c *Claimer) Foreign(ip netip.Addr) { c.mu.Lock(); c.foreign[ip] = true; c.mu.Unlock() }

// Forget drops what lost claims taught: a new plugin process starts
// without them.
func (c *Claimer) Forget() { c.mu.Lock(); clear(c.known); c.mu.Unlock() }

func (c *Claimer) Lock() error {
	c.cursorMu.Lock()
	c.mu.Lock()
	c.locked = true
	c.mu.Unlock()
	return nil
}

func (c *Claimer) Unlock() error {
	c.mu.Lock()
	c.locked = false
	c.mu.Unlock()
	c.cursorMu.Unlock()
	return nil
}

func (c *Claimer) Close() error { return nil }

// with runs fn on the reservations, atomically.
func with[T any](c *Claimer, fn func(s *Store) (T, error)) (T, error) {
	c.inner.Lock()
	defer c.inner.Unlock()
	return fn(c.inner)
}

func (c *Claimer) Reserve(k store.Key, ip netip.Addr) (bool, error) {
	c.mu.Lock()
	if c.locked {
		c.ReservedLocked++
	}
	lost := c.foreign[ip]
	c.mu.Unlock()
	ok := false
	if !lost {
		ok, _ = with(c, func(s *Store) (bool, error) { return s.Reserve(k, ip) })
	}
	if !ok {
		c.mu.Lock()
		c.known[ip] = true
		c.mu.Unlock()
	}
	return ok, nil
}

func (c *Claimer) KnownHeld(ip netip.Addr) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.locked {
		panic("memstore: KnownHeld called without the cursor lock")
	}
	return c.known[ip], nil
}

func (c *Claimer) Owner(ip netip.Addr) (store.Key, bool, error) {
	c.inner.Lock()
	defer c.inner.Unlock()
	return c.inner.Owner(ip)
}

func (c *Claimer) Held(ip netip.Addr) (bool, error) {
	c.mu.Lock()
	f := c.foreign[ip]
	c.mu.Unlock()
	if f {
		return true, nil
	}
	return with(c, func(s *Store) (bool, error) { return s.Held(ip) })
}

func (c *Claimer) ByKey(k store.Key) ([]netip.Addr, error) {
	return with(c, func(s *Store) ([]netip.Addr, error) { return s.ByKey(k) })
}

func (c *Claimer) Release(k store.Key, ip netip.Addr) error {
	_, err := with(c, func(s *Store) (bool, error) { return true, s.Release(k, ip) })
	return err
}

func (c *Claimer) ReleaseKey(k store.Key) ([]netip.Addr, error) {
	return with(c, func(s *Store) ([]netip.Addr, error) { return s.ReleaseKey(k) })
}

func (c *Claimer) mustLocked() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.locked {
		panic("memstore: cursor used without the lock held")
	}
}

func (c *Claimer) Cursor(set int) (netip.Addr, error) {
	c.mustLocked()
	return with(c, func(s *Store) (netip.Addr, error) { return s.Cursor(set) })
}

func (c *Claimer) SetCursor(set int, ip netip.Addr) error {
	c.mustLocked()
	_, err := with(c, func(s *Store) (bool, error) { return true, s.SetCursor(set, ip) })
	return err
}

func (c *Claimer) List() ([]store.Reservation, error) {
	return with(c, func(s *Store) ([]store.Reservation, error) { return s.List() })
}

func (c *Claimer) Keys() ([]store.Key, error) {
	return with(c, func(s *Store) ([]store.Key, error) { return s.Keys() })
}
