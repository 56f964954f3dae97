-- +goose Up
-- Audit events, indexed for search (issue 12): an indexer writes what it
-- reads from the audit topic. body is the event as written (JSON), for
-- export; the other columns are what searches filter on. org_id and
-- project_id come from the event's cluster when it was indexed (empty for
-- a node's own events). Indexes lead with org_id: searches are per
-- organization, and it spreads the time-ordered keys over ranges in
-- CockroachDB (a single time-ordered index would be one hot range).
CREATE TABLE audit_events (
    id         TEXT PRIMARY KEY,
    at_us      BIGINT NOT NULL,
    org_id     TEXT NOT NULL,
    project_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    node       TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    groups_txt TEXT NOT NULL,
    cluster    TEXT NOT NULL,
    namespace  TEXT NOT NULL,
    verb       TEXT NOT NULL,
    resource   TEXT NOT NULL,
    name       TEXT NOT NULL,
    status     INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX audit_events_org_at ON audit_events (org_id, at_us, id);
CREATE INDEX audit_events_user_at ON audit_events (org_id, user_id, at_us);
CREATE INDEX audit_events_cluster_at ON audit_events (org_id, cluster, at_us);

-- +goose Down
DROP TABLE audit_events;
