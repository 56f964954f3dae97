package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// AgentTunnel is where a cluster's agent tunnel is, as the node holding it
// last wrote.
type AgentTunnel struct {
	Cluster      string
	Node         string
	Session      string
	AgentVersion string
	KubeVersion  string
	Connected    time.Time
	Heartbeat    time.Time
}

// TunnelUp records that node holds cluster's tunnel (session names this
// connection), replacing what another node or an older connection wrote.
func (s *Store) TunnelUp(ctx context.Context, t *AgentTunnel) error {
	now := micros(s.now())
	return s.tx(ctx, func(tx *sql.Tx) error {
		var id string
		err := tx.QueryRowContext(ctx, `SELECT id FROM clusters WHERE name = $1`, t.Cluster).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // deleted meanwhile: nothing to show
		}
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO agent_tunnels (cluster_id, node, session, agent_version, kube_version, connected_us, heartbeat_us)
			VALUES ($1, $2, $3, $4, $5, $6, $6)
			ON CONFLICT (cluster_id) DO UPDATE SET node = excluded.node, session = excluded.session, agent_version = excluded.agent_version,
				kube_version = excluded.kube_version, connected_us = excluded.connected_us, heartbeat_us = excluded.heartbeat_us`,
			id, t.Node, t.Session, t.AgentVersion, t.KubeVersion, now)
		return err
	})
}

// TunnelDown forgets a connection that ended (only that one: a newer one
// may have taken its place).
func (s *Store) TunnelDown(ctx context.Context, session string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM agent_tunnels WHERE session = $1`, session)
	if err != nil {
		return fmt.Errorf("store: tunnel down: %w", err)
	}
	return nil
}

// TunnelHeartbeat stamps the tunnels node holds (by session) as alive now,
// and forgets the other rows of node (left by a crash): one statement for
// the stamp, whatever the number of tunnels, and one per stale row.
func (s *Store) TunnelHeartbeat(ctx context.Context, node string, sessions []string) error {
	live := make(map[string]bool, len(sessions))
	for _, sess := range sessions {
		live[sess] = true
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT session FROM agent_tunnels WHERE node = $1`, node)
		if err != nil {
			return err
		}
		var stale []string
		for rows.Next() {
			var sess string
			if err := rows.Scan(&sess); err != nil {
				rows.Close()
				return err
			}
			if !live[sess] {
				stale = append(stale, sess)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, sess := range stale {
			if _, err := tx.ExecContext(ctx, `DELETE FROM agent_tunnels WHERE session = $1`, sess); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE agent_tunnels SET heartbeat_us = $1 WHERE node = $2`, micros(s.now()), node)
		return err
	})
}

// AgentTunnels returns the tunnels of an organization's clusters.
func (s *Store) AgentTunnels(ctx context.Context, orgID string) ([]*AgentTunnel, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT c.name, t.node, t.session, t.agent_version, t.kube_version, t.connected_us, t.heartbeat_us
		FROM agent_tunnels t JOIN clusters c ON c.id = t.cluster_id JOIN projects p ON p.id = c.project_id
		WHERE p.org_id = $1 ORDER BY c.name`, orgID)
	if err != nil {
		return nil, fmt.Errorf("store: agent tunnels: %w", err)
	}
	defer rows.Close()
	var out []*AgentTunnel
	for rows.Next() {
		var t AgentTunnel
		var conn, hb int64
		if err := rows.Scan(&t.Cluster, &t.Node, &t.Session, &t.AgentVersion, &t.KubeVersion, &conn, &hb); err != nil {
			return nil, fmt.Errorf("store: agent tunnels: %w", err)
		}
		t.Connected, t.Heartbeat = fromMicros(conn), fromMicros(hb)
		out = append(out, &t)
	}
	return out, rows.Err()
}

// ClusterRef names a cluster and its project.
type ClusterRef struct{ Name, Project string }

// OrgClusters returns every cluster of an organization with its project's
// name, by cluster name.
func (s *Store) OrgClusters(ctx context.Context, orgID string) ([]ClusterRef, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT c.name, p.name FROM clusters c JOIN projects p ON p.id = c.project_id WHERE p.org_id = $1 ORDER BY c.name`, orgID)
	if err != nil {
		return nil, fmt.Errorf("store: clusters of org: %w", err)
	}
	defer rows.Close()
	var out []ClusterRef
	for rows.Next() {
		var r ClusterRef
		if err := rows.Scan(&r.Name, &r.Project); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
