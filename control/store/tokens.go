package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors of token redemption and verification. Callers tell the client no
// more than "invalid" (nothing for a guesser to learn); the distinction is
// for logs and tests.
var (
	ErrTokenInvalid = errors.New("store: token invalid")
	ErrTokenExpired = errors.New("store: token expired")
	ErrTokenUsed    = errors.New("store: token already used")
	ErrTokenRevoked = errors.New("store: token revoked")
	// ErrFingerprintMismatch: the cluster is registered with another
	// fingerprint. Only an admin's re-homing (RehomeCluster) lets a new one
	// in.
	ErrFingerprintMismatch = errors.New("store: the cluster is registered with another fingerprint")
	// ErrFingerprintInUse: the fingerprint is registered as another
	// cluster; one physical cluster is one Gatehouse cluster.
	ErrFingerprintInUse = errors.New("store: the fingerprint is registered as another cluster")
)

// Token prefixes: the kind and format version of a secret token, so that a
// token found in a log or a repository says what it is (and secret
// scanners can match it).
const (
	prefixBootstrap = "gh1"
	prefixAPI       = "gha1"
)

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return strings.ToLower(tokenEncoding.EncodeToString(b))
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// newToken returns "PREFIX.ID.SECRET", the id, and the secret's hash. ID
// (50 random bits) finds the record; SECRET (160 random bits) is stored
// only as its SHA-256 and compared in constant time.
func newToken(prefix string) (token, id, hash string) {
	id, secret := randomString(10), randomString(20)
	return prefix + "." + id + "." + secret, id, hashSecret(secret)
}

// splitToken returns the id and the secret's hash of a token of prefix.
func splitToken(prefix, token string) (id, hash string, ok bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != prefix || len(parts[1]) != 16 || len(parts[2]) != 32 {
		return "", "", false
	}
	return parts[1], hashSecret(parts[2]), true
}

func sameHash(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// DefaultBootstrapTTL is how long a cluster's bootstrap token lasts: a day
// is enough to apply a manifest, short enough that a leaked one soon dies.
const DefaultBootstrapTTL = 24 * time.Hour

// CreateBootstrapToken issues a one-time registration token for a cluster,
// valid for ttl. Earlier unused tokens of the cluster stop working.
func (s *Store) CreateBootstrapToken(ctx context.Context, clusterID string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("%w: bootstrap token lifetime must be positive", ErrInvalid)
	}
	token, id, hash := newToken(prefixBootstrap)
	now := s.now()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM bootstrap_tokens WHERE cluster_id = $1 AND used_by = ''`, clusterID); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO bootstrap_tokens (id, cluster_id, secret_hash, expires_us, created_us) VALUES ($1, $2, $3, $4, $5)`,
			id, clusterID, hash, micros(now.Add(ttl)), micros(now))
		return err
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// Redeem consumes a bootstrap token for the cluster whose fingerprint (its
// kube-system namespace UID) is given, records the fingerprint on the
// cluster, and returns the cluster's name. A token works once: a second
// use, from any cluster, is refused. It implements node.Registrar.
func (s *Store) Redeem(ctx context.Context, token, fingerprint string) (string, error) {
	id, hash, ok := splitToken(prefixBootstrap, token)
	if !ok || fingerprint == "" {
		return "", ErrTokenInvalid
	}
	var cluster string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var clusterID, stored, usedBy string
		var expires int64
		err := tx.QueryRowContext(ctx, `SELECT cluster_id, secret_hash, used_by, expires_us FROM bootstrap_tokens WHERE id = $1`, id).Scan(&clusterID, &stored, &usedBy, &expires)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !sameHash(hash, stored)) {
			return ErrTokenInvalid
		}
		if err != nil {
			return err
		}
		now := micros(s.now())
		switch {
		case usedBy != "":
			return ErrTokenUsed
		case now >= expires:
			return ErrTokenExpired
		}
		// The condition on used_by makes two concurrent redemptions of one
		// token fail but once, whatever the isolation level.
		res, err := tx.ExecContext(ctx, `UPDATE bootstrap_tokens SET used_by = $1, used_us = $2 WHERE id = $3 AND used_by = ''`, fingerprint, now, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrTokenUsed
		}
		var current string
		if err := tx.QueryRowContext(ctx, `SELECT name, fingerprint FROM clusters WHERE id = $1`, clusterID).Scan(&cluster, &current); err != nil {
			return err
		}
		// A registered cluster keeps its fingerprint: a token in the wrong
		// hands must not move the cluster's identity to another API server.
		// The transaction rolls back, so the token stays unused.
		if current != "" && current != fingerprint {
			return ErrFingerprintMismatch
		}
		var other string
		err = tx.QueryRowContext(ctx, `SELECT name FROM clusters WHERE fingerprint = $1 AND id <> $2`, fingerprint, clusterID).Scan(&other)
		if err == nil {
			return fmt.Errorf("%w (%s)", ErrFingerprintInUse, other)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if current != "" {
			return nil
		}
		_, err = tx.ExecContext(ctx, `UPDATE clusters SET fingerprint = $1, version = version + 1 WHERE id = $2`, fingerprint, clusterID)
		return err
	})
	return cluster, err
}

// RehomeCluster forgets the fingerprint of a registered cluster, so that
// the next registration (with a new bootstrap token) records a new one, and
// revokes every agent certificate of the cluster issued until now: the old
// agent cannot come back. It is an admin's explicit act, for a cluster that
// was rebuilt (a new kube-system UID).
func (s *Store) RehomeCluster(ctx context.Context, clusterID string, until time.Time) (*Revocation, error) {
	now := s.now()
	r := &Revocation{ID: newID(), ClusterID: clusterID, Before: now, Until: until, Reason: "cluster re-homed", Created: now.UTC()}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE clusters SET fingerprint = '', version = version + 1 WHERE id = $1`, clusterID)
		if err != nil {
			return err
		}
		if err := deleted(res, "cluster "+clusterID); err != nil {
			return err
		}
		var name string
		if err := tx.QueryRowContext(ctx, `SELECT name FROM clusters WHERE id = $1`, clusterID).Scan(&name); err != nil {
			return err
		}
		r.ClusterName = name
		if err := s.recordChange(ctx, tx, ChangeRevokeCluster, name, r.Before); err != nil {
			return err
		}
		return insertRevocation(ctx, tx, r)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// APIToken is a credential for automation, owned by a person. The secret
// is shown once, at creation.
type APIToken struct {
	ID     string
	UserID string
	Name   string
	// Roles limits the token to these of its owner's roles; empty means
	// all of them.
	Roles    []string
	Expires  time.Time
	Revoked  time.Time
	LastUsed time.Time
	Created  time.Time
}

// IsAPIToken reports whether a bearer token is shaped like an API token (and
// not, say, a Kratos session token).
func IsAPIToken(token string) bool { return strings.HasPrefix(token, prefixAPI+".") }

// CreateAPIToken issues a token for t.UserID, expiring at t.Expires, and
// returns its secret form, which is not stored.
func (s *Store) CreateAPIToken(ctx context.Context, t *APIToken) (string, error) {
	if t.Name == "" || t.Expires.IsZero() {
		return "", fmt.Errorf("%w: an API token needs a name and an expiry", ErrInvalid)
	}
	if !t.Expires.After(s.now()) {
		return "", fmt.Errorf("%w: expiry is in the past", ErrInvalid)
	}
	roles, err := json.Marshal(append([]string{}, t.Roles...))
	if err != nil {
		return "", err
	}
	token, id, hash := newToken(prefixAPI)
	t.ID, t.Created = id, s.now().UTC()
	err = s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO api_tokens (id, user_id, name, secret_hash, roles, expires_us, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			t.ID, t.UserID, t.Name, hash, string(roles), micros(t.Expires), micros(t.Created))
		return err
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

const apiTokenCols = `id, user_id, name, roles, expires_us, revoked_us, last_used_us, created_us`

func scanAPIToken(r interface{ Scan(...any) error }) (*APIToken, error) {
	var t APIToken
	var roles string
	var expires, revoked, used, created int64
	if err := r.Scan(&t.ID, &t.UserID, &t.Name, &roles, &expires, &revoked, &used, &created); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(roles), &t.Roles); err != nil {
		return nil, err
	}
	t.Expires, t.Revoked, t.LastUsed, t.Created = fromMicros(expires), fromMicros(revoked), fromMicros(used), fromMicros(created)
	return &t, nil
}

// VerifyAPIToken returns the token record a secret token names, if it is
// valid now, and records its use.
func (s *Store) VerifyAPIToken(ctx context.Context, token string) (*APIToken, error) {
	id, hash, ok := splitToken(prefixAPI, token)
	if !ok {
		return nil, ErrTokenInvalid
	}
	var stored string
	t, err := scanAPIToken(withFirst{s.db.QueryRowContext(ctx, `SELECT secret_hash, `+apiTokenCols+` FROM api_tokens WHERE id = $1`, id), &stored})
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !sameHash(hash, stored)) {
		return nil, ErrTokenInvalid
	}
	if err != nil {
		return nil, fmt.Errorf("store: api token: %w", err)
	}
	now := s.now()
	switch {
	case !t.Revoked.IsZero():
		return nil, ErrTokenRevoked
	case !now.Before(t.Expires):
		return nil, ErrTokenExpired
	}
	// Last use is kept to the minute: a busy token does not write on
	// every request.
	if now.Sub(t.LastUsed) > time.Minute {
		if _, err := s.db.ExecContext(ctx, `UPDATE api_tokens SET last_used_us = $1 WHERE id = $2`, micros(now), id); err != nil {
			return nil, fmt.Errorf("store: api token: %w", err)
		}
		t.LastUsed = now.UTC()
	}
	return t, nil
}

// ListAPITokens lists a person's tokens by id (never their secrets).
func (s *Store) ListAPITokens(ctx context.Context, userID string, p Page) ([]*APIToken, string, error) {
	return list(ctx, s, p, `SELECT `+apiTokenCols+` FROM api_tokens WHERE id > $1 AND user_id = $3 ORDER BY id LIMIT $2`, []any{userID},
		func(r *sql.Rows) (*APIToken, string, error) {
			t, err := scanAPIToken(r)
			if err != nil {
				return nil, "", err
			}
			return t, t.ID, nil
		})
}

// RevokeAPIToken revokes a token of userID's; it fails from its next use.
func (s *Store) RevokeAPIToken(ctx context.Context, userID, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_us = $1 WHERE id = $2 AND user_id = $3 AND revoked_us = 0`, micros(s.now()), id, userID)
		if err != nil {
			return err
		}
		if err := deleted(res, "api token "+id); err != nil {
			return err
		}
		return s.recordChange(ctx, tx, ChangeRevokeToken, id, time.Time{})
	})
}

// Revocation refuses one certificate (Serial); or every certificate a
// person was issued before a moment (UserID and Before); or every agent
// certificate of a cluster issued before a moment (ClusterID and Before);
// or every certificate minted through an API token (TokenID). It is kept
// until Until, when whatever it revokes has expired anyway.
type Revocation struct {
	ID        string
	Serial    string
	UserID    string
	ClusterID string
	// ClusterName is the name of ClusterID (agent certificates name it),
	// filled in by Revocations; empty once the cluster is deleted.
	ClusterName string
	TokenID     string
	Before      time.Time
	Until       time.Time
	Reason      string
	Created     time.Time
}

// Revoke records a revocation. Revoking a person also revokes every API
// token they hold, in the same transaction: a revoked person keeps no
// credential (they get access again only by signing in anew, see design
// 0003). Revoking a token also marks the token revoked.
func (s *Store) Revoke(ctx context.Context, r *Revocation) error {
	named := 0
	for _, v := range []string{r.Serial, r.UserID, r.ClusterID, r.TokenID} {
		if v != "" {
			named++
		}
	}
	if named != 1 {
		return fmt.Errorf("%w: a revocation names one serial, person, cluster or token", ErrInvalid)
	}
	if (r.UserID != "" || r.ClusterID != "") && r.Before.IsZero() {
		r.Before = s.now()
	}
	r.Serial = strings.ToLower(r.Serial)
	r.ID, r.Created = newID(), s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		now := micros(s.now())
		switch {
		case r.UserID != "":
			if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_us = $1 WHERE user_id = $2 AND revoked_us = 0`, now, r.UserID); err != nil {
				return err
			}
		case r.TokenID != "":
			if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_us = $1 WHERE id = $2 AND revoked_us = 0`, now, r.TokenID); err != nil {
				return err
			}
		}
		var err error
		switch {
		case r.Serial != "":
			err = s.recordChange(ctx, tx, ChangeRevokeSerial, r.Serial, time.Time{})
		case r.UserID != "":
			err = s.recordChange(ctx, tx, ChangeRevokeUser, r.UserID, r.Before)
		case r.ClusterID != "":
			var name string
			if err = tx.QueryRowContext(ctx, `SELECT name FROM clusters WHERE id = $1`, r.ClusterID).Scan(&name); err == nil {
				r.ClusterName = name
				err = s.recordChange(ctx, tx, ChangeRevokeCluster, name, r.Before)
			} else if errors.Is(err, sql.ErrNoRows) {
				err = nil // the cluster is gone; nothing of it connects
			}
		case r.TokenID != "":
			err = s.recordChange(ctx, tx, ChangeRevokeToken, r.TokenID, time.Time{})
		}
		if err != nil {
			return err
		}
		return insertRevocation(ctx, tx, r)
	})
}

func insertRevocation(ctx context.Context, tx *sql.Tx, r *Revocation) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO revocations (id, serial, user_id, cluster_id, cluster_name, token_id, before_us, until_us, reason, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		r.ID, r.Serial, r.UserID, r.ClusterID, r.ClusterName, r.TokenID, micros(r.Before), micros(r.Until), r.Reason, micros(r.Created))
	return err
}

// Revoked reports whether a person's certificate (its serial, its person,
// when it was issued, the API token it was minted through if any) is
// revoked.
func (s *Store) Revoked(ctx context.Context, serial, userID string, issued time.Time, tokenID string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM revocations WHERE serial = $1 OR (user_id = $2 AND user_id <> '' AND before_us > $3) OR (token_id = $4 AND token_id <> '')`,
		strings.ToLower(serial), userID, micros(issued), tokenID).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("store: revocations: %w", err)
	}
	return n > 0, nil
}

// Revocations returns the revocations made at or after since that are
// still in force: what a node loads at start and adds to its set.
func (s *Store) Revocations(ctx context.Context, since time.Time) ([]*Revocation, error) {
	// Revocations from before migration 00007 name no cluster; the
	// cluster's row does, while it exists.
	rows, err := s.db.QueryContext(ctx, `SELECT r.id, r.serial, r.user_id, r.cluster_id, COALESCE(NULLIF(r.cluster_name, ''), c.name, ''), r.token_id, r.before_us, r.until_us, r.reason, r.created_us
		FROM revocations r LEFT JOIN clusters c ON c.id = r.cluster_id AND r.cluster_id <> ''
		WHERE r.created_us >= $1 AND r.until_us > $2 ORDER BY r.created_us, r.id`,
		micros(since), micros(s.now()))
	if err != nil {
		return nil, fmt.Errorf("store: revocations: %w", err)
	}
	defer rows.Close()
	var out []*Revocation
	for rows.Next() {
		var r Revocation
		var before, until, created int64
		if err := rows.Scan(&r.ID, &r.Serial, &r.UserID, &r.ClusterID, &r.ClusterName, &r.TokenID, &before, &until, &r.Reason, &created); err != nil {
			return nil, err
		}
		r.Before, r.Until, r.Created = fromMicros(before), fromMicros(until), fromMicros(created)
		out = append(out, &r)
	}
	return out, rows.Err()
}

// PruneRevocations deletes revocations whose Until has passed.
func (s *Store) PruneRevocations(ctx context.Context) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM revocations WHERE until_us <= $1`, micros(s.now()))
	if err != nil {
		return 0, fmt.Errorf("store: prune revocations: %w", err)
	}
	return res.RowsAffected()
}

// withFirst scans a row's first column into first and the rest as asked.
type withFirst struct {
	row   *sql.Row
	first any
}

func (w withFirst) Scan(dest ...any) error { return w.row.Scan(append([]any{w.first}, dest...)...) }

// IssuedCert is a certificate the CA signed.
type IssuedCert struct {
	// Serial is the certificate's serial number, lower-case hex.
	Serial   string
	Kind     string // user, agent or node
	Subject  string
	Issued   time.Time
	NotAfter time.Time
}

// RecordIssued records a signed certificate. A serial issued before fails
// with ErrExists: the signer then signs again under another.
func (s *Store) RecordIssued(ctx context.Context, c IssuedCert) error {
	if c.Serial == "" || c.Kind == "" {
		return fmt.Errorf("%w: an issued certificate needs a serial and a kind", ErrInvalid)
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO issued_certificates (serial, kind, subject, issued_us, not_after_us) VALUES ($1, $2, $3, $4, $5)`,
			strings.ToLower(c.Serial), c.Kind, c.Subject, micros(c.Issued), micros(c.NotAfter))
		return err
	})
	if err != nil {
		return fmt.Errorf("store: record issued certificate: %w", err)
	}
	return nil
}

// PruneIssued deletes the records of certificates expired before before.
func (s *Store) PruneIssued(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM issued_certificates WHERE not_after_us < $1`, micros(before))
	if err != nil {
		return 0, fmt.Errorf("store: prune issued certificates: %w", err)
	}
	return res.RowsAffected()
}

// LookupIssued returns the record of the certificate with serial (hex),
// or ErrNotFound.
func (s *Store) LookupIssued(ctx context.Context, serial string) (*IssuedCert, error) {
	var c IssuedCert
	var issued, notAfter int64
	err := s.db.QueryRowContext(ctx, `SELECT serial, kind, subject, issued_us, not_after_us FROM issued_certificates WHERE serial = $1`,
		strings.ToLower(serial)).Scan(&c.Serial, &c.Kind, &c.Subject, &issued, &notAfter)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: certificate %s", ErrNotFound, serial)
	}
	if err != nil {
		return nil, fmt.Errorf("store: issued certificate: %w", err)
	}
	c.Issued, c.NotAfter = fromMicros(issued), fromMicros(notAfter)
	return &c, nil
}
