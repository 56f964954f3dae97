package ring

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testKey = bytes.Repeat([]byte{9}, 32)

func startRing(t *testing.T, name string, key []byte, seeds ...string) *Ring {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name, cfg.BindAddr, cfg.Key, cfg.Seeds = name, "127.0.0.1:0", key, seeds
	cfg.JoinRetry = 100 * time.Millisecond
	cfg.Meta = Meta{PublicAddr: name + ":8443", PeerAddr: name + ":8444", Generation: time.Now().UnixMilli()}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func waitMembers(t *testing.T, r *Ring, want int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for len(r.Members()) != want {
		if time.Since(start) > timeout {
			t.Fatalf("%s sees %d members, want %d", r.Name(), len(r.Members()), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// Three nodes join through a seed, see each other's metadata and agree on
// owners; a draining node gets no tunnel; a wrong key keeps a stranger out.
func TestRingJoinMetaAndOwners(t *testing.T) {
	a := startRing(t, "a", testKey)
	b := startRing(t, "b", testKey, a.GossipAddr())
	c := startRing(t, "c", testKey, a.GossipAddr())
	for _, r := range []*Ring{a, b, c} {
		waitMembers(t, r, 3, 10*time.Second)
	}
	if m := b.Members()[0]; m.Name != "a" || m.Meta.PublicAddr != "a:8443" || m.Meta.PeerAddr != "a:8444" {
		t.Fatalf("b's view of a: %+v", m)
	}
	keys := []string{}
	for i := range 60 {
		keys = append(keys, fmt.Sprintf("cluster-%d", i))
	}
	oa, ob := a.Owners(keys), b.Owners(keys)
	if moved(oa, ob) != 0 {
		t.Fatal("two nodes disagree on owners")
	}
	// c drains: the others stop placing tunnels on it.
	if err := c.SetMeta(context.Background(), func(m *Meta) { m.Draining = true }); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		owners := a.Owners(keys)
		if loads(owners)["c"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a still places tunnels on a draining node")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A node with another key is not let in.
	stranger := startRing(t, "x", bytes.Repeat([]byte{1}, 32), a.GossipAddr())
	time.Sleep(500 * time.Millisecond)
	if len(stranger.Members()) != 1 || len(a.Members()) != 3 {
		t.Fatalf("a node with another key joined: it sees %d, a sees %d", len(stranger.Members()), len(a.Members()))
	}
}

// A node that reaches no seed starts alone and serves; it joins once a
// seed is there.
func TestRingStartsAloneAndJoinsLater(t *testing.T) {
	a := startRing(t, "a", testKey)
	seed := a.GossipAddr()
	a.Close()
	b := startRing(t, "b", testKey, seed)
	if n := len(b.Members()); n != 1 {
		t.Fatalf("alone: %d members", n)
	}
	// The seed comes up (on the address b was given): b's retry joins it.
	cfg := DefaultConfig()
	cfg.Name, cfg.BindAddr, cfg.Key = "c", seed, testKey
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitMembers(t, b, 2, 10*time.Second)
}

// Failure detection with the defaults: a crashed peer (no leave) leaves the
// others' view in about a second; a graceful leave at once. The times are
// logged, not asserted.
func TestRingFailureDetection(t *testing.T) {
	a := startRing(t, "a", testKey)
	b := startRing(t, "b", testKey, a.GossipAddr())
	c := startRing(t, "c", testKey, a.GossipAddr())
	for _, r := range []*Ring{a, b, c} {
		waitMembers(t, r, 3, 10*time.Second)
	}
	c.Close() // a crash: no leave message
	took := waitMembers(t, a, 2, 30*time.Second)
	t.Logf("a crashed peer of 3 left the view after %s (probe %s, timeout %s, suspicion x%d)", took, DefaultConfig().ProbeInterval, DefaultConfig().ProbeTimeout, DefaultConfig().SuspicionMult)
	if err := b.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	took = waitMembers(t, a, 1, 10*time.Second)
	t.Logf("a peer that left gracefully was gone after %s", took)
}
