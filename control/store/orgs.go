package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Org is an organization: the top of the hierarchy, and the boundary of
// people, groups, roles and bindings.
type Org struct {
	ID   string
	Name string
	// CertTTL is the default lifetime of members' kubeconfig certificates;
	// MaxCertTTL the longest any member may get. Zero means the built-in
	// defaults (control.DefaultCertTTL, control.MaxCertTTL).
	CertTTL, MaxCertTTL time.Duration
	Version             int64
	Created             time.Time
}

// CreateOrg creates an organization.
func (s *Store) CreateOrg(ctx context.Context, o *Org) error {
	if o.Name == "" {
		return fmt.Errorf("%w: org name is empty", ErrInvalid)
	}
	o.ID, o.Version, o.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO orgs (id, name, cert_ttl_s, max_ttl_s, created_us) VALUES ($1, $2, $3, $4, $5)`,
			o.ID, o.Name, int64(o.CertTTL/time.Second), int64(o.MaxCertTTL/time.Second), micros(o.Created))
		return err
	})
}

const orgCols = `id, name, cert_ttl_s, max_ttl_s, version, created_us`

func scanOrg(r interface{ Scan(...any) error }) (*Org, error) {
	var o Org
	var ttl, maxTTL, created int64
	if err := r.Scan(&o.ID, &o.Name, &ttl, &maxTTL, &o.Version, &created); err != nil {
		return nil, err
	}
	o.CertTTL, o.MaxCertTTL, o.Created = time.Duration(ttl)*time.Second, time.Duration(maxTTL)*time.Second, fromMicros(created)
	return &o, nil
}

// GetOrg returns the organization with this id or name.
func (s *Store) GetOrg(ctx context.Context, idOrName string) (*Org, error) {
	o, err := scanOrg(s.db.QueryRowContext(ctx, `SELECT `+orgCols+` FROM orgs WHERE id = $1 OR name = $1`, idOrName))
	return o, one(err, "org "+idOrName)
}

// ListOrgs lists organizations by name.
func (s *Store) ListOrgs(ctx context.Context, p Page) ([]*Org, string, error) {
	return list(ctx, s, p, `SELECT `+orgCols+` FROM orgs WHERE name > $1 ORDER BY name LIMIT $2`, nil,
		func(r *sql.Rows) (*Org, string, error) {
			o, err := scanOrg(r)
			if err != nil {
				return nil, "", err
			}
			return o, o.Name, nil
		})
}

// UpdateOrg changes an organization's certificate settings, if its version
// is still o.Version; o.Version is then the new version.
func (s *Store) UpdateOrg(ctx context.Context, o *Org) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE orgs SET cert_ttl_s = $1, max_ttl_s = $2, version = version + 1 WHERE id = $3 AND version = $4`,
			int64(o.CertTTL/time.Second), int64(o.MaxCertTTL/time.Second), o.ID, o.Version)
		if err != nil {
			return err
		}
		if err := updated(ctx, tx, res, "orgs", o.ID); err != nil {
			return err
		}
		o.Version++
		return nil
	})
}

// Project groups clusters in an organization; access is granted per
// project (and per namespace in a project).
type Project struct {
	ID          string
	OrgID       string
	Name        string
	Description string
	Version     int64
	Created     time.Time
}

// CreateProject creates a project in p.OrgID.
func (s *Store) CreateProject(ctx context.Context, p *Project) error {
	if p.Name == "" {
		return fmt.Errorf("%w: project name is empty", ErrInvalid)
	}
	p.ID, p.Version, p.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO projects (id, org_id, name, description, created_us) VALUES ($1, $2, $3, $4, $5)`,
			p.ID, p.OrgID, p.Name, p.Description, micros(p.Created))
		return err
	})
}

const projectCols = `id, org_id, name, description, version, created_us`

func scanProject(r interface{ Scan(...any) error }) (*Project, error) {
	var p Project
	var created int64
	if err := r.Scan(&p.ID, &p.OrgID, &p.Name, &p.Description, &p.Version, &created); err != nil {
		return nil, err
	}
	p.Created = fromMicros(created)
	return &p, nil
}

// GetProject returns a project of orgID by id or name.
func (s *Store) GetProject(ctx context.Context, orgID, idOrName string) (*Project, error) {
	p, err := scanProject(s.db.QueryRowContext(ctx, `SELECT `+projectCols+` FROM projects WHERE org_id = $1 AND (id = $2 OR name = $2)`, orgID, idOrName))
	return p, one(err, "project "+idOrName)
}

// ListProjects lists an organization's projects by name.
func (s *Store) ListProjects(ctx context.Context, orgID string, p Page) ([]*Project, string, error) {
	return list(ctx, s, p, `SELECT `+projectCols+` FROM projects WHERE name > $1 AND org_id = $3 ORDER BY name LIMIT $2`, []any{orgID},
		func(r *sql.Rows) (*Project, string, error) {
			pr, err := scanProject(r)
			if err != nil {
				return nil, "", err
			}
			return pr, pr.Name, nil
		})
}

// UpdateProject changes a project's description if its version is still
// p.Version.
func (s *Store) UpdateProject(ctx context.Context, p *Project) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE projects SET description = $1, version = version + 1 WHERE id = $2 AND version = $3`, p.Description, p.ID, p.Version)
		if err != nil {
			return err
		}
		if err := updated(ctx, tx, res, "projects", p.ID); err != nil {
			return err
		}
		p.Version++
		return nil
	})
}

// DeleteProject deletes a project with its clusters and the role bindings
// scoped to it.
func (s *Store) DeleteProject(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM role_bindings WHERE project_id = $1`, id); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM projects WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if err := deleted(res, "project "+id); err != nil {
			return err
		}
		return s.recordChange(ctx, tx, ChangeAll, "", time.Time{})
	})
}

// Cluster is a Kubernetes cluster whose agent connects to the gateway. Its
// Name is its id in kubeconfig paths (/k8s/NAME) and agent certificates.
type Cluster struct {
	ID        string
	Name      string
	ProjectID string
	// OrgID is the organization of the cluster's project (read only).
	OrgID       string
	Description string
	// Fingerprint is the kube-system namespace UID the agent presented at
	// registration; empty until then.
	Fingerprint string
	// SharedWith lists other projects whose grants reach this cluster.
	SharedWith []string
	// RecordRoles names the roles whose holders' exec and attach sessions
	// are recorded ("*": everyone's; empty: no one's).
	RecordRoles []string
	Version     int64
	Created     time.Time
}

// MaxRecordRoles bounds a cluster's recording policy.
const MaxRecordRoles = 32

var recordRole = regexp.MustCompile(`^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$`)

// validRecordRoles checks a recording policy: "*" or role names (DNS
// labels), at most MaxRecordRoles.
func validRecordRoles(roles []string) error {
	if len(roles) > MaxRecordRoles {
		return fmt.Errorf("%w: at most %d recorded roles", ErrInvalid, MaxRecordRoles)
	}
	for _, r := range roles {
		if !recordRole.MatchString(r) {
			return fmt.Errorf("%w: recorded role %q is neither * nor a role name", ErrInvalid, r)
		}
	}
	return nil
}

// CreateCluster creates a cluster in c.ProjectID.
func (s *Store) CreateCluster(ctx context.Context, c *Cluster) error {
	if c.Name == "" {
		return fmt.Errorf("%w: cluster name is empty", ErrInvalid)
	}
	if err := validRecordRoles(c.RecordRoles); err != nil {
		return err
	}
	c.ID, c.Version, c.Created = newID(), 1, s.now().UTC()
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT org_id FROM projects WHERE id = $1`, c.ProjectID).Scan(&c.OrgID); err != nil {
			return fmt.Errorf("%w: project %s does not exist", ErrInvalid, c.ProjectID)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO clusters (id, name, project_id, description, record_roles, created_us) VALUES ($1, $2, $3, $4, $5, $6)`,
			c.ID, c.Name, c.ProjectID, c.Description, strings.Join(c.RecordRoles, ","), micros(c.Created))
		if err != nil {
			return err
		}
		return setShares(ctx, tx, c)
	})
}

func setShares(ctx context.Context, tx *sql.Tx, c *Cluster) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM cluster_shares WHERE cluster_id = $1`, c.ID); err != nil {
		return err
	}
	for _, p := range c.SharedWith {
		if p == c.ProjectID {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO cluster_shares (cluster_id, project_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, c.ID, p); err != nil {
			return err
		}
	}
	return nil
}

const clusterCols = `id, name, project_id, (SELECT org_id FROM projects WHERE projects.id = clusters.project_id), description, fingerprint, record_roles, version, created_us`

func scanCluster(r interface{ Scan(...any) error }) (*Cluster, error) {
	var c Cluster
	var created int64
	var roles string
	if err := r.Scan(&c.ID, &c.Name, &c.ProjectID, &c.OrgID, &c.Description, &c.Fingerprint, &roles, &c.Version, &created); err != nil {
		return nil, err
	}
	c.Created = fromMicros(created)
	if roles != "" {
		c.RecordRoles = strings.Split(roles, ",")
	}
	return &c, nil
}

func (s *Store) loadShares(ctx context.Context, cs ...*Cluster) error {
	for _, c := range cs {
		rows, err := s.db.QueryContext(ctx, `SELECT project_id FROM cluster_shares WHERE cluster_id = $1 ORDER BY project_id`, c.ID)
		if err != nil {
			return err
		}
		c.SharedWith = nil
		for rows.Next() {
			var p string
			if err := rows.Scan(&p); err != nil {
				rows.Close()
				return err
			}
			c.SharedWith = append(c.SharedWith, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// GetCluster returns a cluster by id or name.
func (s *Store) GetCluster(ctx context.Context, idOrName string) (*Cluster, error) {
	c, err := scanCluster(s.db.QueryRowContext(ctx, `SELECT `+clusterCols+` FROM clusters WHERE id = $1 OR name = $1`, idOrName))
	if err := one(err, "cluster "+idOrName); err != nil {
		return nil, err
	}
	return c, s.loadShares(ctx, c)
}

// ListClusters lists clusters by name: those of projectID and those shared
// with it, or every cluster when projectID is empty.
func (s *Store) ListClusters(ctx context.Context, projectID string, p Page) ([]*Cluster, string, error) {
	q := `SELECT ` + clusterCols + ` FROM clusters WHERE name > $1 ORDER BY name LIMIT $2`
	var args []any
	if projectID != "" {
		q = `SELECT ` + clusterCols + ` FROM clusters WHERE name > $1 AND (project_id = $3 OR id IN (SELECT cluster_id FROM cluster_shares WHERE project_id = $3)) ORDER BY name LIMIT $2`
		args = []any{projectID}
	}
	out, next, err := list(ctx, s, p, q, args, func(r *sql.Rows) (*Cluster, string, error) {
		c, err := scanCluster(r)
		if err != nil {
			return nil, "", err
		}
		return c, c.Name, nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, s.loadShares(ctx, out...)
}

// UpdateCluster changes a cluster's description, shares and recording
// policy if its version is still c.Version.
func (s *Store) UpdateCluster(ctx context.Context, c *Cluster) error {
	if err := validRecordRoles(c.RecordRoles); err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE clusters SET description = $1, record_roles = $2, version = version + 1 WHERE id = $3 AND version = $4`,
			c.Description, strings.Join(c.RecordRoles, ","), c.ID, c.Version)
		if err != nil {
			return err
		}
		if err := updated(ctx, tx, res, "clusters", c.ID); err != nil {
			return err
		}
		if err := setShares(ctx, tx, c); err != nil {
			return err
		}
		c.Version++
		// Shares decide who reaches the cluster.
		return s.recordChange(ctx, tx, ChangeAll, "", time.Time{})
	})
}

// DeleteCluster deletes a cluster and its bootstrap tokens, and revokes
// every agent certificate issued for it so far, until until (the longest
// an agent certificate lives): every node closes the deleted cluster's
// tunnel, and a cluster made again under the name starts afresh. It
// returns the revocation.
func (s *Store) DeleteCluster(ctx context.Context, id string, until time.Time) (*Revocation, error) {
	now := s.now()
	r := &Revocation{ID: newID(), ClusterID: id, Before: now, Until: until, Reason: "cluster deleted", Created: now.UTC()}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT name FROM clusters WHERE id = $1`, id).Scan(&r.ClusterName); errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: cluster %s", ErrNotFound, id)
		} else if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM clusters WHERE id = $1`, id); err != nil {
			return err
		}
		if err := s.recordChange(ctx, tx, ChangeAll, "", time.Time{}); err != nil {
			return err
		}
		if err := s.recordChange(ctx, tx, ChangeRevokeCluster, r.ClusterName, r.Before); err != nil {
			return err
		}
		return insertRevocation(ctx, tx, r)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// ClusterNames returns the names of every cluster, sorted: the keys the
// gateway cluster places tunnels by.
func (s *Store) ClusterNames(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name FROM clusters ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: cluster names: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("store: cluster names: %w", err)
		}
		out = append(out, n)
	}
	return out, rows.Err()
}
