package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// AuditEvent is an audit event as the store indexes it for search.
type AuditEvent struct {
	ID string
	At time.Time
	// OrgID and ProjectID are the event's cluster's (empty for a node's
	// own events).
	OrgID, ProjectID string
	Kind, Node, User string
	Groups           []string
	Cluster          string
	Namespace        string
	Verb, Resource   string
	Name             string
	Status           int
	// Body is the event as written (JSON).
	Body []byte
}

// AuditCursor is where a page of a search ended: the next page starts
// after it (keyset pagination, newest first).
type AuditCursor struct {
	At time.Time
	ID string
}

// AuditQuery filters a search. Empty fields do not filter.
type AuditQuery struct {
	// OrgID is required; Projects, when not nil, limits the search to
	// those projects' clusters (a project role's view).
	OrgID    string
	Projects []string
	// From and To bound the events' time: From <= at < To.
	From, To                         time.Time
	User, Group, Cluster, Namespace  string
	Verb, Resource, Name, Node, Kind string
	Status                           int
	// After continues a search after a page; Limit bounds the page (at
	// most MaxAuditPage).
	After *AuditCursor
	Limit int
}

// MaxAuditPage bounds one page of a search.
const MaxAuditPage = 1000

// InsertAuditEvents indexes events; an event indexed before (the topic is
// read at least once) is left as it is.
func (s *Store) InsertAuditEvents(ctx context.Context, evs []*AuditEvent) error {
	if len(evs) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, e := range evs {
			if e.ID == "" {
				return fmt.Errorf("%w: an audit event without an id", ErrInvalid)
			}
			groups := ""
			if len(e.Groups) > 0 {
				groups = "|" + strings.Join(e.Groups, "|") + "|"
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO audit_events (id, at_us, org_id, project_id, kind, node, user_id, groups_txt, cluster,
				namespace, verb, resource, name, status, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
				ON CONFLICT (id) DO NOTHING`,
				e.ID, micros(e.At), e.OrgID, e.ProjectID, e.Kind, e.Node, e.User, groups, e.Cluster, e.Namespace, e.Verb, e.Resource, e.Name,
				e.Status, string(e.Body)); err != nil {
				return err
			}
		}
		return nil
	})
}

// QueryAudit returns a page of the events q selects, newest first, and the
// cursor of the next page (nil when this page is the last).
func (s *Store) QueryAudit(ctx context.Context, q AuditQuery) ([]*AuditEvent, *AuditCursor, error) {
	if q.OrgID == "" && q.Projects != nil {
		return nil, nil, fmt.Errorf("%w: a search names its organization", ErrInvalid)
	}
	limit := q.Limit
	if limit <= 0 || limit > MaxAuditPage {
		limit = MaxAuditPage
	}
	where := []string{"org_id = $1"}
	args := []any{q.OrgID}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if q.Projects != nil {
		if len(q.Projects) == 0 {
			return nil, nil, nil // a view of no project sees nothing
		}
		var ps []string
		for _, p := range q.Projects {
			ps = append(ps, arg(p))
		}
		where = append(where, "project_id IN ("+strings.Join(ps, ", ")+")")
	}
	if !q.From.IsZero() {
		where = append(where, "at_us >= "+arg(micros(q.From)))
	}
	if !q.To.IsZero() {
		where = append(where, "at_us < "+arg(micros(q.To)))
	}
	for col, v := range map[string]string{"user_id": q.User, "cluster": q.Cluster, "namespace": q.Namespace, "verb": q.Verb,
		"resource": q.Resource, "name": q.Name, "node": q.Node, "kind": q.Kind} {
		if v != "" {
			where = append(where, col+" = "+arg(v))
		}
	}
	if q.Group != "" {
		if strings.Contains(q.Group, "|") {
			return nil, nil, fmt.Errorf("%w: a group name with |", ErrInvalid)
		}
		where = append(where, "groups_txt LIKE "+arg("%|"+escapeLike(q.Group)+"|%")+" ESCAPE '\\'")
	}
	if q.Status != 0 {
		where = append(where, "status = "+arg(q.Status))
	}
	if q.After != nil {
		at, id := arg(micros(q.After.At)), arg(q.After.ID)
		where = append(where, "(at_us < "+at+" OR (at_us = "+at+" AND id < "+id+"))")
	}
	query := `SELECT id, at_us, org_id, project_id, kind, node, user_id, groups_txt, cluster, namespace, verb, resource, name, status, body
		FROM audit_events WHERE ` + strings.Join(where, " AND ") + ` ORDER BY at_us DESC, id DESC LIMIT ` + arg(limit+1)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("store: audit: %w", err)
	}
	defer rows.Close()
	var out []*AuditEvent
	for rows.Next() {
		var e AuditEvent
		var at int64
		var groups, body string
		if err := rows.Scan(&e.ID, &at, &e.OrgID, &e.ProjectID, &e.Kind, &e.Node, &e.User, &groups, &e.Cluster, &e.Namespace, &e.Verb,
			&e.Resource, &e.Name, &e.Status, &body); err != nil {
			return nil, nil, fmt.Errorf("store: audit: %w", err)
		}
		e.At, e.Body = fromMicros(at), []byte(body)
		if groups != "" {
			e.Groups = strings.Split(strings.Trim(groups, "|"), "|")
		}
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("store: audit: %w", err)
	}
	if len(out) <= limit {
		return out, nil, nil
	}
	out = out[:limit]
	last := out[limit-1]
	return out, &AuditCursor{At: last.At, ID: last.ID}, nil
}

// escapeLike escapes LIKE's wildcards.
func escapeLike(s string) string {
	return strings.NewReplacer("\\", "\\\\", "%", "\\%", "_", "\\_").Replace(s)
}

// DeleteAuditBefore deletes indexed events and recordings' chunks older
// than t, at most batch a transaction, and returns how many went: the
// retention policy.
func (s *Store) DeleteAuditBefore(ctx context.Context, t time.Time, batch int) (int64, error) {
	if batch <= 0 {
		return 0, errors.New("store: a positive batch")
	}
	var total int64
	for {
		var n int64
		err := s.tx(ctx, func(tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, `DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE at_us < $1 LIMIT $2)`, micros(t), batch)
			if err != nil {
				return err
			}
			if n, err = res.RowsAffected(); err != nil {
				return err
			}
			res, err = tx.ExecContext(ctx, `DELETE FROM audit_recordings WHERE (org_id, recording_id, seq) IN
				(SELECT org_id, recording_id, seq FROM audit_recordings WHERE at_us < $1 LIMIT $2)`, micros(t), batch)
			if err != nil {
				return err
			}
			m, err := res.RowsAffected()
			n = max(n, m)
			return err
		})
		if err != nil {
			return total, fmt.Errorf("store: audit retention: %w", err)
		}
		total += n
		if n < int64(batch) {
			return total, nil
		}
	}
}

// RecordingChunk is a piece of a session's recording as the store keeps
// it (see audit.Chunk).
type RecordingChunk struct {
	OrgID, ProjectID string
	Recording        string
	Seq              int
	At               time.Time
	Cluster          string
	Final            bool
	Data             string
}

// Recording is a session's recording: its chunks joined in order.
type Recording struct {
	ID, ProjectID, Cluster string
	// Start is when its first chunk was written.
	Start time.Time
	Data  string
	// Complete says whether every chunk, the final one included, is here:
	// false while the session runs, or until the indexer has read it all.
	Complete bool
}

// InsertRecordingChunks keeps chunks of recordings; a chunk kept before
// is left as it is.
func (s *Store) InsertRecordingChunks(ctx context.Context, cs []*RecordingChunk) error {
	if len(cs) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, c := range cs {
			if c.Recording == "" || c.Seq < 0 {
				return fmt.Errorf("%w: a recording chunk without an id or with a negative seq", ErrInvalid)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO audit_recordings (org_id, recording_id, seq, at_us, project_id, cluster, final, data)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (org_id, recording_id, seq) DO NOTHING`,
				c.OrgID, c.Recording, c.Seq, micros(c.At), c.ProjectID, c.Cluster, c.Final, c.Data); err != nil {
				return err
			}
		}
		return nil
	})
}

// GetRecording returns an organization's recording by id.
func (s *Store) GetRecording(ctx context.Context, orgID, id string) (*Recording, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at_us, project_id, cluster, final, data FROM audit_recordings
		WHERE org_id = $1 AND recording_id = $2 ORDER BY seq`, orgID, id)
	if err != nil {
		return nil, fmt.Errorf("store: recording: %w", err)
	}
	defer rows.Close()
	rec := &Recording{ID: id}
	var data strings.Builder
	n, final := 0, false
	for rows.Next() {
		var seq int
		var at int64
		var c RecordingChunk
		if err := rows.Scan(&seq, &at, &c.ProjectID, &c.Cluster, &c.Final, &c.Data); err != nil {
			return nil, fmt.Errorf("store: recording: %w", err)
		}
		if n == 0 {
			rec.ProjectID, rec.Cluster, rec.Start = c.ProjectID, c.Cluster, fromMicros(at)
		}
		if seq != n {
			break // a gap: what follows is not yet here
		}
		data.WriteString(c.Data)
		final = c.Final
		n++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: recording: %w", err)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: recording %s", ErrNotFound, id)
	}
	rec.Data, rec.Complete = data.String(), final
	return rec, nil
}
