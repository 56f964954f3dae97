-- +goose Up
-- One physical cluster (its kube-system UID) is one Gatehouse cluster: a
-- second registration of the same fingerprint under another name is
-- refused (the store checks first, to say why; the index is the guarantee).
-- CockroachDB, PostgreSQL and SQLite all accept partial unique indexes.
CREATE UNIQUE INDEX clusters_fingerprint ON clusters (fingerprint) WHERE fingerprint <> '';

-- Revocations also name a cluster (every agent certificate of the cluster
-- issued before before_us: a re-homed cluster's old agent) or an API token
-- (every certificate minted through it).
ALTER TABLE revocations ADD COLUMN cluster_id TEXT NOT NULL DEFAULT '';
ALTER TABLE revocations ADD COLUMN token_id TEXT NOT NULL DEFAULT '';

