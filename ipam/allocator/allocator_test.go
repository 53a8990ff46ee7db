package allocator

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/ipam/config"
	"github.com/warpnet/warpnet/ipam/store"
	"github.com/warpnet/warpnet/ipam/store/memstore"
)

func mustConfig(t *testing.T, ipam string, envArgs string) *config.Config {
	t.Helper()
	cfg, err := config.Load([]byte(`{"cniVersion":"1.1.0","name":"t","ipam":`+ipam+`}`), envArgs)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

func key(n int) store.Key { return store.Key{ContainerID: fmt.Sprintf("c%d", n), IfName: "eth0"} }

func ips(leases []Lease) []string {
	var out []string
	for _, l := range leases {
		out = append(out, l.IP.String())
	}
	return out
}

func TestAllocate(t *testing.T) {
	const v4 = `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`
	tests := []struct {
		name  string
		ipam  string
		args  string
		prior []int // keys allocated first, dynamically
		want  []string
		err   error
	}{
		{name: "first address after the gateway", ipam: v4, want: []string{"10.0.0.2"}},
		{name: "continues after the cursor", ipam: v4, prior: []int{1, 2}, want: []string{"10.0.0.4"}},
		{name: "dual stack gives one per range set", ipam: `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/120"}]]}`,
			want: []string{"10.0.0.2", "fd00::2"}},
		{name: "exclusions are skipped", ipam: `{"ranges":[[{"subnet":"10.0.0.0/29"}]],"exclude":["10.0.0.2","10.0.0.3/32","10.0.0.4/31"]}`,
			want: []string{"10.0.0.6"}},
		{name: "explicit gateway is skipped", ipam: `{"ranges":[[{"subnet":"10.0.0.0/29","gateway":"10.0.0.2"}]]}`,
			want: []string{"10.0.0.1"}},
		{name: "second range of a set when the first is full",
			ipam:  `{"ranges":[[{"subnet":"10.0.0.0/30"},{"subnet":"10.0.1.0/30"}]]}`,
			prior: []int{1}, want: []string{"10.0.1.2"}},
		{name: "fixed address from CNI_ARGS", ipam: v4, args: "IP=10.0.0.5", want: []string{"10.0.0.5"}},
		{name: "fixed address held by another", ipam: v4, args: "IP=10.0.0.2", prior: []int{1}, err: ErrInUse},
		{name: "exhausted", ipam: `{"ranges":[[{"subnet":"10.0.0.0/29","rangeStart":"10.0.0.2","rangeEnd":"10.0.0.3"}]]}`,
			prior: []int{1, 2}, err: ErrExhausted},
		{name: "exhausted v6 set rolls back the v4 lease",
			ipam:  `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/126"}]]}`,
			prior: []int{1, 2}, err: ErrExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := memstore.New()
			for _, k := range tc.prior {
				if _, err := New(mustConfig(t, tc.ipam, ""), st).Allocate(key(k), nil); err != nil {
					t.Fatalf("prior allocation %d: %v", k, err)
				}
			}
			leases, err := New(mustConfig(t, tc.ipam, tc.args), st).Allocate(key(99), nil)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				st.Lock()
				held, _ := st.ByKey(key(99))
				st.Unlock()
				if len(held) != 0 {
					t.Fatalf("failed allocation left %v reserved", held)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ips(leases); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAllocateTwiceForOneKeyFails(t *testing.T) {
	st := memstore.New()
	a := New(mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, ""), st)
	if _, err := a.Allocate(key(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate(key(1), nil); !errors.Is(err, ErrAlreadyAllocated) {
		t.Fatalf("second ADD: err = %v, want ErrAlreadyAllocated", err)
	}
	held, _ := a.Held(key(1))
	if len(held) != 1 {
		t.Fatalf("held = %v, the first lease must survive", held)
	}
}

func TestReleasedAddressIsReusedAfterWrap(t *testing.T) {
	st := memstore.New()
	a := New(mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/29"}]]}`, ""), st) // .2-.6
	for i := 0; i < 5; i++ {
		if _, err := a.Allocate(key(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if freed, err := a.Release(key(1)); err != nil || len(freed) != 1 || freed[0].String() != "10.0.0.3" {
		t.Fatalf("release = %v, %v", freed, err)
	}
	if freed, err := a.Release(key(1)); err != nil || len(freed) != 0 {
		t.Fatalf("second release must be a no-op: %v, %v", freed, err)
	}
	l, err := a.Allocate(key(7), nil)
	if err != nil || l[0].IP.String() != "10.0.0.3" {
		t.Fatalf("after wrap got %v, %v; want 10.0.0.3", ips(l), err)
	}
}

// fakeProber answers for the addresses in taken, as a rogue host would.
func fakeProber(taken ...string) (Prober, *[]string) {
	var probed []string
	set := map[string]bool{}
	for _, s := range taken {
		set[s] = true
	}
	return func(addrs []netip.Addr) ([]Answer, error) {
		var out []Answer
		for _, a := range addrs {
			probed = append(probed, a.String())
			out = append(out, Answer{InUse: set[a.String()], Holder: "rogue"})
		}
		return out, nil
	}, &probed
}

func TestConflictDetection(t *testing.T) {
	const v4 = `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`
	t.Run("dynamic address answered by another host is swapped", func(t *testing.T) {
		st := memstore.New()
		p, probed := fakeProber("10.0.0.2", "10.0.0.3")
		l, err := New(mustConfig(t, v4, ""), st).Allocate(key(1), p)
		if err != nil || l[0].IP.String() != "10.0.0.4" {
			t.Fatalf("got %v, %v; want 10.0.0.4", ips(l), err)
		}
		if fmt.Sprint(*probed) != "[10.0.0.2 10.0.0.3 10.0.0.4]" {
			t.Fatalf("probed %v", *probed)
		}
		st.Lock()
		defer st.Unlock()
		if _, held, _ := st.Owner(netip.MustParseAddr("10.0.0.2")); held {
			t.Fatal("the conflicting address stayed reserved")
		}
	})
	t.Run("fixed address answered by another host fails and frees everything", func(t *testing.T) {
		st := memstore.New()
		p, _ := fakeProber("fd00::9")
		cfg := mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`, "IP=fd00::9")
		_, err := New(cfg, st).Allocate(key(1), p)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("err = %v, want ErrConflict", err)
		}
		st.Lock()
		defer st.Unlock()
		if all, _ := st.List(); len(all) != 0 {
			t.Fatalf("left reserved: %v", all)
		}
	})
	t.Run("dual stack is probed in one batch, then only the swapped address", func(t *testing.T) {
		st := memstore.New()
		p, probed := fakeProber("fd00::2")
		cfg := mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/64"}]]}`, "")
		l, err := New(cfg, st).Allocate(key(1), p)
		if err != nil || fmt.Sprint(ips(l)) != "[10.0.0.2 fd00::3]" {
			t.Fatalf("got %v, %v", ips(l), err)
		}
		if fmt.Sprint(*probed) != "[10.0.0.2 fd00::2 fd00::3]" {
			t.Fatalf("probed %v", *probed)
		}
	})
	t.Run("gives up after maxConflicts squatters", func(t *testing.T) {
		var taken []string
		for i := 2; i < 2+maxConflicts; i++ {
			taken = append(taken, fmt.Sprintf("10.0.0.%d", i))
		}
		st := memstore.New()
		p, _ := fakeProber(taken...)
		if _, err := New(mustConfig(t, v4, ""), st).Allocate(key(1), p); !errors.Is(err, ErrConflict) {
			t.Fatalf("err = %v, want ErrConflict", err)
		}
	})
	t.Run("probe errors fail the ADD and free the lease", func(t *testing.T) {
		st := memstore.New()
		boom := errors.New("boom")
		_, err := New(mustConfig(t, v4, ""), st).Allocate(key(1), func([]netip.Addr) ([]Answer, error) { return nil, boom })
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v", err)
		}
		st.Lock()
		defer st.Unlock()
		if all, _ := st.List(); len(all) != 0 {
			t.Fatalf("left reserved: %v", all)
		}
	})
}

func TestExhausted(t *testing.T) {
	st := memstore.New()
	cfg := mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.1.0.0/29","rangeEnd":"10.1.0.3"}]]}`, "")
	a := New(cfg, st)
	for i := 0; i < 2; i++ {
		full, err := a.Exhausted()
		if err != nil || len(full) != 0 {
			t.Fatalf("before %d allocations: full = %v, %v", i, full, err)
		}
		if _, err := a.Allocate(key(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	full, err := a.Exhausted()
	if err != nil || fmt.Sprint(full) != "[1]" {
		t.Fatalf("full = %v, %v; want [1]", full, err)
	}
}

func TestGC(t *testing.T) {
	st := memstore.New()
	a := New(mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, ""), st)
	for i := 0; i < 4; i++ {
		if _, err := a.Allocate(key(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := a.GC(map[store.Key]bool{key(0): true, key(2): true})
	if err != nil || len(freed) != 2 {
		t.Fatalf("freed %v, %v", freed, err)
	}
	for i, want := range []int{1, 0, 1, 0} {
		held, _ := a.Held(key(i))
		if len(held) != want {
			t.Errorf("key %d holds %v, want %d addresses", i, held, want)
		}
	}
}

// failingRelease is a store whose Release fails, as a broken disk would.
type failingRelease struct{ *memstore.Store }

func (failingRelease) Release(store.Key, netip.Addr) error { return errors.New("disk on fire") }

// A rollback that fails is reported beside the error that caused it, and
// the original error stays recognisable.
func TestFailedRollbackIsReported(t *testing.T) {
	cfg := mustConfig(t, `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"fd00::/126"}]]}`, "")
	st := failingRelease{memstore.New()}
	for k := 1; k <= 2; k++ { // fill the IPv6 set
		if _, err := New(cfg, st).Allocate(key(k), nil); err != nil {
			t.Fatal(err)
		}
	}
	_, err := New(cfg, st).Allocate(key(99), nil)
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "rollback failed") || !strings.Contains(msg, "release 10.0.0.4") || !strings.Contains(msg, "disk on fire") {
		t.Fatalf("err = %q, want the failed release of 10.0.0.4 reported", msg)
	}

	// The same after conflict detection fails.
	probe := func([]netip.Addr) ([]Answer, error) { return nil, errors.New("probe broke") }
	_, err = New(mustConfig(t, `{"ranges":[[{"subnet":"10.1.0.0/24"}]]}`, ""), st).Allocate(key(98), probe)
	if msg := fmt.Sprint(err); !strings.Contains(msg, "probe broke") || !strings.Contains(msg, "release 10.1.0.2") {
		t.Fatalf("err = %q, want the probe failure and the failed release", msg)
	}
}

// A range that spans its subnet's network and broadcast addresses: dynamic
// allocation never hands them out, and a fixed request for them is refused
// by the configuration, so the two paths agree.
func TestNetworkAndBroadcastNeverHandedOut(t *testing.T) {
	const ipam = `{"ranges":[[{"subnet":"10.0.0.0/30","rangeStart":"10.0.0.0","rangeEnd":"10.0.0.3","gateway":"10.0.0.1"}],[{"subnet":"fd00::/126","rangeStart":"fd00::"}]]}`
	st := memstore.New()
	leases, err := New(mustConfig(t, ipam, ""), st).Allocate(key(1), nil)
	if err != nil || fmt.Sprint(ips(leases)) != "[10.0.0.2 fd00::2]" {
		t.Fatalf("got %v %v", ips(leases), err)
	}
	if _, err := New(mustConfig(t, ipam, ""), st).Allocate(key(2), nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("second allocation: %v, want ErrExhausted (only network, gateway and broadcast are left)", err)
	}
	for _, ip := range []string{"10.0.0.0", "10.0.0.3", "fd00::"} {
		_, err := config.Load([]byte(`{"cniVersion":"1.1.0","name":"t","ipam":`+ipam+`}`), "IP="+ip)
		if err == nil || !strings.Contains(err.Error(), "network or broadcast") {
			t.Errorf("fixed request for %s: %v", ip, err)
		}
	}
}

// A store whose claims are atomic on their own (the Kubernetes store) is
// reserved from outside the lock, which guards the cursor only: concurrent
// allocators never get one address twice, and addresses another node won
// are skipped, each at most once.
func TestClaimOutsideTheLock(t *testing.T) {
	cfg := `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.109"}]]}`
	st := memstore.NewClaimer()
	for i := 10; i < 110; i += 3 { // a third of the range is held by other nodes
		st.Foreign(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
	}
	const allocators = 66 // exactly the free addresses
	got := make(chan []Lease, allocators)
	errs := make(chan error, allocators)
	for i := range allocators {
		go func() {
			leases, err := New(mustConfig(t, cfg, ""), st).Allocate(key(i), nil)
			got <- leases
			errs <- err
		}()
	}
	seen := map[netip.Addr]int{}
	for range allocators {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		for _, l := range <-got {
			seen[l.IP]++
			if l.IP.As4()[3]%3 == 1 {
				t.Errorf("%s is held by another node", l.IP)
			}
		}
	}
	for ip, n := range seen {
		if n > 1 {
			t.Errorf("%s handed out %d times", ip, n)
		}
	}
	if len(seen) != allocators {
		t.Errorf("%d addresses handed out, want %d", len(seen), allocators)
	}
	if st.ReservedLocked != 0 {
		t.Errorf("%d claims ran with the lock held", st.ReservedLocked)
	}
	if _, err := New(mustConfig(t, cfg, ""), st).Allocate(key(999), nil); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full range: err = %v, want ErrExhausted", err)
	}
	st.Forget()
	if freed, err := New(mustConfig(t, cfg, ""), st).Release(key(0)); err != nil || len(freed) != 1 {
		t.Fatalf("release: %v %v", freed, err)
	}
	if leases, err := New(mustConfig(t, cfg, ""), st).Allocate(key(1000), nil); err != nil || len(leases) != 1 || seen[leases[0].IP] != 1 {
		t.Fatalf("after a release: %v %v, want the freed address", leases, err)
	}
}
