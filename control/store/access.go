package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
)

// Scopes a role can be bound at, widest first.
const (
	ScopeOrg       = "org"
	ScopeProject   = "project"
	ScopeNamespace = "namespace"
)

// Subject kinds of a binding.
const (
	SubjectUser  = "user"
	SubjectGroup = "group"
)

// Role is a custom role of an organization: Kubernetes rules (API groups,
// resources, verbs and, to limit access to particular objects,
// resourceNames). Built-in roles are not stored; control/policy defines
// them.
type Role struct {
	ID          string
	OrgID       string
	Name        string
	Scope       string
	Rules       []rbacv1.PolicyRule
	Description string
	Version     int64
	Created     time.Time
}

// CreateRole creates a custom role.
func (s *Store) CreateRole(ctx context.Context, r *Role) error {
	if r.Name == "" {
		return fmt.Errorf("%w: role name is empty", ErrInvalid)
	}
	rules, err := json.Marshal(r.Rules)
	if err != nil {
		return err
	}
	r.ID, r.Version, r.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO roles (id, org_id, name, scope, rules, description, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			r.ID, r.OrgID, r.Name, r.Scope, string(rules), r.Description, micros(r.Created))
		return err
	})
}

const roleCols = `id, org_id, name, scope, rules, description, version, created_us`

func scanRole(r interface{ Scan(...any) error }) (*Role, error) {
	var ro Role
	var rules string
	var created int64
	if err := r.Scan(&ro.ID, &ro.OrgID, &ro.Name, &ro.Scope, &rules, &ro.Description, &ro.Version, &created); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(rules), &ro.Rules); err != nil {
		return nil, fmt.Errorf("role %s rules: %w", ro.Name, err)
	}
	ro.Created = fromMicros(created)
	return &ro, nil
}

// GetRole returns a custom role of orgID by id or name.
func (s *Store) GetRole(ctx context.Context, orgID, idOrName string) (*Role, error) {
	r, err := scanRole(s.db.QueryRowContext(ctx, `SELECT `+roleCols+` FROM roles WHERE org_id = $1 AND (id = $2 OR name = $2)`, orgID, idOrName))
	return r, one(err, "role "+idOrName)
}

// ListRoles lists an organization's custom roles by name.
func (s *Store) ListRoles(ctx context.Context, orgID string, p Page) ([]*Role, string, error) {
	return list(ctx, s, p, `SELECT `+roleCols+` FROM roles WHERE name > $1 AND org_id = $3 ORDER BY name LIMIT $2`, []any{orgID},
		func(r *sql.Rows) (*Role, string, error) {
			ro, err := scanRole(r)
			if err != nil {
				return nil, "", err
			}
			return ro, ro.Name, nil
		})
}

// UpdateRole replaces a custom role's rules and description if its version
// is still r.Version.
func (s *Store) UpdateRole(ctx context.Context, r *Role) error {
	rules, err := json.Marshal(r.Rules)
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE roles SET rules = $1, description = $2, version = version + 1 WHERE id = $3 AND version = $4`,
			string(rules), r.Description, r.ID, r.Version)
		if err != nil {
			return err
		}
		if err := updated(ctx, tx, res, "roles", r.ID); err != nil {
			return err
		}
		var orgID, name string
		if err := tx.QueryRowContext(ctx, `SELECT org_id, name FROM roles WHERE id = $1`, r.ID).Scan(&orgID, &name); err != nil {
			return err
		}
		if err := s.changedBindings(ctx, tx, `org_id = $1 AND role = $2`, orgID, name); err != nil {
			return err
		}
		r.Version++
		return nil
	})
}

// DeleteRole deletes a custom role and every binding of it.
func (s *Store) DeleteRole(ctx context.Context, orgID, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var name string
		err := tx.QueryRowContext(ctx, `SELECT name FROM roles WHERE org_id = $1 AND id = $2`, orgID, id).Scan(&name)
		if err := one(err, "role "+id); err != nil {
			return err
		}
		// Every person the role reached, however many: the feed misses
		// no one.
		if err := s.changedBindings(ctx, tx, `org_id = $1 AND role = $2`, orgID, name); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM role_bindings WHERE org_id = $1 AND role = $2`, orgID, name); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM roles WHERE id = $1`, id)
		return err
	})
}

// Binding grants a subject a role in a scope: the organization (ProjectID
// empty), a project, or a namespace in a project's clusters. A zero Expires
// never expires.
type Binding struct {
	ID          string
	OrgID       string
	SubjectKind string
	SubjectID   string
	Role        string
	ProjectID   string
	Namespace   string
	Expires     time.Time
	CreatedBy   string
	Version     int64
	Created     time.Time
}

// Scope returns the binding's scope.
func (b *Binding) Scope() string {
	switch {
	case b.Namespace != "":
		return ScopeNamespace
	case b.ProjectID != "":
		return ScopeProject
	}
	return ScopeOrg
}

// CreateBinding creates a role binding.
func (s *Store) CreateBinding(ctx context.Context, b *Binding) error {
	switch {
	case b.SubjectKind != SubjectUser && b.SubjectKind != SubjectGroup:
		return fmt.Errorf("%w: subject kind %q", ErrInvalid, b.SubjectKind)
	case b.SubjectID == "" || b.Role == "":
		return fmt.Errorf("%w: binding needs a subject and a role", ErrInvalid)
	case b.Namespace != "" && b.ProjectID == "":
		return fmt.Errorf("%w: a namespace binding needs a project", ErrInvalid)
	}
	b.ID, b.Version, b.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		// The subject and project must be of the binding's organization.
		table := "users"
		if b.SubjectKind == SubjectGroup {
			table = "groups_"
		}
		var x int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM `+table+` WHERE id = $1 AND org_id = $2`, b.SubjectID, b.OrgID).Scan(&x); err != nil {
			return fmt.Errorf("%w: %s %s is not in the organization", ErrInvalid, b.SubjectKind, b.SubjectID)
		}
		if b.ProjectID != "" {
			if err := tx.QueryRowContext(ctx, `SELECT 1 FROM projects WHERE id = $1 AND org_id = $2`, b.ProjectID, b.OrgID).Scan(&x); err != nil {
				return fmt.Errorf("%w: project %s is not in the organization", ErrInvalid, b.ProjectID)
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO role_bindings (id, org_id, subject_kind, subject_id, role, project_id, namespace, expires_us, created_by, created_us)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			b.ID, b.OrgID, b.SubjectKind, b.SubjectID, b.Role, b.ProjectID, b.Namespace, micros(b.Expires), b.CreatedBy, micros(b.Created))
		if err != nil {
			return err
		}
		return s.changedSubject(ctx, tx, b.SubjectKind, b.SubjectID)
	})
}

const bindingCols = `id, org_id, subject_kind, subject_id, role, project_id, namespace, expires_us, created_by, version, created_us`

func scanBinding(r interface{ Scan(...any) error }) (*Binding, error) {
	var b Binding
	var expires, created int64
	if err := r.Scan(&b.ID, &b.OrgID, &b.SubjectKind, &b.SubjectID, &b.Role, &b.ProjectID, &b.Namespace, &expires, &b.CreatedBy, &b.Version, &created); err != nil {
		return nil, err
	}
	b.Expires, b.Created = fromMicros(expires), fromMicros(created)
	return &b, nil
}

// GetBinding returns a binding by id.
func (s *Store) GetBinding(ctx context.Context, id string) (*Binding, error) {
	b, err := scanBinding(s.db.QueryRowContext(ctx, `SELECT `+bindingCols+` FROM role_bindings WHERE id = $1`, id))
	return b, one(err, "role binding "+id)
}

// BindingFilter narrows ListBindings; empty fields match everything.
type BindingFilter struct {
	OrgID       string
	SubjectKind string
	SubjectID   string
	ProjectID   string
}

// ListBindings lists bindings by id, expired ones included.
func (s *Store) ListBindings(ctx context.Context, f BindingFilter, p Page) ([]*Binding, string, error) {
	q := `SELECT ` + bindingCols + ` FROM role_bindings WHERE id > $1`
	var args []any
	for _, c := range []struct{ col, v string }{{"org_id", f.OrgID}, {"subject_kind", f.SubjectKind}, {"subject_id", f.SubjectID}, {"project_id", f.ProjectID}} {
		if c.v != "" {
			args = append(args, c.v)
			q += fmt.Sprintf(" AND %s = $%d", c.col, len(args)+2)
		}
	}
	q += ` ORDER BY id LIMIT $2`
	return list(ctx, s, p, q, args, func(r *sql.Rows) (*Binding, string, error) {
		b, err := scanBinding(r)
		if err != nil {
			return nil, "", err
		}
		return b, b.ID, nil
	})
}

// ActiveBindings returns the bindings in force now for a person: their own
// and their groups'.
func (s *Store) ActiveBindings(ctx context.Context, userID string, groupIDs []string) ([]*Binding, error) {
	now := micros(s.now())
	args := []any{now, userID}
	q := `SELECT ` + bindingCols + ` FROM role_bindings WHERE (expires_us = 0 OR expires_us > $1) AND ((subject_kind = 'user' AND subject_id = $2)`
	if len(groupIDs) > 0 {
		ph := make([]string, len(groupIDs))
		for i, g := range groupIDs {
			args = append(args, g)
			ph[i] = fmt.Sprintf("$%d", len(args))
		}
		q += ` OR (subject_kind = 'group' AND subject_id IN (` + strings.Join(ph, ", ") + `))`
	}
	q += `) ORDER BY id`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: bindings of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []*Binding
	for rows.Next() {
		b, err := scanBinding(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// DeleteBinding deletes a binding.
func (s *Store) DeleteBinding(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.changedBindings(ctx, tx, `id = $1`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM role_bindings WHERE id = $1`, id)
		if err != nil {
			return err
		}
		return deleted(res, "role binding "+id)
	})
}

// DeleteExpiredBindings deletes the bindings whose expiry has passed and
// returns them, so that their subjects' cluster RBAC can be brought in line.
func (s *Store) DeleteExpiredBindings(ctx context.Context) ([]*Binding, error) {
	// Every node looks often; a plain indexed read first keeps the
	// transaction (and its contention) for when there is something to do.
	var x int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM role_bindings WHERE expires_us <> 0 AND expires_us <= $1 LIMIT 1`, micros(s.now())).Scan(&x)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: expired bindings: %w", err)
	}
	var out []*Binding
	err = s.tx(ctx, func(tx *sql.Tx) error {
		out = nil
		now := micros(s.now())
		rows, err := tx.QueryContext(ctx, `SELECT `+bindingCols+` FROM role_bindings WHERE expires_us <> 0 AND expires_us <= $1 ORDER BY id`, now)
		if err != nil {
			return err
		}
		for rows.Next() {
			b, err := scanBinding(rows)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := s.changedBindings(ctx, tx, `expires_us <> 0 AND expires_us <= $1`, now); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM role_bindings WHERE expires_us <> 0 AND expires_us <= $1`, now)
		return err
	})
	return out, err
}
