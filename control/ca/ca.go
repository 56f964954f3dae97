// Package ca is Gatehouse's certificate authority. A root signs three
// intermediates: one for people, one for cluster agents and one for gateway
// nodes (their serving certificates). Each kind of client certificate is
// verified against its own intermediate alone, so an agent certificate can
// never pass as a person's, nor the reverse.
//
// The durable state (certificates, and private keys sealed under a
// key-encryption key) lives in the store, shared by every node: Init makes
// it once, Open loads it (state.go). New makes a throw-away authority in
// memory, for tests. In a gateway cluster the Raft-elected leader will be
// the one signer (docs/design/0001-architecture.md).
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned when verifying certificates.
var (
	ErrNoCertificate = errors.New("ca: no client certificate")
	ErrExpired       = errors.New("ca: certificate expired or not yet valid")
	ErrWrongKind     = errors.New("ca: certificate not issued for this use")
	ErrRevoked       = errors.New("ca: certificate revoked")
	ErrBadName       = errors.New("ca: bad subject name")
	// ErrNotLeader: this node does not sign (in a gateway cluster, only
	// the elected leader holds the keys). It is Retryable: on the leader,
	// or after an election.
	ErrNotLeader error = retryable("ca: this node is not the signing leader")
)

type retryable string

func (e retryable) Error() string   { return string(e) }
func (e retryable) Retryable() bool { return true }

// Retryable reports whether err says to try again later or elsewhere (an
// error with a Retryable() bool method that answers true, anywhere in its
// chain), rather than that the request is wrong.
func Retryable(err error) bool {
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

// Config configures an Authority.
type Config struct {
	// Name prefixes the CA certificates' common names.
	Name string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns a configuration named "gatehouse".
func DefaultConfig() Config { return Config{Name: "gatehouse"} }

type signer struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool // this certificate alone, as a trust anchor

	// verified remembers the leaves whose signature chains to this
	// signer (by SHA-256 of the certificate), so that a client's requests
	// after its first cost no ECDSA verification: the signature cannot
	// change. Validity and revocation are checked on every request all
	// the same. Bounded by maxVerified.
	verified  sync.Map // [32]byte -> struct{}
	nVerified atomic.Int64
}

// maxVerified bounds each signer's cache of verified leaves: far more than
// the certificates in use at once on one node; past it the cache starts
// afresh.
const maxVerified = 100_000

func (s *signer) checked(leaf *x509.Certificate, verify func() error) error {
	key := sha256.Sum256(leaf.Raw)
	if _, ok := s.verified.Load(key); ok {
		return nil
	}
	if err := verify(); err != nil {
		return err
	}
	if s.nVerified.Add(1) > maxVerified {
		s.verified.Clear()
		s.nVerified.Store(1)
	}
	s.verified.Store(key, struct{}{})
	return nil
}

// Authority issues and verifies Gatehouse certificates.
type Authority struct {
	now  func() time.Time
	name string
	// set is the generations trusted now, and which signs (generations.go):
	// replaced whole when a rotation moves on, read without a lock.
	set atomic.Pointer[genSet]

	// keyMu guards the signers' keys: nil while the authority is sealed
	// (a node that does not lead the gateway cluster holds none).
	keyMu sync.RWMutex

	mu           sync.RWMutex // guards revoked, usersBefore and agentsBefore
	revoked      map[string]time.Time
	usersBefore  map[string]time.Time // user -> certificates issued before are refused
	agentsBefore map[string]time.Time // cluster -> agent certificates issued before are refused
}

func (c Config) validate() error {
	if c.Name == "" {
		return errors.New("ca: Name is required")
	}
	return nil
}

func newAuthority(cfg Config) *Authority {
	a := &Authority{now: cfg.Now, name: cfg.Name, revoked: map[string]time.Time{}, usersBefore: map[string]time.Time{}, agentsBefore: map[string]time.Time{}}
	if a.now == nil {
		a.now = time.Now
	}
	return a
}

// New creates an authority with fresh keys, in memory only (see Init and
// Open for one that outlives the process).
func New(cfg Config) (*Authority, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := newAuthority(cfg)
	g, err := a.newGeneration(1, nil)
	if err != nil {
		return nil, err
	}
	g.info.Phase, g.info.Created = PhaseActive, a.now().UTC()
	a.set.Store(newGenSet([]*generation{g}))
	return a, nil
}

func (a *Authority) newSigner(parent *signer, cn string, ttl time.Duration) (*signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        parent != nil,
	}
	issuer, issuerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, issuerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &signer{cert: cert, key: key, pool: pool}, nil
}

// RootPEM returns the trust bundle: the root certificate, which clients
// use to verify the gateway, and during a root rotation the new root
// beside it.
func (a *Authority) RootPEM() []byte { return a.cur().rootsPEM }

// RootPool returns a pool holding the roots of RootPEM.
func (a *Authority) RootPool() *x509.CertPool { return a.cur().roots }

// IssueUser signs a client certificate for a person: CN is the user id, O
// the groups. The chain (leaf, users intermediate) is returned in PEM.
func (a *Authority) IssueUser(_ context.Context, user string, groups []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if err := checkName(user); err != nil {
		return nil, err
	}
	for _, g := range groups {
		if err := checkName(g); err != nil {
			return nil, err
		}
	}
	return a.issueClient(a.cur().active.users, pkix.Name{CommonName: user, Organization: groups}, pub, ttl)
}

// IssueAgent signs a client certificate for a cluster's agent: CN is the
// cluster id.
func (a *Authority) IssueAgent(_ context.Context, cluster string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if err := checkName(cluster); err != nil {
		return nil, err
	}
	return a.issueClient(a.cur().active.agents, pkix.Name{CommonName: cluster}, pub, ttl)
}

// key returns s's key, or ErrNotLeader while the authority is sealed.
func (a *Authority) key(s *signer) (crypto.Signer, error) {
	a.keyMu.RLock()
	defer a.keyMu.RUnlock()
	if s.key == nil {
		return nil, ErrNotLeader
	}
	return s.key, nil
}

// Sealed reports whether the authority holds no signing key: it verifies,
// and Issue* answer ErrNotLeader.
func (a *Authority) Sealed() bool {
	_, err := a.key(a.cur().active.users)
	return err != nil
}

// Seal drops the signing keys from memory (a node that stops leading);
// verification goes on. Unseal loads them again.
func (a *Authority) Seal() {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	// The references go; Go offers no reliable way to wipe key memory (the
	// collector may have copied it), so the collector reclaims it.
	for _, g := range a.cur().gens {
		for _, s := range g.signers() {
			s.signer.key = nil
		}
	}
}

func (a *Authority) issueClient(s *signer, subject pkix.Name, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if ttl <= 0 {
		return nil, errors.New("ca: ttl must be positive")
	}
	key, err := a.key(s)
	if err != nil {
		return nil, err
	}
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber: clientSerial(now),
		Subject:      subject,
		// A little backdating absorbs clock skew between machines.
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, pub, key)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return append(pemBlock("CERTIFICATE", der), certPEM(s.cert)...), nil
}

// IssueServer returns a gateway node's certificate for hosts (DNS names or
// IPs), with a fresh key, signed by the nodes intermediate; the chain
// (leaf, intermediate) verifies against the root that clients hold. It is
// good for serving and, later, for node-to-node mutual TLS.
func (a *Authority) IssueServer(hosts []string, ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := a.IssueNode(context.Background(), hosts, key.Public(), ttl)
	if err != nil {
		return tls.Certificate{}, err
	}
	return NodeCertificate(chain, key)
}

// IssueNode signs a gateway node's certificate for hosts (DNS names or
// IPs) and pub, with the nodes intermediate: serving, and node-to-node
// mutual TLS. The chain (leaf, intermediate) is returned in PEM. A node
// whose authority is sealed has the leader sign it, and keeps its key.
func (a *Authority) IssueNode(_ context.Context, hosts []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if len(hosts) == 0 || ttl <= 0 {
		return nil, errors.New("ca: a node certificate needs hosts and a positive ttl")
	}
	nodes := a.cur().serving.nodes
	nodesKey, err := a.key(nodes)
	if err != nil {
		return nil, err
	}
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, nodes.cert, pub, nodesKey)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return append(pemBlock("CERTIFICATE", der), certPEM(nodes.cert)...), nil
}

// NodeCertificate makes a TLS certificate of a node's chain (PEM, from
// IssueNode) and its key.
func NodeCertificate(chainPEM []byte, key crypto.Signer) (tls.Certificate, error) {
	var cert tls.Certificate
	for rest := chainPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, b.Bytes)
	}
	if len(cert.Certificate) == 0 {
		return tls.Certificate{}, errors.New("ca: no certificate in the chain")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return tls.Certificate{}, err
	}
	if pk, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pk.Equal(key.Public()) {
		return tls.Certificate{}, errors.New("ca: the certificate is not for this key")
	}
	cert.PrivateKey, cert.Leaf = key, leaf
	return cert, nil
}

// UserIdentity is who a verified person certificate names.
type UserIdentity struct {
	User     string
	Groups   []string
	Serial   string
	NotAfter time.Time
}

// VerifyUser checks a person's certificate chain as presented in TLS:
// signed by the users intermediate, valid now, for client auth, not revoked.
func (a *Authority) VerifyUser(chain []*x509.Certificate) (UserIdentity, error) {
	leaf, err := a.verify(RoleUsers, chain)
	if err != nil {
		return UserIdentity{}, err
	}
	a.mu.RLock()
	before, revoked := a.usersBefore[leaf.Subject.CommonName]
	a.mu.RUnlock()
	// Certificates are backdated a minute (issueClient); issued = NotBefore + 1 min.
	if revoked && !issued(leaf).After(before) {
		return UserIdentity{}, fmt.Errorf("%w: every certificate of %s issued before %s", ErrRevoked, leaf.Subject.CommonName, before.UTC().Format(time.RFC3339))
	}
	return UserIdentity{User: leaf.Subject.CommonName, Groups: leaf.Subject.Organization, Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter}, nil
}

// VerifyNode checks a gateway node's certificate chain, as a peer presents
// it on a node-to-node connection: signed by the nodes intermediate (which
// signs nothing else), valid now. It returns the certificate's subject.
func (a *Authority) VerifyNode(chain []*x509.Certificate) (string, error) {
	if len(chain) == 0 {
		return "", ErrNoCertificate
	}
	leaf := chain[0]
	now := a.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return "", ErrExpired
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.cur().nodesPool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", fmt.Errorf("%w: %v", ErrWrongKind, err)
	}
	return leaf.Subject.CommonName, nil
}

// NodesPool returns a pool holding the trusted nodes intermediates: what a
// node trusts for its peers' certificates.
func (a *Authority) NodesPool() *x509.CertPool { return a.cur().nodesPool }

// VerifyAgent checks an agent's certificate chain and returns its cluster id.
func (a *Authority) VerifyAgent(chain []*x509.Certificate) (cluster string, notAfter time.Time, err error) {
	leaf, err := a.verify(RoleAgents, chain)
	if err != nil {
		return "", time.Time{}, err
	}
	a.mu.RLock()
	before, revoked := a.agentsBefore[leaf.Subject.CommonName]
	a.mu.RUnlock()
	if revoked && !issued(leaf).After(before) {
		return "", time.Time{}, fmt.Errorf("%w: agent certificates of %s issued before %s", ErrRevoked, leaf.Subject.CommonName, before.UTC().Format(time.RFC3339))
	}
	return leaf.Subject.CommonName, leaf.NotAfter, nil
}

func (a *Authority) verify(role string, chain []*x509.Certificate) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, ErrNoCertificate
	}
	leaf := chain[0]
	s := a.cur().issuer(role, leaf)
	if s == nil {
		return nil, fmt.Errorf("%w: not signed by a trusted %s intermediate", ErrWrongKind, role)
	}
	now := a.now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: valid %s to %s", ErrExpired, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	// The intermediate is the trust anchor: a chain through another
	// intermediate, or any other CA, does not verify. (Validity was checked
	// above, for every request; the signature once per certificate.)
	if err := s.checked(leaf, func() error {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:       s.pool,
			CurrentTime: now,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		return err
	}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWrongKind, err)
	}
	a.mu.RLock()
	_, revoked := a.revoked[leaf.SerialNumber.Text(16)]
	a.mu.RUnlock()
	if revoked {
		return nil, ErrRevoked
	}
	return leaf, nil
}

// Revoke refuses the certificate with this serial (hex) from now on.
func (a *Authority) Revoke(serialHex string) {
	a.mu.Lock()
	a.revoked[strings.ToLower(serialHex)] = a.now()
	a.mu.Unlock()
}

// RevokeUser refuses every certificate of user issued at or before before.
func (a *Authority) RevokeUser(user string, before time.Time) {
	a.mu.Lock()
	if before.After(a.usersBefore[user]) {
		a.usersBefore[user] = before
	}
	a.mu.Unlock()
}

// RevokeAgents refuses every agent certificate of cluster issued at or
// before before (a re-homed cluster's old agent).
func (a *Authority) RevokeAgents(cluster string, before time.Time) {
	a.mu.Lock()
	if before.After(a.agentsBefore[cluster]) {
		a.agentsBefore[cluster] = before
	}
	a.mu.Unlock()
}

// Issued returns when a client certificate of this CA was issued, to the
// microsecond (see issued).
func Issued(leaf *x509.Certificate) time.Time { return issued(leaf) }

// issued returns when a client certificate was issued, to the
// microsecond: from its serial (see clientSerial), or, for a serial not made
// so, NotBefore plus the minute it is backdated by.
func issued(leaf *x509.Certificate) time.Time {
	b := leaf.SerialNumber.Bytes()
	if len(b) == 16 && b[0] == serialMarker {
		var us int64
		for _, x := range b[1:8] {
			us = us<<8 | int64(x)
		}
		return time.UnixMicro(us)
	}
	return leaf.NotBefore.Add(time.Minute)
}

// serialMarker is the first byte of a client certificate's serial.
const serialMarker = 0x47 // 'G'

// clientSerial returns a client certificate's serial: the marker, the
// moment of issue in Unix microseconds (7 bytes), and 64 random bits. The
// moment is there because NotBefore has seconds only, and a certificate
// issued in the same second as a revocation "of everything issued before"
// must be told apart from the ones it revokes; the random half keeps
// serials unpredictable and unique (CA/Browser Forum: at least 64 bits
// from a CSPRNG).
func clientSerial(now time.Time) *big.Int {
	var b [16]byte
	b[0] = serialMarker
	us := now.UnixMicro()
	for i := 7; i >= 1; i-- {
		b[i] = byte(us)
		us >>= 8
	}
	if _, err := rand.Read(b[8:]); err != nil {
		panic(fmt.Sprintf("ca: crypto/rand: %v", err))
	}
	return new(big.Int).SetBytes(b[:])
}

// checkName refuses names that could confuse a reader of audit logs or a
// Kubernetes object name derived from them.
func checkName(s string) error {
	if s == "" || len(s) > 256 {
		return fmt.Errorf("%w: %q must be 1..256 bytes", ErrBadName, s)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %q has control characters", ErrBadName, s)
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("ca: crypto/rand: %v", err))
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func certPEM(c *x509.Certificate) []byte { return pemBlock("CERTIFICATE", c.Raw) }
