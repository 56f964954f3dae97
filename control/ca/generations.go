package ca

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Phases of a CA generation. A rotation adds a generation (new
// intermediates, and a new root if asked) in standby; once every node
// trusts it, it becomes active and the one before it retiring; that one is
// retired after the longest lifetime of what it signed (design 0006).
const (
	// PhaseStandby: trusted by every node, signs nothing yet.
	PhaseStandby = "standby"
	// PhaseActive: signs people's and agents' certificates. One at a time.
	PhaseActive = "active"
	// PhaseRetiring: signs nothing new, still trusted until RetireAfter.
	// Through a root rotation its nodes intermediate still signs node
	// certificates: the clients' old root verifies them.
	PhaseRetiring = "retiring"
	// PhaseSunset: still trusted, signs nothing, node certificates
	// included; the nodes move their serving certificates off it, then it
	// is retired.
	PhaseSunset = "sunset"
	// PhaseRetired: trusted no more.
	PhaseRetired = "retired"
)

// ErrRotating: a rotation is under way (a generation is in standby or
// retiring); the next one starts once it is over.
var ErrRotating = errors.New("ca: a rotation is under way; the next one can start once its old generation is retired")

// Generation describes one generation of the CA's keys.
type Generation struct {
	Number int64
	Phase  string
	// NewRoot: the generation brought a root of its own (a root
	// rotation), not only intermediates under the root before it.
	NewRoot bool
	Created time.Time
	// RetireAfter is when a retiring generation is retired.
	RetireAfter time.Time
	// Overlap is how long the generation before stays trusted once this
	// one is active: the longest life of what it signed, and for a new
	// root the time people have to take it into their kubeconfigs.
	Overlap time.Duration
	// RootFingerprint is the SHA-256 of the root certificate, hex.
	RootFingerprint string
	// Intermediates are the SHA-256 of the users, agents and nodes
	// intermediates, hex, in that order.
	Intermediates []string
}

// generation is one generation's certificates (and keys, while unsealed).
type generation struct {
	info                       Generation
	root, users, agents, nodes *signer
}

func (g *generation) signers() []roleSigner {
	return []roleSigner{{RoleRoot, g.root}, {RoleUsers, g.users}, {RoleAgents, g.agents}, {RoleNodes, g.nodes}}
}

func (g *generation) byRole(role string) *signer {
	switch role {
	case RoleRoot:
		return g.root
	case RoleUsers:
		return g.users
	case RoleAgents:
		return g.agents
	case RoleNodes:
		return g.nodes
	}
	return nil
}

// newGeneration makes generation n's keys: intermediates under root, or a
// new root and intermediates under it if root is nil. Ten years for each:
// rotation is an explicit operation, not something expiry forces at a bad
// moment.
func (a *Authority) newGeneration(n int64, root *signer) (*generation, error) {
	const life = 10 * 365 * 24 * time.Hour
	suffix := ""
	if n > 1 {
		suffix = fmt.Sprintf(" (generation %d)", n)
	}
	g := &generation{info: Generation{Number: n, NewRoot: root == nil}}
	var err error
	if root == nil {
		if root, err = a.newSigner(nil, a.name+" root"+suffix, life); err != nil {
			return nil, err
		}
	}
	g.root = root
	if g.users, err = a.newSigner(root, a.name+" users"+suffix, life); err != nil {
		return nil, err
	}
	if g.agents, err = a.newSigner(root, a.name+" agents"+suffix, life); err != nil {
		return nil, err
	}
	if g.nodes, err = a.newSigner(root, a.name+" nodes"+suffix, life); err != nil {
		return nil, err
	}
	g.describe()
	return g, nil
}

// describe fills the fingerprints of g's description.
func (g *generation) describe() {
	fp := func(s *signer) string { sum := sha256.Sum256(s.cert.Raw); return hex.EncodeToString(sum[:]) }
	g.info.RootFingerprint = fp(g.root)
	g.info.Intermediates = []string{fp(g.users), fp(g.agents), fp(g.nodes)}
}

// genSet is the generations an authority trusts (standby, active and
// retiring), by number, with what follows from them.
type genSet struct {
	gens []*generation
	// active signs people's and agents' certificates.
	active *generation
	// serving signs node certificates: the newest generation, active or
	// retiring, under the oldest root in use. Through a root rotation the
	// nodes keep serving chains that the clients' old root verifies, until
	// that root retires.
	serving *generation
	// roots and rootsPEM are the trusted roots (the trust bundle).
	roots     *x509.CertPool
	rootsPEM  []byte
	nodesPool *x509.CertPool
}

func newGenSet(gens []*generation) *genSet {
	s := &genSet{gens: gens, roots: x509.NewCertPool(), nodesPool: x509.NewCertPool()}
	var seen [][]byte
	for _, g := range gens {
		if g.info.Phase == PhaseActive {
			s.active = g
		}
		if !slices.ContainsFunc(seen, func(raw []byte) bool { return bytes.Equal(raw, g.root.cert.Raw) }) {
			seen = append(seen, g.root.cert.Raw)
			s.roots.AddCert(g.root.cert)
			s.rootsPEM = append(s.rootsPEM, certPEM(g.root.cert)...)
		}
		s.nodesPool.AddCert(g.nodes.cert)
	}
	var oldest *generation
	for _, g := range gens {
		if g.info.Phase != PhaseActive && g.info.Phase != PhaseRetiring {
			continue
		}
		if oldest == nil {
			oldest = g
		}
		if bytes.Equal(g.root.cert.Raw, oldest.root.cert.Raw) {
			s.serving = g
		}
	}
	return s
}

// issuer returns the trusted intermediate of role that signed leaf, or nil.
func (s *genSet) issuer(role string, leaf *x509.Certificate) *signer {
	for i := len(s.gens) - 1; i >= 0; i-- {
		c := s.gens[i].byRole(role)
		if bytes.Equal(c.cert.RawSubject, leaf.RawIssuer) &&
			(len(leaf.AuthorityKeyId) == 0 || bytes.Equal(c.cert.SubjectKeyId, leaf.AuthorityKeyId)) {
			return c
		}
	}
	return nil
}

func (a *Authority) cur() *genSet { return a.set.Load() }

// Generations describes the generations the authority trusts, oldest
// first.
func (a *Authority) Generations() []Generation {
	var out []Generation
	for _, g := range a.cur().gens {
		info := g.info
		info.Intermediates = slices.Clone(info.Intermediates)
		out = append(out, info)
	}
	return out
}

// Active returns the number of the generation that signs.
func (a *Authority) Active() int64 { return a.cur().active.info.Number }

// Newest returns the number of the newest generation trusted.
func (a *Authority) Newest() int64 {
	gens := a.cur().gens
	return gens[len(gens)-1].info.Number
}

// NodeGeneration returns the generation whose nodes intermediate signed a
// node certificate (leaf), or 0 if none trusted did.
func (a *Authority) NodeGeneration(leaf *x509.Certificate) int64 {
	set := a.cur()
	s := set.issuer(RoleNodes, leaf)
	for _, g := range set.gens {
		if g.nodes == s && s != nil {
			return g.info.Number
		}
	}
	return 0
}

// ServingIntermediate returns the nodes intermediate that signs node
// certificates now: a node whose certificate another signed renews it.
func (a *Authority) ServingIntermediate() *x509.Certificate { return a.cur().serving.nodes.cert }

// Reload loads the CA's generations from st again (a rotation moved on):
// generations new to it are trusted, retired ones dropped, and the signer
// follows the active one. An unsealed authority unseals the new
// generations' keys with kek; a sealed one stays sealed. Certificates
// already known keep their keys and their cache of verified leaves.
func (a *Authority) Reload(ctx context.Context, kek KEK, st StateStore) error {
	state, err := st.LoadCA(ctx)
	if err != nil {
		return err
	}
	return a.load(ctx, kek, state, false)
}

// load replaces the generation set with state's, unsealing its keys if
// unseal, or if the authority holds keys now (it signs).
func (a *Authority) load(ctx context.Context, kek KEK, state *State, unseal bool) error {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	prev := a.cur()
	set, err := a.buildSet(state, prev)
	if err != nil {
		return err
	}
	if unseal || (prev != nil && prev.active.users.key != nil) {
		if kek == nil {
			return ErrNoKEK
		}
		if err := unsealSet(ctx, kek, state, set); err != nil {
			return err
		}
	}
	a.set.Store(set)
	return nil
}

// buildSet makes the generation set of state, keeping the signers (and
// their keys and caches) of prev where the certificate is the same.
func (a *Authority) buildSet(state *State, prev *genSet) (*genSet, error) {
	byNumber := map[int64]*generation{}
	var order []int64
	for _, k := range state.Keys {
		cert, err := parseCertPEM(k.CertPEM)
		if err != nil {
			return nil, fmt.Errorf("ca: the %s certificate of generation %d: %w", k.Role, k.Generation, err)
		}
		g := byNumber[k.Generation]
		if g == nil {
			g = &generation{info: Generation{Number: k.Generation, Phase: PhaseActive}}
			byNumber[k.Generation] = g
			order = append(order, k.Generation)
		}
		s := reuse(prev, k.Role, cert)
		switch k.Role {
		case RoleRoot:
			g.root = s
		case RoleUsers:
			g.users = s
		case RoleAgents:
			g.agents = s
		case RoleNodes:
			g.nodes = s
		default:
			return nil, fmt.Errorf("ca: unknown key role %q", k.Role)
		}
	}
	for _, info := range state.Generations {
		if g := byNumber[info.Number]; g != nil {
			g.info.Phase, g.info.NewRoot, g.info.Created, g.info.RetireAfter, g.info.Overlap = info.Phase, info.NewRoot, info.Created, info.RetireAfter, info.Overlap
		}
	}
	slices.Sort(order)
	var gens []*generation
	actives := 0
	for _, n := range order {
		g := byNumber[n]
		if g.root == nil || g.users == nil || g.agents == nil || g.nodes == nil {
			return nil, fmt.Errorf("ca: generation %d lacks a key (root, users, agents and nodes are needed)", n)
		}
		for _, s := range []*signer{g.users, g.agents, g.nodes} {
			if err := s.cert.CheckSignatureFrom(g.root.cert); err != nil {
				return nil, fmt.Errorf("ca: intermediate %q is not signed by the root: %w", s.cert.Subject.CommonName, err)
			}
		}
		switch g.info.Phase {
		case PhaseRetired:
			continue
		case PhaseActive:
			actives++
		case PhaseStandby, PhaseRetiring, PhaseSunset:
		default:
			return nil, fmt.Errorf("ca: generation %d: unknown phase %q", n, g.info.Phase)
		}
		g.describe()
		gens = append(gens, g)
	}
	if actives != 1 {
		return nil, fmt.Errorf("ca: %d active generations in the store; exactly one signs", actives)
	}
	return newGenSet(gens), nil
}

// reuse returns prev's signer of role for cert, or a new one.
func reuse(prev *genSet, role string, cert *x509.Certificate) *signer {
	if prev != nil {
		for _, g := range prev.gens {
			if s := g.byRole(role); bytes.Equal(s.cert.Raw, cert.Raw) {
				return s
			}
		}
	}
	s := &signer{cert: cert, pool: x509.NewCertPool()}
	s.pool.AddCert(cert)
	return s
}

// Rotate adds a generation of the CA to st in standby: new users, agents
// and nodes intermediates under the active root, or, with newRoot, a new
// root and intermediates under it. It needs the key-encryption key (the
// active root's key signs the new intermediates, and the new keys are
// sealed with it). Every node then trusts the new generation, and the
// leader makes it active once all do, then retires the one before it
// overlap later (design 0006). It fails with
// ErrRotating while a rotation is under way.
func Rotate(ctx context.Context, cfg Config, kek KEK, st RotationStore, newRoot bool, overlap time.Duration) (Generation, error) {
	if kek == nil {
		return Generation{}, ErrNoKEK
	}
	if overlap < 0 {
		return Generation{}, errors.New("ca: the overlap must not be negative")
	}
	a, err := Open(ctx, cfg, kek, st)
	if err != nil {
		return Generation{}, err
	}
	set := a.cur()
	for _, g := range set.gens {
		if g.info.Phase != PhaseActive {
			return Generation{}, fmt.Errorf("%w (generation %d is %s)", ErrRotating, g.info.Number, g.info.Phase)
		}
	}
	n := set.gens[len(set.gens)-1].info.Number + 1
	var root *signer
	if !newRoot {
		root = set.active.root
	}
	g, err := a.newGeneration(n, root)
	if err != nil {
		return Generation{}, err
	}
	g.info.Phase, g.info.Created, g.info.Overlap = PhaseStandby, a.now().UTC(), overlap
	var keys []StoredKey
	for _, s := range g.signers() {
		sealed, err := sealKey(ctx, kek, s.signer.key, keyAD(s.role, n))
		if err != nil {
			return Generation{}, err
		}
		keys = append(keys, StoredKey{Role: s.role, Generation: n, CertPEM: certPEM(s.signer.cert), SealedKey: sealed, KEKID: kek.ID()})
	}
	if err := st.AddCAGeneration(ctx, g.info, keys); err != nil {
		return Generation{}, err
	}
	return g.info, nil
}

// RotationStore is a StateStore that also takes new generations.
// *store.Store implements it.
type RotationStore interface {
	StateStore
	// AddCAGeneration records a generation in standby, with its keys; it
	// fails with an error wrapping ErrRotating if a generation is in
	// standby or retiring.
	AddCAGeneration(ctx context.Context, g Generation, keys []StoredKey) error
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}
