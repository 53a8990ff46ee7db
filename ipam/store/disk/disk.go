// Package disk is the node-local reservation store: one directory per network
// under dataDir, shared by every plugin process through a file lock.
//
// Layout of <dataDir>/<network>/ (the first three are host-local's format, so
// reservations made by host-local are honoured after switching "type", and
// the other way round):
//
//	lock                    flock(2) target serialising allocators (internal/flock)
//	<ip>                    one file per reserved address: "containerID\r\nifname"
//	last_reserved_ip.<set>  the allocation cursor of range set <set>
//	attachments/<key>       warp-ipam's index: the addresses one attachment holds
//
// host-local finds an attachment's addresses by reading every file in the
// directory, so its ADD and DEL slow down as the network fills. The index
// makes ADD, DEL and CHECK touch a constant number of files.
//
// Crash safety: a writer killed at any point leaves the store repairable.
// Address files are the truth about ownership, so they appear atomically: a
// temporary file is written and then link(2)ed into place, which also makes
// the create exclusive. Index entries are only hints that readers verify
// against the address files, so they (and the cursor) are rewritten in place
// like host-local's cursor: Reserve writes the index entry before the address
// file and Release removes the address file before the index entry, so the
// worst leftover is an index entry (possibly torn) naming an address the key
// does not own, which readers ignore and the next write of that key drops.
// A temporary file is named after its attachment, so the DEL of that
// attachment removes one a dead writer left; List (run by GC) removes them
// all, since with the lock held no writer is alive to own one. Each step is
// a crash point (internal/faultpoint); tests/e2e/ipam kills the plugin at
// every one and checks that DEL or GC repairs what it left.
package disk

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/warpnet/warpnet/internal/faultpoint"
	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/ipam/store"
)

const (
	lockFile      = "lock"
	cursorPrefix  = "last_reserved_ip."
	indexDir      = "attachments"
	indexMarker   = ".v1" // present once the index covers every address file
	tmpPrefix     = ".tmp-"
	ownerLineFeed = "\r\n" // host-local's separator between container ID and ifname
)

// Store is the disk store of one network.
type Store struct {
	dir  string
	lock *flock.Lock
}

var _ store.Store = (*Store)(nil)

// Open creates (if needed) and opens the store of network under dataDir.
func Open(dataDir, network string) (*Store, error) {
	dir := filepath.Join(dataDir, network)
	if err := os.MkdirAll(filepath.Join(dir, indexDir), 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the reservation directory (check dataDir): %w", err)
	}
	l, err := flock.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return nil, err
	}
	return &Store{dir: dir, lock: l}, nil
}

// Dir is the directory holding this network's reservations.
func (s *Store) Dir() string { return s.dir }

// SetLockTimeout changes how long Lock waits (flock.DefaultTimeout unless
// set). The lock is held for milliseconds per call (conflict probes run
// outside it), so waiting long means something is wrong.
func (s *Store) SetLockTimeout(d time.Duration) { s.lock.SetTimeout(d) }

// Lock takes the network's exclusive lock; see store.Store for the error
// after a timeout. The kernel drops a flock when its holder dies, so a
// killed plugin never wedges the network.
func (s *Store) Lock() error {
	if err := s.lock.Lock(); err != nil {
		return err
	}
	return s.buildIndex()
}

func (s *Store) Unlock() error { return s.lock.Unlock() }

func (s *Store) Close() error { return s.lock.Close() }

func (s *Store) ipPath(ip netip.Addr) string { return filepath.Join(s.dir, ip.String()) }

func indexName(k store.Key) string {
	return url.QueryEscape(k.ContainerID) + ":" + url.QueryEscape(k.IfName)
}

func (s *Store) indexPath(k store.Key) string { return filepath.Join(s.dir, indexDir, indexName(k)) }

// tempPath is where k's address file is written before it is linked into
// place. One per attachment is enough: writers hold the lock.
func (s *Store) tempPath(k store.Key) string { return filepath.Join(s.dir, tmpPrefix+indexName(k)) }

func keyFromIndexName(name string) (store.Key, bool) {
	id, ifn, ok := strings.Cut(name, ":")
	if !ok {
		return store.Key{}, false
	}
	id, err1 := url.QueryUnescape(id)
	ifn, err2 := url.QueryUnescape(ifn)
	return store.Key{ContainerID: id, IfName: ifn}, err1 == nil && err2 == nil
}

// buildIndex indexes address files that were written without an index entry
// (by host-local, before the switch). It runs once per network directory.
func (s *Store) buildIndex() error {
	marker := filepath.Join(s.dir, indexDir, indexMarker)
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	all, err := s.List()
	if err != nil {
		return err
	}
	byKey := map[store.Key][]netip.Addr{}
	for _, r := range all {
		byKey[r.Key] = append(byKey[r.Key], r.IP)
	}
	for k, ips := range byKey {
		known, err := s.readIndex(k)
		if err != nil {
			return err
		}
		if err := s.writeIndex(k, union(known, ips)); err != nil {
			return err
		}
	}
	return os.WriteFile(marker, nil, 0o644)
}

func union(a, b []netip.Addr) []netip.Addr {
	out := append([]netip.Addr(nil), a...)
	for _, ip := range b {
		if !contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

func contains(ips []netip.Addr, ip netip.Addr) bool {
	for _, a := range ips {
		if a == ip {
			return true
		}
	}
	return false
}

// Held reports whether ip is reserved.
func (s *Store) Held(ip netip.Addr) (bool, error) {
	_, held, err := s.Owner(ip)
	return held, err
}

func (s *Store) Owner(ip netip.Addr) (store.Key, bool, error) {
	data, err := os.ReadFile(s.ipPath(ip))
	if errors.Is(err, os.ErrNotExist) {
		return store.Key{}, false, nil
	}
	if err != nil {
		return store.Key{}, false, err
	}
	return parseOwner(data), true, nil
}

func parseOwner(data []byte) store.Key {
	id, ifn, _ := strings.Cut(strings.TrimSpace(string(data)), ownerLineFeed)
	return store.Key{ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifn)}
}

func (s *Store) readIndex(k store.Key) ([]netip.Addr, error) {
	data, err := os.ReadFile(s.indexPath(k))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	for _, line := range strings.Fields(string(data)) {
		if ip, err := netip.ParseAddr(line); err == nil {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

func (s *Store) writeIndex(k store.Key, ips []netip.Addr) error {
	if len(ips) == 0 {
		err := os.Remove(s.indexPath(k))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var b strings.Builder
	for _, ip := range ips {
		b.WriteString(ip.String())
		b.WriteByte('\n')
	}
	return os.WriteFile(s.indexPath(k), []byte(b.String()), 0o644)
}

// ByKey reads the key's index entry and keeps only addresses whose address
// file confirms the key as owner; anything else is a leftover of an
// interrupted Reserve.
func (s *Store) ByKey(k store.Key) ([]netip.Addr, error) {
	listed, err := s.readIndex(k)
	if err != nil {
		return nil, err
	}
	var owned []netip.Addr
	for _, ip := range listed {
		owner, ok, err := s.Owner(ip)
		if err != nil {
			return nil, err
		}
		if ok && owner == k {
			owned = append(owned, ip)
		}
	}
	return owned, nil
}

func (s *Store) Reserve(k store.Key, ip netip.Addr) (bool, error) {
	owner, held, err := s.Owner(ip)
	if err != nil {
		return false, err
	}
	if held && owner != k {
		return false, nil
	}
	owned, err := s.ByKey(k)
	if err != nil {
		return false, err
	}
	if !contains(owned, ip) {
		owned = append(owned, ip)
	}
	// Index first: if we die before the address file exists, the entry is
	// ignored by ByKey and the address stays free.
	if err := s.writeIndex(k, owned); err != nil {
		return false, err
	}
	faultpoint.Hit("warp-ipam.add.after-index")
	if held {
		return true, nil
	}
	tmp := s.tempPath(k)
	if err := os.WriteFile(tmp, []byte(k.ContainerID+ownerLineFeed+k.IfName), 0o644); err != nil {
		os.Remove(tmp)
		return false, err
	}
	defer os.Remove(tmp)
	faultpoint.Hit("warp-ipam.add.after-temp")
	// link(2) fails if the name exists, which makes the create exclusive
	// even against a writer that does not take our lock.
	if err := os.Link(tmp, s.ipPath(ip)); err != nil {
		if errors.Is(err, os.ErrExist) {
			return false, s.writeIndex(k, owned[:len(owned)-1])
		}
		return false, err
	}
	faultpoint.Hit("warp-ipam.add.after-address")
	return true, nil
}

func (s *Store) Release(k store.Key, ip netip.Addr) error {
	owner, held, err := s.Owner(ip)
	if err != nil {
		return err
	}
	if held && owner == k {
		if err := os.Remove(s.ipPath(ip)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	owned, err := s.ByKey(k)
	if err != nil {
		return err
	}
	return s.writeIndex(k, owned)
}

func (s *Store) ReleaseKey(k store.Key) ([]netip.Addr, error) {
	owned, err := s.ByKey(k)
	if err != nil {
		return nil, err
	}
	for _, ip := range owned {
		if err := os.Remove(s.ipPath(ip)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		faultpoint.Hit("warp-ipam.del.after-address") // the index still lists it: ByKey ignores it
	}
	// A temporary left by a writer that died before linking it.
	if err := os.Remove(s.tempPath(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return owned, err
	}
	if err := s.writeIndex(k, nil); err != nil {
		return owned, err
	}
	faultpoint.Hit("warp-ipam.del.after-index")
	return owned, nil
}

func (s *Store) cursorPath(set int) string {
	return filepath.Join(s.dir, cursorPrefix+strconv.Itoa(set))
}

func (s *Store) Cursor(set int) (netip.Addr, error) {
	data, err := os.ReadFile(s.cursorPath(set))
	if errors.Is(err, os.ErrNotExist) {
		return netip.Addr{}, nil
	}
	if err != nil {
		return netip.Addr{}, err
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	if err != nil {
		return netip.Addr{}, nil // a torn cursor only costs a rescan
	}
	return ip, nil
}

func (s *Store) SetCursor(set int, ip netip.Addr) error {
	return os.WriteFile(s.cursorPath(set), []byte(ip.String()), 0o644)
}

// List reads every address file. It also removes temporary files, all left
// by writers that died (we hold the lock), which is why GC calls it.
func (s *Store) List() ([]store.Reservation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []store.Reservation
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			if err := os.Remove(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			continue
		}
		ip, err := netip.ParseAddr(name)
		if err != nil || e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		out = append(out, store.Reservation{IP: ip, Key: parseOwner(data)})
	}
	return out, nil
}

func (s *Store) Keys() ([]store.Key, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	seen := map[store.Key]bool{}
	var keys []store.Key
	add := func(k store.Key) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, r := range all {
		add(r.Key)
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, indexDir))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if k, ok := keyFromIndexName(e.Name()); ok {
			add(k)
		}
	}
	return keys, nil
}
