// Package memstore is an in-memory store.Store for allocator tests.
package memstore

import (
	"net/netip"
	"sort"
	"sync"

	"github.com/warpnet/warpnet/ipam/store"
)

// Store keeps reservations in maps; a mutex stands in for the file lock.
type Store struct {
	mu      sync.Mutex
	owners  map[netip.Addr]store.Key
	byKey   map[store.Key][]netip.Addr
	cursors map[int]netip.Addr
	locked  bool
}

var _ store.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{owners: map[netip.Addr]store.Key{}, byKey: map[store.Key][]netip.Addr{}, cursors: map[int]netip.Addr{}}
}

func (s *Store) Lock() error   { s.mu.Lock(); s.locked = true; return nil }
func (s *Store) Unlock() error { s.locked = false; s.mu.Unlock(); return nil }
func (s *Store) Close() error  { return nil }

// mustLocked makes a missing Lock in the allocator fail loudly in tests.
func (s *Store) mustLocked() {
	if !s.locked {
		panic("memstore: called without the lock held")
	}
}

func (s *Store) Reserve(key store.Key, ip netip.Addr) (bool, error) {
	s.mustLocked()
	if owner, ok := s.owners[ip]; ok {
		return owner == key, nil
	}
	s.owners[ip] = key
	s.byKey[key] = append(s.byKey[key], ip)
	return true, nil
}

// Held reports whether ip is reserved.
func (s *Store) Held(ip netip.Addr) (bool, error) {
	_, held, err := s.Owner(ip)
	return held, err
}

func (s *Store) Owner(ip netip.Addr) (store.Key, bool, error) {
	s.mustLocked()
	k, ok := s.owners[ip]
	return k, ok, nil
}

func (s *Store) ByKey(key store.Key) ([]netip.Addr, error) {
	s.mustLocked()
	return append([]netip.Addr(nil), s.byKey[key]...), nil
}

func (s *Store) Release(key store.Key, ip netip.Addr) error {
	s.mustLocked()
	if s.owners[ip] != key {
		return nil
	}
	delete(s.owners, ip)
	ips := s.byKey[key][:0]
	for _, a := range s.byKey[key] {
		if a != ip {
			ips = append(ips, a)
		}
	}
	if len(ips) == 0 {
		delete(s.byKey, key)
	} else {
		s.byKey[key] = ips
	}
	return nil
}

func (s *Store) ReleaseKey(key store.Key) ([]netip.Addr, error) {
	s.mustLocked()
	ips := s.byKey[key]
	for _, ip := range ips {
		delete(s.owners, ip)
	}
	delete(s.byKey, key)
	return ips, nil
}

func (s *Store) Cursor(set int) (netip.Addr, error) { s.mustLocked(); return s.cursors[set], nil }

func (s *Store) SetCursor(set int, ip netip.Addr) error {
	s.mustLocked()
	s.cursors[set] = ip
	return nil
}

func (s *Store) List() ([]store.Reservation, error) {
	s.mustLocked()
	var out []store.Reservation
	for ip, k := range s.owners {
		out = append(out, store.Reservation{IP: ip, Key: k})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

func (s *Store) Keys() ([]store.Key, error) {
	s.mustLocked()
	var out []store.Key
	for k := range s.byKey {
		out = append(out, k)
	}
	return out, nil
}
