package nodeport

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
)

// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016): a service's backends fill a
// table of a prime size M, each backend taking the slots of its own
// permutation of 0..M-1 in turn, so that every backend owns about M/N
// slots. The programs pick the slot of a flow by a hash of the client's
// address and port (not the node's), so:
//
//   - the table depends on nothing but the backends and M: every node
//     computes the same one, and a flow that lands on another node (an
//     ECMP change in front of a LoadBalancer IP, a client trying another
//     node's NodePort with the same source port) reaches the same backend;
//   - adding or removing one backend moves only about 1/N of the slots.
//
// The hashes of a backend come from its address and port alone (SHA-256 of
// "warpnet-maglev/<addr:port>"), never from anything a node chooses, and
// must never change between warpnet versions: nodes of a cluster in a
// rolling upgrade compute the same tables.

// DefaultTableSize is the Maglev table size of a service unless configured:
// a prime well above 100 × the backends of any ordinary service (Maglev's
// paper keeps M > 100 N for an even spread), 64 KiB per service.
const DefaultTableSize = 16381

// Table sizes accepted: primes in this range.
const (
	MinTableSize = 251
	MaxTableSize = 131071
)

// CheckTableSize says whether m can be a table size.
func CheckTableSize(m int) error {
	if m < MinTableSize || m > MaxTableSize || !big.NewInt(int64(m)).ProbablyPrime(20) {
		return fmt.Errorf("Maglev table size %d: want a prime from %d to %d (e.g. 251, 1021, 4093, 16381, 65521, 131071)",
			m, MinTableSize, MaxTableSize)
	}
	return nil
}

// MaglevTable fills a table of size m (a prime, see CheckTableSize) with
// indexes into backends sorted by SortBackends: table[slot] is the backend
// of the slot. It depends on the set of backends and on m only. m must be
// at least len(backends); no backends give nil.
func MaglevTable(backends []netip.AddrPort, m int) ([]int, error) {
	if err := CheckTableSize(m); err != nil {
		return nil, err
	}
	if len(backends) > m {
		return nil, fmt.Errorf("%d backends do not fit a Maglev table of %d slots", len(backends), m)
	}
	if len(backends) == 0 {
		return nil, nil
	}
	bes := SortBackends(backends)
	n := len(bes)
	offset, skip, next := make([]uint64, n), make([]uint64, n), make([]uint64, n)
	for i, b := range bes {
		h := sha256.Sum256([]byte("warpnet-maglev/" + b.String()))
		offset[i] = binary.BigEndian.Uint64(h[0:8]) % uint64(m)
		skip[i] = binary.BigEndian.Uint64(h[8:16])%uint64(m-1) + 1
	}
	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	for filled := 0; ; {
		for i := 0; i < n; i++ {
			c := (offset[i] + next[i]*skip[i]) % uint64(m)
			for table[c] >= 0 {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(m)
			}
			table[c] = i
			next[i]++
			if filled++; filled == m {
				return table, nil
			}
		}
	}
}

// SortBackends returns the backends in the order MaglevTable's indexes
// refer to (address, then port), without duplicates.
func SortBackends(backends []netip.AddrPort) []netip.AddrPort {
	out := slices.Clone(backends)
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}
