package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Kinds of change in the feed.
const (
	// ChangeAccess: the access of the person Subject (a user id) changed: a
	// binding, group, membership, role or the person changed or went, or
	// a time-bound grant expired.
	ChangeAccess = "access"
	// ChangeAll: a change that may touch anyone (a cluster shared or
	// deleted, a project deleted): nodes forget every cached decision and
	// look again at every live request.
	ChangeAll = "all"
	// ChangeRevokeSerial: the certificate with serial Subject is revoked.
	ChangeRevokeSerial = "revoke.serial"
	// ChangeRevokeUser: the certificates of person Subject issued before
	// Before are revoked.
	ChangeRevokeUser = "revoke.user"
	// ChangeRevokeCluster: the agent certificates of the cluster named
	// Subject issued before Before are revoked.
	ChangeRevokeCluster = "revoke.cluster"
	// ChangeRevokeToken: the API token Subject is revoked.
	ChangeRevokeToken = "revoke.token"
	// ChangeCA: the certificate authority's generations changed (a
	// rotation moved on; Subject is the generation): nodes reload them.
	ChangeCA = "ca"
)

// Change is a row of the change feed.
type Change struct {
	ID      string
	At      time.Time
	Kind    string
	Subject string
	Before  time.Time
}

// ChangeRetention is how long changes are kept: far longer than any
// follower's look-back window, short enough that the table stays small.
const ChangeRetention = time.Hour

func (s *Store) recordChange(ctx context.Context, tx *sql.Tx, kind, subject string, before time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO changes (id, at_us, kind, subject, before_us) VALUES ($1, $2, $3, $4, $5)`,
		newID(), micros(s.now()), kind, subject, micros(before))
	return err
}

// changedSubject records an access change for a binding's subject: the
// person, or each member of the group as it is now.
func (s *Store) changedSubject(ctx context.Context, tx *sql.Tx, kind, id string) error {
	if kind == SubjectUser {
		return s.recordChange(ctx, tx, ChangeAccess, id, time.Time{})
	}
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id`, id)
	if err != nil {
		return err
	}
	var users []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			rows.Close()
			return err
		}
		users = append(users, u)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, u := range users {
		if err := s.recordChange(ctx, tx, ChangeAccess, u, time.Time{}); err != nil {
			return err
		}
	}
	return nil
}

// changedBindings records an access change for the subjects of the
// bindings a query selects (its arguments args).
func (s *Store) changedBindings(ctx context.Context, tx *sql.Tx, where string, args ...any) error {
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT subject_kind, subject_id FROM role_bindings WHERE `+where, args...)
	if err != nil {
		return err
	}
	type subject struct{ kind, id string }
	var subs []subject
	for rows.Next() {
		var sb subject
		if err := rows.Scan(&sb.kind, &sb.id); err != nil {
			rows.Close()
			return err
		}
		subs = append(subs, sb)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, sb := range subs {
		if err := s.changedSubject(ctx, tx, sb.kind, sb.id); err != nil {
			return err
		}
	}
	return nil
}

// Changes returns up to limit changes at or after since, oldest first
// (then by id), after the change (afterAt, afterID) when afterID is set:
// a keyset page.
func (s *Store) Changes(ctx context.Context, since time.Time, afterAt time.Time, afterID string, limit int) ([]Change, error) {
	q := `SELECT id, at_us, kind, subject, before_us FROM changes WHERE at_us >= $1`
	args := []any{micros(since)}
	if afterID != "" {
		q += ` AND (at_us > $2 OR (at_us = $2 AND id > $3))`
		args = append(args, micros(afterAt), afterID)
	}
	q += fmt.Sprintf(` ORDER BY at_us, id LIMIT %d`, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: changes: %w", err)
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var c Change
		var at, before int64
		if err := rows.Scan(&c.ID, &at, &c.Kind, &c.Subject, &before); err != nil {
			return nil, fmt.Errorf("store: changes: %w", err)
		}
		c.At, c.Before = fromMicros(at), fromMicros(before)
		out = append(out, c)
	}
	return out, rows.Err()
}

// PruneChanges deletes changes older than ChangeRetention.
func (s *Store) PruneChanges(ctx context.Context) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM changes WHERE at_us < $1`, micros(s.now().Add(-ChangeRetention)))
	if err != nil {
		return 0, fmt.Errorf("store: prune changes: %w", err)
	}
	return res.RowsAffected()
}
