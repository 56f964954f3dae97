package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/gatehouse-dev/gatehouse/control/ca"
)

var _ ca.StateStore = (*Store)(nil)

// LoadCA returns the newest generation of the CA's keys. It implements
// ca.StateStore.
func (s *Store) LoadCA(ctx context.Context) (*ca.State, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT generation, role, cert_pem, sealed_key, kek_id FROM ca_keys
		WHERE generation = (SELECT MAX(generation) FROM ca_keys) ORDER BY role`)
	if err != nil {
		return nil, fmt.Errorf("store: ca: %w", err)
	}
	defer rows.Close()
	st := &ca.State{}
	for rows.Next() {
		var k ca.StoredKey
		var cert, sealed string
		if err := rows.Scan(&k.Generation, &k.Role, &cert, &sealed, &k.KEKID); err != nil {
			return nil, fmt.Errorf("store: ca: %w", err)
		}
		if k.SealedKey, err = base64.StdEncoding.DecodeString(sealed); err != nil {
			return nil, fmt.Errorf("store: ca: the %s key: %w", k.Role, err)
		}
		k.CertPEM = []byte(cert)
		st.Keys = append(st.Keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: ca: %w", err)
	}
	if len(st.Keys) == 0 {
		return nil, ca.ErrNoState
	}
	return st, nil
}

// CreateCA records the CA's first state. It implements ca.StateStore: a
// second call, or the loser of two concurrent ones, fails with
// ca.ErrInitialized.
func (s *Store) CreateCA(ctx context.Context, st *ca.State) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM ca_keys`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return ca.ErrInitialized
		}
		for _, k := range st.Keys {
			if _, err := tx.ExecContext(ctx, `INSERT INTO ca_keys (generation, role, cert_pem, sealed_key, kek_id, created_us) VALUES ($1, $2, $3, $4, $5, $6)`,
				k.Generation, k.Role, string(k.CertPEM), base64.StdEncoding.EncodeToString(k.SealedKey), k.KEKID, micros(s.now())); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrExists) {
		return ca.ErrInitialized
	}
	return err
}
