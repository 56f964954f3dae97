package ring

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
)

// DefaultEpsilon bounds each node's share of tunnels: at most (1+ε) times
// the average. 0.25 keeps the busiest node within a quarter of the mean
// while moving few extra keys when a node joins or leaves (Mirrokni,
// Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads").
const DefaultEpsilon = 0.25

// score is the rendezvous (highest random weight) score of key on member.
// SHA-256 rather than a faster hash: placement runs when membership or the
// cluster list changes, never per request, and a keyed-independent hash
// that anyone can recompute makes owners easy to check by hand.
func score(key, member string) uint64 {
	h := sha256.New()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(member))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// Rank returns members ordered by their rendezvous score for key, best
// first (ties, which need a hash collision, by name). Without load bounds
// the first is the owner; the rest are where the key goes if it does.
func Rank(key string, members []string) []string {
	type scored struct {
		name string
		s    uint64
	}
	ss := make([]scored, len(members))
	for i, m := range members {
		ss[i] = scored{m, score(key, m)}
	}
	slices.SortFunc(ss, func(a, b scored) int {
		if c := cmp.Compare(b.s, a.s); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.name
	}
	return out
}

// Capacity is how many of keys one of members may hold: the average, times
// 1+epsilon, rounded up (so at least one).
func Capacity(keys, members int, epsilon float64) int {
	if members == 0 {
		return 0
	}
	return max(1, int(math.Ceil((1+epsilon)*float64(keys)/float64(members))))
}

// Place assigns every key to a member: rendezvous hashing with bounded load.
// Keys are taken in the order of their own hash (a stable order that does
// not depend on their names' spelling or on the member set), and each goes
// to the best-ranked member that is not yet full. Every node that knows the
// same keys and members computes the same owners; when one member of N
// comes or goes, about 1/N of the keys move (TestPlacementProperties).
func Place(keys, members []string, epsilon float64) map[string]string {
	out := make(map[string]string, len(keys))
	if len(members) == 0 {
		return out
	}
	members = slices.Compact(slices.Sorted(slices.Values(members)))
	order := slices.Clone(keys)
	slices.SortFunc(order, func(a, b string) int {
		if c := cmp.Compare(score(a, ""), score(b, "")); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	order = slices.Compact(order)
	capacity := Capacity(len(order), len(members), epsilon)
	load := make(map[string]int, len(members))
	for _, k := range order {
		for _, m := range Rank(k, members) {
			if load[m] < capacity {
				out[k] = m
				load[m]++
				break
			}
		}
	}
	return out
}
