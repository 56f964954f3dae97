package control_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"))
}

// migratedStore opens a fresh embedded store with the clock now (nil:
// time.Now), closed at cleanup.
func migratedStore(t *testing.T, now func() time.Time) *store.Store {
	t.Helper()
	cfg := store.DefaultConfig()
	cfg.DSN, cfg.Now = filepath.Join(t.TempDir(), "gatehouse.db"), now
	st, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

type recorded struct {
	mu      sync.Mutex
	changes []store.Change
}

func (r *recorded) ApplyChange(_ context.Context, c store.Change) error {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
	return nil
}

func (r *recorded) subjects() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.changes {
		out = append(out, c.Subject)
	}
	return out
}

// The follower applies each change once, including one whose transaction
// committed after later ones were seen (stamped earlier, within the
// look-back window), and nothing from before it started.
func TestFollowerAppliesEachChangeOnce(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	st := migratedStore(t, clock)
	revoke := func(user string) {
		t.Helper()
		if err := st.Revoke(ctx, &store.Revocation{UserID: user, Until: clock().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	revoke("before-start")
	advance(10 * time.Second)
	rec := &recorded{}
	f := &control.Follower{Store: st, Handler: rec, Lookback: 5 * time.Second, Now: clock}
	f.Start()
	revoke("u1")
	advance(time.Second)
	revoke("u2")
	if n, err := f.Poll(ctx); err != nil || n != 2 {
		t.Fatalf("first poll applied %d (%v), want 2", n, err)
	}
	// A change stamped two seconds ago whose transaction commits only now.
	advance(-2 * time.Second)
	revoke("late")
	advance(2 * time.Second)
	revoke("u3")
	if n, err := f.Poll(ctx); err != nil || n != 2 {
		t.Fatalf("second poll applied %d (%v), want the late one and u3", n, err)
	}
	if n, _ := f.Poll(ctx); n != 0 {
		t.Fatalf("a poll with nothing new applied %d", n)
	}
	got := rec.subjects()
	want := []string{"u1", "u2", "late", "u3"}
	if len(got) != len(want) {
		t.Fatalf("applied %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("applied %v, want %v", got, want)
		}
	}
}

// Run polls until its context ends, and returns then.
func TestFollowerRunStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st := migratedStore(t, nil)
	rec := &recorded{}
	f := &control.Follower{Store: st, Handler: rec, Interval: 10 * time.Millisecond}
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	if err := st.Revoke(ctx, &store.Revocation{Serial: "ab", Until: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(rec.subjects()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the change was not applied")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
