package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/ca"
)

var (
	_ ca.RotationStore = (*Store)(nil)
	_ ca.SecretStore   = (*Store)(nil)
)

// LoadCA returns the generations of the CA's keys that are not retired,
// with their phases. It implements ca.StateStore.
func (s *Store) LoadCA(ctx context.Context) (*ca.State, error) {
	st := &ca.State{}
	gens, err := s.CAGenerations(ctx)
	if err != nil {
		return nil, err
	}
	live := map[int64]bool{}
	for _, g := range gens {
		if g.Phase != ca.PhaseRetired {
			st.Generations = append(st.Generations, g)
			live[g.Number] = true
		}
	}
	rows, err := s.db.QueryContext(ctx, `SELECT generation, role, cert_pem, sealed_key, kek_id FROM ca_keys ORDER BY generation, role`)
	if err != nil {
		return nil, fmt.Errorf("store: ca: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k ca.StoredKey
		var cert, sealed string
		if err := rows.Scan(&k.Generation, &k.Role, &cert, &sealed, &k.KEKID); err != nil {
			return nil, fmt.Errorf("store: ca: %w", err)
		}
		if !live[k.Generation] {
			continue
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

// CAGenerations describes every generation of the CA, retired ones too,
// oldest first (without fingerprints: the authority has those).
func (s *Store) CAGenerations(ctx context.Context) ([]ca.Generation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT generation, phase, new_root, created_us, retire_after_us, overlap_us FROM ca_generations ORDER BY generation`)
	if err != nil {
		return nil, fmt.Errorf("store: ca: %w", err)
	}
	defer rows.Close()
	var out []ca.Generation
	for rows.Next() {
		var g ca.Generation
		var created, retire, overlap int64
		if err := rows.Scan(&g.Number, &g.Phase, &g.NewRoot, &created, &retire, &overlap); err != nil {
			return nil, fmt.Errorf("store: ca: %w", err)
		}
		g.Created, g.Overlap = fromMicros(created), time.Duration(overlap)*time.Microsecond
		if retire != 0 {
			g.RetireAfter = fromMicros(retire)
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// AddCAGeneration records a new generation in standby with its keys, and
// tells every node through the change feed. It fails with ca.ErrRotating
// while a generation is in standby, retiring or sunset. It implements
// ca.RotationStore.
func (s *Store) AddCAGeneration(ctx context.Context, g ca.Generation, keys []ca.StoredKey) error {
	if g.Phase != ca.PhaseStandby || len(keys) != 4 {
		return fmt.Errorf("%w: a new generation is in standby, with four keys", ErrInvalid)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		var busy, newest int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM ca_generations WHERE phase IN ($1, $2, $3)`, ca.PhaseStandby, ca.PhaseRetiring, ca.PhaseSunset).Scan(&busy); err != nil {
			return err
		}
		if busy > 0 {
			return ca.ErrRotating
		}
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(generation), 0) FROM ca_generations`).Scan(&newest); err != nil {
			return err
		}
		if g.Number != newest+1 {
			return fmt.Errorf("%w: generation %d follows %d", ErrConflict, g.Number, newest)
		}
		now := micros(s.now())
		if _, err := tx.ExecContext(ctx, `INSERT INTO ca_generations (generation, phase, new_root, created_us, changed_us, retire_after_us, overlap_us) VALUES ($1, $2, $3, $4, $4, 0, $5)`,
			g.Number, g.Phase, g.NewRoot, now, g.Overlap.Microseconds()); err != nil {
			return err
		}
		for _, k := range keys {
			if k.Generation != g.Number {
				return fmt.Errorf("%w: a key of generation %d in generation %d", ErrInvalid, k.Generation, g.Number)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO ca_keys (generation, role, cert_pem, sealed_key, kek_id, created_us) VALUES ($1, $2, $3, $4, $5, $6)`,
				k.Generation, k.Role, string(k.CertPEM), base64.StdEncoding.EncodeToString(k.SealedKey), k.KEKID, now); err != nil {
				return err
			}
		}
		return s.recordChange(ctx, tx, ChangeCA, fmt.Sprint(g.Number), time.Time{})
	})
}

// ActivateCAGeneration makes the standby generation n active and the
// active one retiring until retireAfter, and tells every node. It fails
// with ErrConflict unless n is in standby (another leader moved first).
func (s *Store) ActivateCAGeneration(ctx context.Context, n int64, retireAfter time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		now := micros(s.now())
		res, err := tx.ExecContext(ctx, `UPDATE ca_generations SET phase = $1, changed_us = $2 WHERE generation = $3 AND phase = $4`, ca.PhaseActive, now, n, ca.PhaseStandby)
		if err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k != 1 {
			return fmt.Errorf("%w: generation %d is not in standby", ErrConflict, n)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE ca_generations SET phase = $1, changed_us = $2, retire_after_us = $3 WHERE generation <> $4 AND phase = $5`,
			ca.PhaseRetiring, now, micros(retireAfter), n, ca.PhaseActive); err != nil {
			return err
		}
		return s.recordChange(ctx, tx, ChangeCA, fmt.Sprint(n), time.Time{})
	})
}

// SunsetCAGeneration moves generation n, which must be retiring, to
// sunset (the nodes move their serving certificates off it), and tells
// every node.
func (s *Store) SunsetCAGeneration(ctx context.Context, n int64) error {
	return s.moveCAGeneration(ctx, n, ca.PhaseRetiring, ca.PhaseSunset)
}

// RetireCAGeneration retires generation n, which must be in sunset, and
// tells every node.
func (s *Store) RetireCAGeneration(ctx context.Context, n int64) error {
	return s.moveCAGeneration(ctx, n, ca.PhaseSunset, ca.PhaseRetired)
}

func (s *Store) moveCAGeneration(ctx context.Context, n int64, from, to string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE ca_generations SET phase = $1, changed_us = $2 WHERE generation = $3 AND phase = $4`, to, micros(s.now()), n, from)
		if err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k != 1 {
			return fmt.Errorf("%w: generation %d is not %s", ErrConflict, n, from)
		}
		return s.recordChange(ctx, tx, ChangeCA, fmt.Sprint(n), time.Time{})
	})
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
		for _, g := range st.Generations {
			if _, err := tx.ExecContext(ctx, `INSERT INTO ca_generations (generation, phase, new_root, created_us, changed_us, retire_after_us, overlap_us) VALUES ($1, $2, $3, $4, $4, 0, 0)`,
				g.Number, g.Phase, g.NewRoot, micros(s.now())); err != nil {
				return err
			}
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

// SealedSecret returns the secret name, sealed, and the KEK that sealed it
// (ErrNotFound and ca.ErrNoSecret if there is none). It implements
// ca.SecretStore.
func (s *Store) SealedSecret(ctx context.Context, name string) ([]byte, string, error) {
	var sealed, kekID string
	err := s.db.QueryRowContext(ctx, `SELECT sealed, kek_id FROM sealed_secrets WHERE name = $1`, name).Scan(&sealed, &kekID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", fmt.Errorf("%w: %w", ErrNotFound, ca.ErrNoSecret)
	}
	if err != nil {
		return nil, "", fmt.Errorf("store: sealed secret: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		return nil, "", fmt.Errorf("store: sealed secret %s: %w", name, err)
	}
	return b, kekID, nil
}

// CreateSealedSecret records the secret name, sealed, once: ErrExists if
// another node recorded it first. It implements ca.SecretStore.
func (s *Store) CreateSealedSecret(ctx context.Context, name string, sealed []byte, kekID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO sealed_secrets (name, sealed, kek_id, created_us) VALUES ($1, $2, $3, $4)`,
			name, base64.StdEncoding.EncodeToString(sealed), kekID, micros(s.now()))
		return err
	})
}
