// Package store defines where warp-ipam keeps reservations. The allocator
// only sees this interface, so there is one way to allocate: the node-local
// disk store (disk/) and the cluster-wide Kubernetes store (kube/) implement
// it, and an in-memory fake (memstore/) backs the allocator's unit tests.
package store

import (
	"net/netip"
)

// Key identifies one attachment: a container's interface. CNI promises at
// most one ADD per key without an intervening DEL.
type Key struct {
	ContainerID string
	IfName      string
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// Reservation is one address held by one attachment.
type Reservation struct {
	IP  netip.Addr
	Key Key
}

// Store holds the reservations of one network. Every method except Lock and
// Close must be called with the lock held, so a read followed by a write is
// consistent across concurrent plugin processes (a Claimer relaxes this).
// The lock serialises the allocators that share the store's cursors: for
// the disk store, every allocator of the network; for the Kubernetes store,
// those of one node (Reserve is atomic across the cluster on its own there).
type Store interface {
	// Lock waits a bounded time; when another allocator held the lock
	// all along, its error wraps flock.ErrTimeout (try again later).
	Lock() error
	Unlock() error

	// Reserve records ip for key. It returns false, without changing
	// anything, when another attachment holds ip. Reserving an address the
	// key already holds succeeds (this repairs an interrupted Reserve).
	Reserve(key Key, ip netip.Addr) (bool, error)
	// Owner returns the attachment holding ip, if any.
	Owner(ip netip.Addr) (Key, bool, error)
	// Held reports whether ip is reserved. It serves scans over a whole
	// range (STATUS), so a store may answer it from a view of the network
	// read once per call, where Owner would cost a read per address.
	Held(ip netip.Addr) (bool, error)
	// ByKey returns the addresses key holds. Its cost must not depend on
	// how many reservations exist: it runs on every ADD and DEL.
	ByKey(key Key) ([]netip.Addr, error)
	// Release frees ip if key holds it; freeing a free address is not an error.
	Release(key Key, ip netip.Addr) error
	// ReleaseKey frees everything key holds and returns what it freed.
	ReleaseKey(key Key) ([]netip.Addr, error)

	// Cursor is the address last handed out from range set i (the zero
	// Addr when none), so dynamic allocation continues after it instead of
	// rescanning from the start.
	Cursor(set int) (netip.Addr, error)
	SetCursor(set int, ip netip.Addr) error

	// List returns every reservation and Keys every attachment known to
	// the store (including ones whose reservation was interrupted); both
	// are for GC and may scan everything.
	List() ([]Reservation, error)
	Keys() ([]Key, error)

	Close() error
}

// OwnerDescriber is implemented by stores that can say more about who holds
// an address than its attachment (the Kubernetes store names the pod), for
// error messages.
type OwnerDescriber interface {
	DescribeOwner(ip netip.Addr) (string, error)
}

// Claimer is a store whose Reserve is a claim atomic on its own (the
// Kubernetes store: the API server's create), so the lock only has to guard
// the cursors. The allocator holds the lock just to pick a candidate and
// move the cursor past it, and reserves after releasing it: a node's
// allocators then wait for each other for a file read and write, not for an
// API request. A candidate another allocator wins meanwhile is given up and
// the next one picked. Reserve, ByKey, Release and ReleaseKey, which touch
// one attachment's addresses, may be called without the lock.
type Claimer interface {
	Store
	// KnownHeld reports whether the store knows, without asking anyone,
	// that ip is held, so that the pick skips it. After Reserve returned
	// false for ip it must report true: a lost candidate is never picked
	// again by the same call.
	KnownHeld(ip netip.Addr) (bool, error)
}
