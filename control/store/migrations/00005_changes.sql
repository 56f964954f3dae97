-- +goose Up
-- The change feed: every change of access writes rows here in the same
-- transaction as the change, and every node follows the table by polling
-- (CockroachDB has no LISTEN/NOTIFY). A row names one person whose access
-- changed (groups are expanded to their members when the change is
-- written), a revocation, or a change that may touch anyone ('all').
-- at_us is the writer's clock; followers read with a look-back window
-- (control.Follower) because a transaction commits after it took its time.
-- Rows older than an hour are pruned.
CREATE TABLE changes (
    id          TEXT PRIMARY KEY,
    at_us       BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL DEFAULT '',
    before_us   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX changes_at ON changes (at_us, id);
