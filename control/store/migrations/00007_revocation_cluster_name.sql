-- +goose Up
-- A revocation of a cluster's agents names the cluster itself: agent
-- certificates carry the cluster's name, and a deleted cluster's row (which
-- the name was read from) is gone while its revocation stays in force.
ALTER TABLE revocations ADD COLUMN cluster_name TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE revocations DROP COLUMN cluster_name;
