package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// memState is a StateStore in memory.
type memState struct {
	mu sync.Mutex
	s  *State
}

func (m *memState) LoadCA(context.Context) (*State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.s == nil {
		return nil, ErrNoState
	}
	return m.s, nil
}

func (m *memState) CreateCA(_ context.Context, s *State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.s != nil {
		return ErrInitialized
	}
	m.s = s
	return nil
}

func newKEK(t *testing.T) *LocalKEK {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	k, err := NewLocalKEK(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A node that does not lead opens the CA without its keys: it verifies
// what the leader signs and signs nothing (a retryable ErrNotLeader).
// Unsealed, it signs; sealed again, it stops, and its certificates still
// verify everywhere.
func TestOpenPublicVerifiesAndUnsealSigns(t *testing.T) {
	ctx := context.Background()
	st, kek := &memState{}, newKEK(t)
	leader, err := Init(ctx, DefaultConfig(), kek, st)
	if err != nil {
		t.Fatal(err)
	}
	follower, err := OpenPublic(ctx, DefaultConfig(), st)
	if err != nil {
		t.Fatal(err)
	}
	if !follower.Sealed() || leader.Sealed() {
		t.Fatalf("sealed: follower %v, leader %v", follower.Sealed(), leader.Sealed())
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := follower.IssueUser(ctx, "ada", nil, key.Public(), time.Hour); !errors.Is(err, ErrNotLeader) || !Retryable(err) {
		t.Fatalf("a sealed authority signed: %v", err)
	}
	if _, err := follower.IssueAgent(ctx, "prod", key.Public(), time.Hour); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a sealed authority signed an agent: %v", err)
	}
	if _, err := follower.IssueServer([]string{"127.0.0.1"}, time.Hour); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a sealed authority signed a node: %v", err)
	}
	// What the leader signs, the follower verifies.
	chain, err := leader.IssueUser(ctx, "ada", []string{"dev"}, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := follower.VerifyUser(parseChain(t, chain)); err != nil || id.User != "ada" {
		t.Fatalf("the follower refuses the leader's certificate: %+v %v", id, err)
	}
	// Unsealed, the follower signs; the old leader, sealed, no longer.
	if err := follower.Unseal(ctx, kek, st); err != nil {
		t.Fatal(err)
	}
	leader.Seal()
	if !leader.Sealed() || follower.Sealed() {
		t.Fatal("the roles did not swap")
	}
	chain, err = follower.IssueAgent(ctx, "prod", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cluster, _, err := leader.VerifyAgent(parseChain(t, chain)); err != nil || cluster != "prod" {
		t.Fatalf("the sealed old leader refuses the new one's certificate: %q %v", cluster, err)
	}
	if _, err := leader.IssueUser(ctx, "ada", nil, key.Public(), time.Hour); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a sealed leader signed: %v", err)
	}
	// Another KEK cannot unseal.
	if err := leader.Unseal(ctx, newKEK(t), st); err == nil {
		t.Fatal("unsealed with another key-encryption key")
	}
}

// A node's certificate is kept with its key sealed: another KEK cannot
// open it, and no file holds the key in the clear.
func TestKeptNodeCertificate(t *testing.T) {
	ctx := context.Background()
	st, kek := &memState{}, newKEK(t)
	auth, err := Init(ctx, DefaultConfig(), kek, st)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"127.0.0.1", "gw.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := LoadNodeCertificate(ctx, kek, dir, "n1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("nothing kept yet: %v", err)
	}
	if err := SaveNodeCertificate(ctx, kek, dir, "n1", cert); err != nil {
		t.Fatal(err)
	}
	got, err := LoadNodeCertificate(ctx, kek, dir, "n1")
	if err != nil || !bytes.Equal(got.Certificate[0], cert.Certificate[0]) || got.Leaf.VerifyHostname("gw.example") != nil {
		t.Fatalf("kept certificate: %v", err)
	}
	if _, err := LoadNodeCertificate(ctx, newKEK(t), dir, "n1"); err == nil {
		t.Fatal("another KEK opened the kept key")
	}
	if _, err := LoadNodeCertificate(ctx, kek, dir, "n2"); err == nil {
		t.Fatal("the key opened for another node's name")
	}
	der, _ := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		info, _ := e.Info()
		if bytes.Contains(b, der) || bytes.Contains(b, []byte("PRIVATE KEY")) || info.Mode().Perm() != 0o600 {
			t.Fatalf("%s holds the key in the clear or is mode %v", e.Name(), info.Mode().Perm())
		}
	}
}
