package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/pki"
)

func parseChain(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, chainPEM = pem.Decode(chainPEM)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func TestKindsDoNotCross(t *testing.T) {
	now := time.Now()
	a, err := New(Config{Name: "t", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := pki.NewKey()
	userPEM, err := a.IssueUser(context.Background(), "u-1", []string{"ops"}, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agentPEM, err := a.IssueAgent(context.Background(), "prod", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	user, agent := parseChain(t, userPEM), parseChain(t, agentPEM)

	id, err := a.VerifyUser(user)
	if err != nil || id.User != "u-1" || len(id.Groups) != 1 || id.Groups[0] != "ops" {
		t.Fatalf("VerifyUser: %+v %v", id, err)
	}
	if c, _, err := a.VerifyAgent(agent); err != nil || c != "prod" {
		t.Fatalf("VerifyAgent: %q %v", c, err)
	}
	if _, err := a.VerifyUser(agent); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("agent cert as user: %v", err)
	}
	if _, _, err := a.VerifyAgent(user); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("user cert as agent: %v", err)
	}
	// Another authority's certificate.
	other, _ := New(DefaultConfig())
	foreign, _ := other.IssueUser(context.Background(), "u-1", nil, key.Public(), time.Hour)
	if _, err := a.VerifyUser(parseChain(t, foreign)); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("foreign cert: %v", err)
	}
	// Expiry, by the injected clock.
	now = now.Add(2 * time.Hour)
	if _, err := a.VerifyUser(user); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired: %v", err)
	}
	now = now.Add(-2 * time.Hour)
	a.Revoke(id.Serial)
	if _, err := a.VerifyUser(user); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	if _, err := a.VerifyUser(nil); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("none: %v", err)
	}
	if _, err := a.IssueUser(context.Background(), "bad\nname", nil, key.Public(), time.Hour); !errors.Is(err, ErrBadName) {
		t.Fatalf("control characters: %v", err)
	}
}

func TestServerCertChainsToRoot(t *testing.T) {
	a, _ := New(DefaultConfig())
	c, err := a.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: a.RootPool(), Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatal(err)
	}
	// Signed by the nodes intermediate, not the root.
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: a.RootPool(), DNSName: "localhost"}); err == nil {
		t.Fatal("a node certificate verifies without its intermediate")
	}
	var _ tls.Certificate = c
}

func TestRevokeUserRefusesOlderCertificates(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	a, err := New(Config{Name: "t", Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	issue := func() []*x509.Certificate {
		key, _, _ := pki.NewKey()
		chain, err := a.IssueUser(context.Background(), "ada", nil, key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(chain)
		c, _ := x509.ParseCertificate(block.Bytes)
		return []*x509.Certificate{c}
	}
	old := issue()
	now = now.Add(time.Second)
	a.RevokeUser("ada", now)
	if _, err := a.VerifyUser(old); !errors.Is(err, ErrRevoked) {
		t.Fatalf("old certificate: %v", err)
	}
	now = now.Add(time.Second)
	if _, err := a.VerifyUser(issue()); err != nil {
		t.Fatalf("certificate issued after the revocation: %v", err)
	}
}

func TestRevokeAgentsRefusesOlderAgentCertificates(t *testing.T) {
	now := time.Now()
	a, err := New(Config{Name: "t", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	issue := func() []*x509.Certificate {
		key, _, _ := pki.NewKey()
		chain, err := a.IssueAgent(context.Background(), "prod", key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return parseChain(t, chain)
	}
	old := issue()
	now = now.Add(2 * time.Minute)
	a.RevokeAgents("prod", now)
	if _, _, err := a.VerifyAgent(old); !errors.Is(err, ErrRevoked) {
		t.Fatalf("old agent certificate: %v", err)
	}
	now = now.Add(2 * time.Minute)
	if c, _, err := a.VerifyAgent(issue()); err != nil || c != "prod" {
		t.Fatalf("new agent certificate: %q %v", c, err)
	}
}

// A revocation of everything issued before a moment tells apart
// certificates issued in the same second (NotBefore has seconds only):
// the one issued a millisecond after it stands.
func TestRevocationWithinOneSecond(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 500_000_000, time.UTC)
	now := t0
	a, err := New(Config{Name: "t", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	user := func() []*x509.Certificate {
		key, _, _ := pki.NewKey()
		chain, err := a.IssueUser(context.Background(), "ada", nil, key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return parseChain(t, chain)
	}
	agent := func() []*x509.Certificate {
		key, _, _ := pki.NewKey()
		chain, err := a.IssueAgent(context.Background(), "prod", key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return parseChain(t, chain)
	}
	oldUser, oldAgent := user(), agent()
	now = t0.Add(time.Millisecond)
	a.RevokeUser("ada", now)
	a.RevokeAgents("prod", now)
	now = t0.Add(2 * time.Millisecond)
	newUser, newAgent := user(), agent()
	if !oldUser[0].NotBefore.Equal(newUser[0].NotBefore) {
		t.Fatal("the test needs two certificates of one second")
	}
	if _, err := a.VerifyUser(oldUser); !errors.Is(err, ErrRevoked) {
		t.Fatalf("old person certificate: %v", err)
	}
	if _, err := a.VerifyUser(newUser); err != nil {
		t.Fatalf("new person certificate: %v", err)
	}
	if _, _, err := a.VerifyAgent(oldAgent); !errors.Is(err, ErrRevoked) {
		t.Fatalf("old agent certificate: %v", err)
	}
	if _, _, err := a.VerifyAgent(newAgent); err != nil {
		t.Fatalf("new agent certificate: %v", err)
	}
}

// Only a node certificate passes as a peer; a person's or an agent's does
// not, nor does a node certificate of another CA.
func TestVerifyNode(t *testing.T) {
	a, _ := New(DefaultConfig())
	other, _ := New(DefaultConfig())
	node, err := a.IssueServer([]string{"node-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{node.Leaf}
	if name, err := a.VerifyNode(chain); err != nil || name != "node-1" {
		t.Fatalf("node: %q %v", name, err)
	}
	foreign, _ := other.IssueServer([]string{"node-1"}, time.Hour)
	if _, err := a.VerifyNode([]*x509.Certificate{foreign.Leaf}); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("another CA's node: %v", err)
	}
	key, _, _ := pki.NewKey()
	user, _ := a.IssueUser(context.Background(), "u", nil, key.Public(), time.Hour)
	agent, _ := a.IssueAgent(context.Background(), "c", key.Public(), time.Hour)
	for name, pemChain := range map[string][]byte{"user": user, "agent": agent} {
		if _, err := a.VerifyNode(parseChain(t, pemChain)); !errors.Is(err, ErrWrongKind) {
			t.Fatalf("a %s certificate passed as a node: %v", name, err)
		}
	}
}

// A certificate verified once is remembered per kind: a person's
// certificate that passed as a person's still never passes as an agent's or
// a node's, and expiry and revocation are checked at every use.
func TestVerificationCacheKeepsKindsApart(t *testing.T) {
	now := time.Now()
	a, err := New(Config{Name: "t", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := pki.NewKey()
	pemChain, err := a.IssueUser(context.Background(), "ada", nil, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, pemChain)
	for range 3 {
		if _, err := a.VerifyUser(chain); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.VerifyAgent(chain); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("a remembered person's certificate as an agent's: %v", err)
	}
	if _, err := a.VerifyNode(chain); !errors.Is(err, ErrWrongKind) {
		t.Fatalf("a remembered person's certificate as a node's: %v", err)
	}
	a.Revoke(chain[0].SerialNumber.Text(16))
	if _, err := a.VerifyUser(chain); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a remembered certificate, revoked: %v", err)
	}
	now = now.Add(2 * time.Hour)
	if _, err := a.VerifyUser(chain); !errors.Is(err, ErrExpired) {
		t.Fatalf("a remembered certificate, expired: %v", err)
	}
}
