package disk

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/warpnet/warpnet/internal/flock"
	"github.com/warpnet/warpnet/ipam/store"
)

var (
	k1  = store.Key{ContainerID: "c1", IfName: "eth0"}
	k2  = store.Key{ContainerID: "c2", IfName: "net1"}
	ip1 = netip.MustParseAddr("10.0.0.2")
	ip2 = netip.MustParseAddr("fd00::2")
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, "net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Lock(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unlock() })
	return s
}

func TestReserveReleaseRoundTrip(t *testing.T) {
	s := open(t, t.TempDir())
	for _, ip := range []netip.Addr{ip1, ip2} {
		if ok, err := s.Reserve(k1, ip); !ok || err != nil {
			t.Fatalf("reserve %s: %v %v", ip, ok, err)
		}
	}
	if ok, err := s.Reserve(k2, ip1); ok || err != nil {
		t.Fatalf("reserve of a held address must fail: %v %v", ok, err)
	}
	if ok, err := s.Reserve(k1, ip1); !ok || err != nil {
		t.Fatalf("re-reserving own address must succeed: %v %v", ok, err)
	}
	held, _ := s.ByKey(k1)
	if len(held) != 2 {
		t.Fatalf("held %v", held)
	}
	// host-local's on-disk format, so the switch works both ways.
	data, _ := os.ReadFile(filepath.Join(s.Dir(), "10.0.0.2"))
	if string(data) != "c1\r\neth0" {
		t.Fatalf("address file = %q", data)
	}
	if err := s.Release(k2, ip1); err != nil {
		t.Fatal(err)
	}
	if owner, ok, _ := s.Owner(ip1); !ok || owner != k1 {
		t.Fatal("Release by a non-owner freed the address")
	}
	freed, err := s.ReleaseKey(k1)
	if err != nil || len(freed) != 2 {
		t.Fatalf("freed %v %v", freed, err)
	}
	if all, _ := s.List(); len(all) != 0 {
		t.Fatalf("left %v", all)
	}
	if keys, _ := s.Keys(); len(keys) != 0 {
		t.Fatalf("left keys %v", keys)
	}
}

func TestCursorPersists(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if c, _ := s.Cursor(0); c.IsValid() {
		t.Fatalf("fresh cursor = %v", c)
	}
	s.SetCursor(0, ip1)
	if c, _ := s.Cursor(0); c != ip1 {
		t.Fatalf("cursor = %v", c)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "net", "last_reserved_ip.0")); string(data) != "10.0.0.2" {
		t.Fatalf("cursor file = %q", data)
	}
}

// A writer killed between the index write and the address file leaves an
// index entry for an address it does not own: readers ignore it, and the
// address stays free for others.
func TestInterruptedReserveIsIgnored(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.writeIndex(k1, []netip.Addr{ip1}); err != nil {
		t.Fatal(err)
	}
	if held, _ := s.ByKey(k1); len(held) != 0 {
		t.Fatalf("dangling index entry reported as held: %v", held)
	}
	if ok, _ := s.Reserve(k2, ip1); !ok {
		t.Fatal("address named by a dangling entry is not free")
	}
	keys, _ := s.Keys()
	if len(keys) != 2 {
		t.Fatalf("GC must see the dangling key too: %v", keys)
	}
	if _, err := s.ReleaseKey(k1); err != nil {
		t.Fatal(err)
	}
	if owner, ok, _ := s.Owner(ip1); !ok || owner != k2 {
		t.Fatal("releasing the dangling key freed another's address")
	}
}

// A writer killed before it linked its temporary file into place leaves it
// behind: the DEL of that attachment removes it, and List (GC) removes any,
// since no live writer can own one while we hold the lock.
func TestTempFilesOfDeadWritersAreRemoved(t *testing.T) {
	s := open(t, t.TempDir())
	mine := s.tempPath(k1)
	other := s.tempPath(k2)
	oldStyle := filepath.Join(s.Dir(), ".tmp-999999999-x") // named by PID, as earlier versions did
	for _, p := range []string{mine, other, oldStyle} {
		os.WriteFile(p, []byte("c\r\neth0"), 0o644)
	}
	if _, err := s.ReleaseKey(k1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); !errors.Is(err, os.ErrNotExist) {
		t.Error("DEL left its attachment's temporary file")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("DEL removed another attachment's temporary file")
	}
	if all, err := s.List(); err != nil || len(all) != 0 {
		t.Fatalf("List = %v, %v", all, err)
	}
	for _, p := range []string{other, oldStyle} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("List left %s", p)
		}
	}
}

// Reservations written by host-local (no index) are indexed on first use,
// so DEL after switching "type" releases them.
func TestHostLocalReservationsAreAdopted(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "net"), 0o755)
	os.WriteFile(filepath.Join(dir, "net", "10.0.0.2"), []byte("c1\r\neth0"), 0o644)
	os.WriteFile(filepath.Join(dir, "net", "last_reserved_ip.0"), []byte("10.0.0.2"), 0o644)
	s := open(t, dir)
	held, err := s.ByKey(k1)
	if err != nil || len(held) != 1 || held[0] != ip1 {
		t.Fatalf("held %v %v", held, err)
	}
	if c, _ := s.Cursor(0); c != ip1 {
		t.Fatalf("cursor %v", c)
	}
}

func TestLockTimesOutWhileAnotherHoldsIt(t *testing.T) {
	dir := t.TempDir()
	holder := open(t, dir) // holds the lock
	_ = holder
	other, err := Open(dir, "net")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetLockTimeout(50 * time.Millisecond)
	if err := other.Lock(); !errors.Is(err, flock.ErrTimeout) {
		t.Fatalf("err = %v, want flock.ErrTimeout", err)
	}
}
