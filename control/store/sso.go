package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"time"
)

// SSOToken is the sealed refresh token kept for a person at an SSO
// provider (see migrations/00002_sso_tokens.sql). The store never sees the
// token in the clear.
type SSOToken struct {
	UserID   string
	Provider string
	Subject  string
	// Source identifies the Kratos token this one descends from.
	Source  string
	Sealed  []byte
	Updated time.Time
}

// GetSSOToken returns the token kept for a person at a provider, or
// ErrNotFound.
func (s *Store) GetSSOToken(ctx context.Context, userID, provider string) (*SSOToken, error) {
	t := &SSOToken{UserID: userID, Provider: provider}
	var sealed string
	var updated int64
	err := s.db.QueryRowContext(ctx, `SELECT subject, source, sealed, updated_us FROM sso_tokens WHERE user_id = $1 AND provider = $2`,
		userID, provider).Scan(&t.Subject, &t.Source, &sealed, &updated)
	if err := one(err, "SSO token of "+userID+" at "+provider); err != nil {
		return nil, err
	}
	if t.Sealed, err = base64.StdEncoding.DecodeString(sealed); err != nil {
		return nil, err
	}
	t.Updated = fromMicros(updated)
	return t, nil
}

// PutSSOToken keeps t, replacing the person's token at that provider.
func (s *Store) PutSSOToken(ctx context.Context, t *SSOToken) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO sso_tokens (user_id, provider, subject, source, sealed, updated_us)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (user_id, provider) DO UPDATE SET subject = excluded.subject, source = excluded.source,
				sealed = excluded.sealed, updated_us = excluded.updated_us`,
			t.UserID, t.Provider, t.Subject, t.Source, base64.StdEncoding.EncodeToString(t.Sealed), micros(s.now()))
		return err
	})
}
