package ring

import (
	"fmt"
	"math"
	"testing"
)

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

func loads(owners map[string]string) map[string]int {
	l := map[string]int{}
	for _, m := range owners {
		l[m]++
	}
	return l
}

func moved(a, b map[string]string) int {
	n := 0
	for k, m := range a {
		if b[k] != m {
			n++
		}
	}
	return n
}

// The properties placement promises: every key has one owner among the
// members; no member holds more than Capacity; and when one member of N
// joins or leaves, about 1/N of the keys move (measured against the ideal,
// with the bound's extra moves allowed).
func TestPlacementProperties(t *testing.T) {
	keys := names("cluster", 3000)
	for _, n := range []int{2, 3, 5, 8, 16} {
		members := names("node", n)
		before := Place(keys, members, DefaultEpsilon)
		capacity := Capacity(len(keys), n, DefaultEpsilon)
		for k, m := range before {
			if m == "" {
				t.Fatalf("n=%d: %s has no owner", n, k)
			}
		}
		if len(before) != len(keys) {
			t.Fatalf("n=%d: %d of %d keys placed", n, len(before), len(keys))
		}
		for m, l := range loads(before) {
			if l > capacity {
				t.Fatalf("n=%d: %s holds %d > capacity %d", n, m, l, capacity)
			}
		}
		// A member joins: the ideal is that it takes 1/(N+1) of the keys.
		joined := Place(keys, append(members, "node-new"), DefaultEpsilon)
		ideal := float64(len(keys)) / float64(n+1)
		got := moved(before, joined)
		t.Logf("n=%d: a join moved %d keys (ideal %.0f, %.2fx); max load %d, capacity %d", n, got, ideal, float64(got)/ideal, maxLoad(before), capacity)
		if float64(got) > 2*ideal || float64(got) < 0.5*ideal {
			t.Fatalf("n=%d: a join moved %d keys, ideal %.0f", n, got, ideal)
		}
		// A member leaves: its keys, and few others, move.
		left := Place(keys, members[1:], DefaultEpsilon)
		ideal = float64(len(keys)) / float64(n)
		got = moved(before, left)
		if float64(got) > 2*ideal || float64(got) < 0.5*ideal {
			t.Fatalf("n=%d: a leave moved %d keys, ideal %.0f", n, got, ideal)
		}
		for k, m := range left {
			if m == members[0] {
				t.Fatalf("n=%d: %s still on the member that left", n, k)
			}
		}
	}
}

func maxLoad(owners map[string]string) int {
	m := 0
	for _, l := range loads(owners) {
		m = max(m, l)
	}
	return m
}

// Placement is the same whatever order keys and members come in, so every
// node computes the same owners.
func TestPlacementIsDeterministic(t *testing.T) {
	keys := names("c", 200)
	members := []string{"b", "a", "c"}
	a := Place(keys, members, DefaultEpsilon)
	rev := make([]string, len(keys))
	for i, k := range keys {
		rev[len(keys)-1-i] = k
	}
	b := Place(rev, []string{"c", "a", "b", "a"}, DefaultEpsilon)
	if moved(a, b) != 0 {
		t.Fatal("placement depends on input order")
	}
}

func TestCapacityAndEdges(t *testing.T) {
	if c := Capacity(100, 4, 0.25); c != 32 {
		t.Fatalf("capacity %d, want 32", c)
	}
	if c := Capacity(1, 10, 0.25); c != 1 {
		t.Fatalf("capacity of 1 key over 10 members: %d", c)
	}
	if len(Place([]string{"a"}, nil, 0.25)) != 0 {
		t.Fatal("keys placed on no members")
	}
	if r := Rank("k", []string{"x", "y", "z"}); len(r) != 3 || r[0] != Place([]string{"k"}, []string{"z", "y", "x"}, 0.25)["k"] {
		t.Fatalf("rank %v: the first is not the owner of a lone key", r)
	}
	// Few keys: the bound binds, and holds.
	keys, members := names("c", 40), names("m", 8)
	owners := Place(keys, members, 0.25)
	if ml, c := maxLoad(owners), Capacity(40, 8, 0.25); ml > c {
		t.Fatalf("max load %d > capacity %d", ml, c)
	}
	unbounded := Place(keys, members, 100)
	if maxLoad(unbounded) <= Capacity(40, 8, 0.25) {
		t.Log("with these names plain rendezvous hashing happens to stay within the bound too")
	}
}

func FuzzPlace(f *testing.F) {
	f.Add(uint8(5), uint16(100), 0.25)
	f.Fuzz(func(t *testing.T, nm uint8, nk uint16, eps float64) {
		if nm == 0 || nm > 64 || nk > 2000 || eps < 0 || eps > 4 || math.IsNaN(eps) {
			return
		}
		keys, members := names("k", int(nk)), names("m", int(nm))
		owners := Place(keys, members, eps)
		if len(owners) != len(keys) {
			t.Fatalf("%d of %d placed", len(owners), len(keys))
		}
		if ml := maxLoad(owners); ml > Capacity(len(keys), len(members), eps) {
			t.Fatalf("max load %d over capacity", ml)
		}
	})
}
