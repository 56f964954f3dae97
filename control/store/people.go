package store

import (
	"context"
	"database/sql"
	"fmt"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"time"
)

// User is a person. A person may be provisioned by email before their first
// login, so that grants exist when they arrive; KratosID is set then.
type User struct {
	ID       string
	OrgID    string
	Email    string
	KratosID string
	Display  string
	// CertTTL overrides the organization's default certificate lifetime
	// for this person (still capped by the organization's maximum); zero
	// means the organization's.
	CertTTL   time.Duration
	Version   int64
	Created   time.Time
	LastLogin time.Time
}

func normEmail(e string) string { return strings.ToLower(strings.TrimSpace(e)) }

// MaxEmailLen is the longest address a person may have: the most an SMTP
// path allows (RFC 5321, 256 with the angle brackets).
const MaxEmailLen = 254

var emailDomain = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// ValidEmail checks a (normalized) address: a bare addr-spec as net/mail
// reads it (no display name, no comments, no quoted local part), at most
// MaxEmailLen bytes, printable ASCII, with a host name for a domain. The
// store keeps only such addresses, so that what an admin reads in a list,
// an audit event or a certificate is what was meant.
func ValidEmail(e string) error {
	if e == "" || len(e) > MaxEmailLen {
		return fmt.Errorf("%w: email must be 1..%d bytes", ErrInvalid, MaxEmailLen)
	}
	for _, r := range e {
		if r <= 0x20 || r >= 0x7f {
			return fmt.Errorf("%w: email %q has spaces, control or non-ASCII characters", ErrInvalid, e)
		}
	}
	a, err := mail.ParseAddress(e)
	if err != nil || a.Name != "" || a.Address != e || strings.Contains(e, `"`) {
		return fmt.Errorf("%w: email %q is not an address", ErrInvalid, e)
	}
	_, domain, _ := strings.Cut(e[strings.LastIndex(e, "@"):], "@")
	if !emailDomain.MatchString(domain) {
		return fmt.Errorf("%w: email %q: the domain is not a host name", ErrInvalid, e)
	}
	return nil
}

// CreateUser provisions a person in u.OrgID. Emails are unique and compared
// case-insensitively.
func (s *Store) CreateUser(ctx context.Context, u *User) error {
	u.Email = normEmail(u.Email)
	if err := ValidEmail(u.Email); err != nil {
		return err
	}
	u.ID, u.Version, u.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO users (id, org_id, email, kratos_id, display, cert_ttl_s, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			u.ID, u.OrgID, u.Email, u.KratosID, u.Display, int64(u.CertTTL/time.Second), micros(u.Created))
		return err
	})
}

const userCols = `id, org_id, email, kratos_id, display, cert_ttl_s, version, created_us, last_login_us`

func scanUser(r interface{ Scan(...any) error }) (*User, error) {
	var u User
	var ttl, created, login int64
	if err := r.Scan(&u.ID, &u.OrgID, &u.Email, &u.KratosID, &u.Display, &ttl, &u.Version, &created, &login); err != nil {
		return nil, err
	}
	u.CertTTL, u.Created, u.LastLogin = time.Duration(ttl)*time.Second, fromMicros(created), fromMicros(login)
	return &u, nil
}

// GetUser returns a person by id or email.
func (s *Store) GetUser(ctx context.Context, idOrEmail string) (*User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE id = $1 OR email = $2`, idOrEmail, normEmail(idOrEmail)))
	return u, one(err, "user "+idOrEmail)
}

// GetUserByKratosID returns the person linked to a Kratos identity.
func (s *Store) GetUserByKratosID(ctx context.Context, kratosID string) (*User, error) {
	if kratosID == "" {
		return nil, fmt.Errorf("%w: empty kratos id", ErrNotFound)
	}
	u, err := scanUser(s.db.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE kratos_id = $1`, kratosID))
	return u, one(err, "user with kratos identity "+kratosID)
}

// ListUsers lists an organization's people by email.
func (s *Store) ListUsers(ctx context.Context, orgID string, p Page) ([]*User, string, error) {
	return list(ctx, s, p, `SELECT `+userCols+` FROM users WHERE email > $1 AND org_id = $3 ORDER BY email LIMIT $2`, []any{orgID},
		func(r *sql.Rows) (*User, string, error) {
			u, err := scanUser(r)
			if err != nil {
				return nil, "", err
			}
			return u, u.Email, nil
		})
}

// UpdateUser changes a person's display name and certificate lifetime if
// their version is still u.Version.
func (s *Store) UpdateUser(ctx context.Context, u *User) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE users SET display = $1, cert_ttl_s = $2, version = version + 1 WHERE id = $3 AND version = $4`,
			u.Display, int64(u.CertTTL/time.Second), u.ID, u.Version)
		if err != nil {
			return err
		}
		if err := updated(ctx, tx, res, "users", u.ID); err != nil {
			return err
		}
		u.Version++
		return nil
	})
}

// LinkIdentity links a person who has no Kratos identity yet to one (an
// admin created both).
func (s *Store) LinkIdentity(ctx context.Context, userID, kratosID string) error {
	if kratosID == "" {
		return fmt.Errorf("%w: empty kratos id", ErrInvalid)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE users SET kratos_id = $1, version = version + 1 WHERE id = $2 AND kratos_id = ''`, kratosID, userID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("%w: user %s is missing or already linked", ErrConflict, userID)
		}
		return nil
	})
}

// RecordLogin links the person with email to their Kratos identity (on
// their first login) and replaces their IdP-sourced group memberships with
// the groups that idpGroups map to - on every login, not only the first. It
// returns the person.
func (s *Store) RecordLogin(ctx context.Context, email, kratosID string, idpGroups []string) (*User, error) {
	var u *User
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		u, err = scanUser(tx.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE email = $1`, normEmail(email)))
		if err := one(err, "user "+email); err != nil {
			return err
		}
		if u.KratosID != "" && u.KratosID != kratosID {
			return fmt.Errorf("%w: %s is linked to another identity", ErrConflict, email)
		}
		now := micros(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE users SET kratos_id = $1, last_login_us = $2, version = version + 1 WHERE id = $3`, kratosID, now, u.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM group_members WHERE user_id = $1 AND source = 'idp'`, u.ID); err != nil {
			return err
		}
		for _, g := range slices.Compact(slices.Sorted(slices.Values(idpGroups))) {
			if _, err := tx.ExecContext(ctx, `INSERT INTO group_members (group_id, user_id, source)
				SELECT group_id, $1, 'idp' FROM idp_group_maps WHERE org_id = $2 AND idp_group = $3
				ON CONFLICT DO NOTHING`, u.ID, u.OrgID, g); err != nil {
				return err
			}
		}
		u.KratosID, u.LastLogin, u.Version = kratosID, fromMicros(now), u.Version+1
		return s.recordChange(ctx, tx, ChangeAccess, u.ID, time.Time{})
	})
	return u, err
}

// DeleteUser deletes a person, their memberships, API tokens and the role
// bindings that name them.
func (s *Store) DeleteUser(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM role_bindings WHERE subject_kind = 'user' AND subject_id = $1`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM users WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if err := deleted(res, "user "+id); err != nil {
			return err
		}
		return s.recordChange(ctx, tx, ChangeAccess, id, time.Time{})
	})
}

// Group is a set of people in an organization; bindings may name a group.
type Group struct {
	ID          string
	OrgID       string
	Name        string
	Description string
	Version     int64
	Created     time.Time
}

// CreateGroup creates a group.
func (s *Store) CreateGroup(ctx context.Context, g *Group) error {
	if g.Name == "" {
		return fmt.Errorf("%w: group name is empty", ErrInvalid)
	}
	g.ID, g.Version, g.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO groups_ (id, org_id, name, description, created_us) VALUES ($1, $2, $3, $4, $5)`,
			g.ID, g.OrgID, g.Name, g.Description, micros(g.Created))
		return err
	})
}

const groupCols = `id, org_id, name, description, version, created_us`

func scanGroup(r interface{ Scan(...any) error }) (*Group, error) {
	var g Group
	var created int64
	if err := r.Scan(&g.ID, &g.OrgID, &g.Name, &g.Description, &g.Version, &created); err != nil {
		return nil, err
	}
	g.Created = fromMicros(created)
	return &g, nil
}

// GetGroup returns a group of orgID by id or name.
func (s *Store) GetGroup(ctx context.Context, orgID, idOrName string) (*Group, error) {
	g, err := scanGroup(s.db.QueryRowContext(ctx, `SELECT `+groupCols+` FROM groups_ WHERE org_id = $1 AND (id = $2 OR name = $2)`, orgID, idOrName))
	return g, one(err, "group "+idOrName)
}

// ListGroups lists an organization's groups by name.
func (s *Store) ListGroups(ctx context.Context, orgID string, p Page) ([]*Group, string, error) {
	return list(ctx, s, p, `SELECT `+groupCols+` FROM groups_ WHERE name > $1 AND org_id = $3 ORDER BY name LIMIT $2`, []any{orgID},
		func(r *sql.Rows) (*Group, string, error) {
			g, err := scanGroup(r)
			if err != nil {
				return nil, "", err
			}
			return g, g.Name, nil
		})
}

// DeleteGroup deletes a group, its memberships and the bindings naming it.
func (s *Store) DeleteGroup(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// The members as they are before the group goes.
		if err := s.changedSubject(ctx, tx, SubjectGroup, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM role_bindings WHERE subject_kind = 'group' AND subject_id = $1`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM groups_ WHERE id = $1`, id)
		if err != nil {
			return err
		}
		return deleted(res, "group "+id)
	})
}

// AddMember makes a person a local member of a group (idempotent).
func (s *Store) AddMember(ctx context.Context, groupID, userID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO group_members (group_id, user_id, source) VALUES ($1, $2, 'local') ON CONFLICT DO NOTHING`, groupID, userID); err != nil {
			return err
		}
		return s.recordChange(ctx, tx, ChangeAccess, userID, time.Time{})
	})
}

// RemoveMember ends a person's local membership of a group.
func (s *Store) RemoveMember(ctx context.Context, groupID, userID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM group_members WHERE group_id = $1 AND user_id = $2 AND source = 'local'`, groupID, userID)
		if err != nil {
			return err
		}
		if err := deleted(res, "membership"); err != nil {
			return err
		}
		return s.recordChange(ctx, tx, ChangeAccess, userID, time.Time{})
	})
}

// UserGroups returns the ids of the groups a person belongs to, local and
// from the IdP.
func (s *Store) UserGroups(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT group_id FROM group_members WHERE user_id = $1 ORDER BY group_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("store: groups of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// GroupMembers returns the ids of a group's members.
func (s *Store) GroupMembers(ctx context.Context, groupID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id`, groupID)
	if err != nil {
		return nil, fmt.Errorf("store: members of %s: %w", groupID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// MapIdPGroup makes membership of the identity provider's group idpGroup
// mean membership of groupID, from each person's next login on.
func (s *Store) MapIdPGroup(ctx context.Context, orgID, idpGroup, groupID string) error {
	if idpGroup == "" {
		return fmt.Errorf("%w: empty IdP group", ErrInvalid)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO idp_group_maps (org_id, idp_group, group_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, orgID, idpGroup, groupID)
		return err
	})
}
