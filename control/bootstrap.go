package control

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Errors returned by BootstrapTokens.Redeem. They are deliberately vague
// toward the caller (every failure is "invalid token" on the wire); the
// distinction is for logs and tests.
var (
	ErrTokenInvalid = errors.New("control: bootstrap token invalid")
	ErrTokenExpired = errors.New("control: bootstrap token expired")
	ErrTokenUsed    = errors.New("control: bootstrap token already used")
)

// DefaultBootstrapTTL is how long a cluster's bootstrap token lasts: a day
// is enough to apply a manifest, short enough that a leaked one soon dies.
const DefaultBootstrapTTL = 24 * time.Hour

type bootstrapToken struct {
	cluster    string
	hash       [32]byte // SHA-256 of the secret part; the secret is never stored
	expires    time.Time
	usedBy     string // cluster fingerprint that redeemed it
	redeemedAt time.Time
}

// BootstrapTokens issues and redeems one-time tokens that let a new
// cluster's agent obtain its first certificate. A token is "gh1.ID.SECRET":
// ID finds the record, SECRET (160 random bits) is compared by hash in
// constant time. It is safe for concurrent use; the zero value is not.
type BootstrapTokens struct {
	now func() time.Time

	mu     sync.Mutex // guards tokens
	tokens map[string]*bootstrapToken
}

// NewBootstrapTokens returns an empty table; now nil means time.Now.
func NewBootstrapTokens(now func() time.Time) *BootstrapTokens {
	if now == nil {
		now = time.Now
	}
	return &BootstrapTokens{now: now, tokens: map[string]*bootstrapToken{}}
}

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("control: crypto/rand: %v", err))
	}
	return strings.ToLower(tokenEncoding.EncodeToString(b))
}

// Create issues a token for cluster, valid for ttl. Any earlier unused
// token of the cluster stops working.
func (b *BootstrapTokens) Create(cluster string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", errors.New("control: bootstrap ttl must be positive")
	}
	id, secret := randomString(10), randomString(20)
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, t := range b.tokens {
		if t.cluster == cluster && t.usedBy == "" {
			delete(b.tokens, k)
		}
	}
	b.tokens[id] = &bootstrapToken{cluster: cluster, hash: sha256.Sum256([]byte(secret)), expires: b.now().Add(ttl)}
	return "gh1." + id + "." + secret, nil
}

// Redeem consumes token for the cluster whose fingerprint (the kube-system
// namespace UID) is given and returns the cluster id. A token works once:
// a second use, from any cluster, is refused.
func (b *BootstrapTokens) Redeem(token, fingerprint string) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != "gh1" || fingerprint == "" {
		return "", ErrTokenInvalid
	}
	sum := sha256.Sum256([]byte(parts[2]))
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tokens[parts[1]]
	if t == nil || subtle.ConstantTimeCompare(sum[:], t.hash[:]) != 1 {
		return "", ErrTokenInvalid
	}
	if t.usedBy != "" {
		return "", ErrTokenUsed
	}
	if !b.now().Before(t.expires) {
		return "", ErrTokenExpired
	}
	t.usedBy, t.redeemedAt = fingerprint, b.now()
	return t.cluster, nil
}
