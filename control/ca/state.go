package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"

	"github.com/gatehouse-dev/gatehouse/internal/seal"
)

// Errors of the CA's durable state.
var (
	// ErrNoState: the store holds no CA; run `gatehouse ca init`.
	ErrNoState = errors.New("ca: the store holds no certificate authority (run gatehouse ca init, or gatehouse node --init-ca)")
	// ErrInitialized: Init found a CA already in the store.
	ErrInitialized = errors.New("ca: the store already holds a certificate authority")
	// ErrNoKEK: no key-encryption key was configured.
	ErrNoKEK = errors.New("ca: no key-encryption key: set --ca-kek-file or GATEHOUSE_CA_KEK (32 random bytes, base64: openssl rand -base64 32)")
)

// Roles of the CA's keys: the root and one intermediate per kind of
// certificate, so that no kind can pass for another.
const (
	RoleRoot   = "root"
	RoleUsers  = "users"
	RoleAgents = "agents"
	RoleNodes  = "nodes"
)

// StoredKey is one CA certificate and its private key, sealed.
type StoredKey struct {
	Role       string
	Generation int64
	CertPEM    []byte
	// SealedKey is the private key (PKCS#8) under an envelope: a fresh
	// data key seals it with AES-256-GCM, and the KEK wraps the data key.
	SealedKey []byte
	// KEKID names the KEK that wrapped it (never the key itself).
	KEKID string
}

// State is the CA's durable state: what every node of a gateway cluster
// shares through the store. Keys are those of the generations not
// retired; Generations says what phase each is in (a generation the store
// does not describe is active: a store from before rotation).
type State struct {
	Keys        []StoredKey
	Generations []Generation
}

// StateStore keeps the CA's state. *store.Store implements it.
type StateStore interface {
	// LoadCA returns the generations of the CA's keys that are not
	// retired, or an error wrapping ErrNoState.
	LoadCA(ctx context.Context) (*State, error)
	// CreateCA records a first state; it fails with an error wrapping
	// ErrInitialized if there is one already (two concurrent inits: one
	// wins).
	CreateCA(ctx context.Context, s *State) error
}

// KEK wraps and unwraps the data keys that seal the CA's private keys. A
// local key from a file or the environment implements it (LocalKEK); a
// cloud KMS can, later, without the CA changing. Wrap and Unwrap take a
// context because a KMS is a network call.
type KEK interface {
	// ID names the key in what it wrapped, so that a node with another key
	// says so instead of failing to decrypt.
	ID() string
	Wrap(ctx context.Context, dataKey, ad []byte) ([]byte, error)
	Unwrap(ctx context.Context, wrapped, ad []byte) ([]byte, error)
}

// LocalKEK is a KEK held by the process: 32 bytes from a file or an
// environment variable.
type LocalKEK struct {
	id string
	s  *seal.Sealer
}

var _ KEK = (*LocalKEK)(nil)

// NewLocalKEK returns a KEK for a 32-byte key.
func NewLocalKEK(key []byte) (*LocalKEK, error) {
	s, err := seal.New(key)
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key: %w", err)
	}
	sum := sha256.Sum256(append([]byte("gatehouse-ca-kek-id:"), key...))
	return &LocalKEK{id: "local:" + hex.EncodeToString(sum[:6]), s: s}, nil
}

// LoadLocalKEK reads a base64 key from file, or else from the environment
// variable env; neither set is ErrNoKEK.
func LoadLocalKEK(file, env string) (*LocalKEK, error) {
	var text, from string
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("ca: key-encryption key: %w", err)
		}
		text, from = string(b), file
	case os.Getenv(env) != "":
		text, from = os.Getenv(env), "$"+env
	default:
		return nil, ErrNoKEK
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("ca: key-encryption key in %s: not base64: %w", from, err)
	}
	k, err := NewLocalKEK(key)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, from)
	}
	return k, nil
}

// ID implements KEK.
func (k *LocalKEK) ID() string { return k.id }

// Wrap implements KEK.
func (k *LocalKEK) Wrap(_ context.Context, dataKey, ad []byte) ([]byte, error) {
	return k.s.Seal(dataKey, string(ad)), nil
}

// Unwrap implements KEK.
func (k *LocalKEK) Unwrap(_ context.Context, wrapped, ad []byte) ([]byte, error) {
	return k.s.Open(wrapped, string(ad))
}

// keyAD binds a sealed key to its role and generation.
func keyAD(role string, gen int64) []byte {
	return []byte("gatehouse-ca-key/" + role + "/" + strconv.FormatInt(gen, 10))
}

// sealKey seals a private key: version 1, the wrapped data key's length
// (2 bytes), the wrapped data key, then the key sealed with the data key.
func sealKey(ctx context.Context, kek KEK, key crypto.Signer, ad []byte) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	dataKey := make([]byte, seal.KeySize)
	rand.Read(dataKey)
	wrapped, err := kek.Wrap(ctx, dataKey, ad)
	if err != nil {
		return nil, fmt.Errorf("ca: wrap: %w", err)
	}
	if len(wrapped) > 0xffff {
		return nil, errors.New("ca: wrapped data key too long")
	}
	s, err := seal.New(dataKey)
	if err != nil {
		return nil, err
	}
	out := []byte{1, 0, 0}
	binary.BigEndian.PutUint16(out[1:], uint16(len(wrapped)))
	out = append(out, wrapped...)
	return append(out, s.Seal(der, string(ad))...), nil
}

func openKey(ctx context.Context, kek KEK, sealed, ad []byte) (crypto.Signer, error) {
	if len(sealed) < 3 || sealed[0] != 1 {
		return nil, errors.New("ca: sealed key: unknown format")
	}
	n := int(binary.BigEndian.Uint16(sealed[1:3]))
	if len(sealed) < 3+n {
		return nil, errors.New("ca: sealed key: truncated")
	}
	dataKey, err := kek.Unwrap(ctx, sealed[3:3+n], ad)
	if err != nil {
		return nil, fmt.Errorf("ca: unwrap: %w", err)
	}
	s, err := seal.New(dataKey)
	if err != nil {
		return nil, err
	}
	der, err := s.Open(sealed[3+n:], string(ad))
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("ca: sealed key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("ca: sealed key is not a signing key")
	}
	return signer, nil
}

// Init creates a CA, seals its keys with kek and records it in st, once:
// if st holds one already it fails with ErrInitialized.
func Init(ctx context.Context, cfg Config, kek KEK, st StateStore) (*Authority, error) {
	if kek == nil {
		return nil, ErrNoKEK
	}
	a, err := New(cfg)
	if err != nil {
		return nil, err
	}
	g := a.cur().active
	state := &State{Generations: []Generation{g.info}}
	for _, s := range g.signers() {
		ad := keyAD(s.role, 1)
		sealed, err := sealKey(ctx, kek, s.signer.key, ad)
		if err != nil {
			return nil, err
		}
		state.Keys = append(state.Keys, StoredKey{Role: s.role, Generation: 1, CertPEM: certPEM(s.signer.cert), SealedKey: sealed, KEKID: kek.ID()})
	}
	if err := st.CreateCA(ctx, state); err != nil {
		return nil, err
	}
	return a, nil
}

// Open loads the CA from st and unseals its keys with kek.
func Open(ctx context.Context, cfg Config, kek KEK, st StateStore) (*Authority, error) {
	if kek == nil {
		return nil, ErrNoKEK
	}
	a, state, err := openPublic(ctx, cfg, st)
	if err != nil {
		return nil, err
	}
	if err := a.unseal(ctx, kek, state); err != nil {
		return nil, err
	}
	return a, nil
}

// OpenPublic loads the CA from st without its keys: it verifies every kind
// of certificate and signs nothing (Issue* answer ErrNotLeader) until
// Unseal. A node that does not lead the gateway cluster runs so.
func OpenPublic(ctx context.Context, cfg Config, st StateStore) (*Authority, error) {
	a, _, err := openPublic(ctx, cfg, st)
	return a, err
}

func openPublic(ctx context.Context, cfg Config, st StateStore) (*Authority, *State, error) {
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	state, err := st.LoadCA(ctx)
	if err != nil {
		return nil, nil, err
	}
	a := newAuthority(cfg)
	set, err := a.buildSet(state, nil)
	if err != nil {
		return nil, nil, err
	}
	a.set.Store(set)
	return a, state, nil
}

// Unseal loads the signing keys from st, unsealed with kek: the node now
// signs (it leads the gateway cluster). It reloads the generations first
// (a rotation may have moved on while it was sealed); each key must match
// its certificate.
func (a *Authority) Unseal(ctx context.Context, kek KEK, st StateStore) error {
	if kek == nil {
		return ErrNoKEK
	}
	state, err := st.LoadCA(ctx)
	if err != nil {
		return err
	}
	return a.unseal(ctx, kek, state)
}

func (a *Authority) unseal(ctx context.Context, kek KEK, state *State) error {
	return a.load(ctx, kek, state, true)
}

// unsealSet unseals the keys of every generation of set from state, all
// or none. The caller holds keyMu (or set is not in use yet).
func unsealSet(ctx context.Context, kek KEK, state *State, set *genSet) error {
	keys := map[*signer]crypto.Signer{}
	for _, g := range set.gens {
		for _, rs := range g.signers() {
			if rs.signer.key != nil {
				keys[rs.signer] = rs.signer.key
			}
		}
	}
	for _, k := range state.Keys {
		var s *signer
		for _, g := range set.gens {
			if g.info.Number == k.Generation {
				s = g.byRole(k.Role)
			}
		}
		if s == nil {
			continue // a generation the set does not hold
		}
		if _, ok := keys[s]; ok {
			continue
		}
		if k.KEKID != kek.ID() {
			return fmt.Errorf("ca: the %s key was sealed with key-encryption key %s, and this node has %s", k.Role, k.KEKID, kek.ID())
		}
		key, err := openKey(ctx, kek, k.SealedKey, keyAD(k.Role, k.Generation))
		if err != nil {
			return fmt.Errorf("ca: the %s key of generation %d: %w", k.Role, k.Generation, err)
		}
		pub, ok := key.Public().(*ecdsa.PublicKey)
		if !ok || !pub.Equal(s.cert.PublicKey) {
			return fmt.Errorf("ca: the %s key of generation %d does not match its certificate", k.Role, k.Generation)
		}
		keys[s] = key
	}
	for _, g := range set.gens {
		for _, rs := range g.signers() {
			if keys[rs.signer] == nil {
				return fmt.Errorf("ca: generation %d lacks its %s key (root, users, agents and nodes are needed)", g.info.Number, rs.role)
			}
		}
	}
	for s, key := range keys {
		s.key = key
	}
	return nil
}

type roleSigner struct {
	role   string
	signer *signer
}

// Files of a node's kept certificate, in its state directory.
const (
	nodeCertFile = "node.crt"
	nodeKeyFile  = "node.key.sealed"
)

func nodeKeyAD(name string) []byte { return []byte("gatehouse-node-key/" + name) }

// SaveNodeCertificate keeps a node's certificate in dir (node.crt) with
// its key sealed under kek (node.key.sealed, never in plaintext), so that
// the node starts again without a signer: in a gateway cluster only the
// leader signs.
func SaveNodeCertificate(ctx context.Context, kek KEK, dir, name string, cert tls.Certificate) error {
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("ca: the node certificate has no signing key")
	}
	sealed, err := sealKey(ctx, kek, key, nodeKeyAD(name))
	if err != nil {
		return err
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pemBlock("CERTIFICATE", der)...)
	}
	if err := writeFile(filepath.Join(dir, nodeKeyFile), sealed); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, nodeCertFile), chain)
}

// LoadNodeCertificate reads what SaveNodeCertificate kept (an error
// wrapping fs.ErrNotExist if nothing is kept).
func LoadNodeCertificate(ctx context.Context, kek KEK, dir, name string) (tls.Certificate, error) {
	chain, err := os.ReadFile(filepath.Join(dir, nodeCertFile))
	if err != nil {
		return tls.Certificate{}, err
	}
	sealed, err := os.ReadFile(filepath.Join(dir, nodeKeyFile))
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := openKey(ctx, kek, sealed, nodeKeyAD(name))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: the kept node key: %w", err)
	}
	return NodeCertificate(chain, key)
}

// writeFile replaces path atomically, mode 0600: written aside, synced,
// then renamed over the old file (renameio), so a crash leaves the old
// file or the new one, never a torn or empty one.
func writeFile(path string, b []byte) error {
	return renameio.WriteFile(path, b, 0o600, renameio.WithTempDir(filepath.Dir(path)))
}
