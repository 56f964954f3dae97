-- +goose Up
-- Session recordings (issue 12): which roles' exec and attach sessions a
-- cluster records ("*" for everyone; empty records none), comma-separated.
ALTER TABLE clusters ADD COLUMN record_roles TEXT NOT NULL DEFAULT '';

-- The recordings, as the audit indexer reads them from the topic: chunks
-- of asciicast v2, in seq order from 0; the last has final set. Keys lead
-- with org_id, as the audit events' do.
CREATE TABLE audit_recordings (
    org_id       TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at_us        BIGINT NOT NULL,
    project_id   TEXT NOT NULL,
    cluster      TEXT NOT NULL,
    final        BOOLEAN NOT NULL,
    data         TEXT NOT NULL,
    PRIMARY KEY (org_id, recording_id, seq)
);
CREATE INDEX audit_recordings_at ON audit_recordings (at_us);

-- +goose Down
DROP TABLE audit_recordings;
ALTER TABLE clusters DROP COLUMN record_roles;
