-- +goose Up
-- The phases of the certificate authority's generations (issue 11): a
-- rotation adds a generation in standby (trusted by every node, signing
-- nothing), the leader makes it active once every node trusts it (the one
-- before it retiring), and retires the old one after retire_after_us. A
-- retired generation's keys stay in ca_keys, no longer loaded. The
-- generation a store already holds is active.
CREATE TABLE ca_generations (
    generation      BIGINT PRIMARY KEY,
    phase           TEXT NOT NULL,
    new_root        BOOLEAN NOT NULL,
    created_us      BIGINT NOT NULL,
    changed_us      BIGINT NOT NULL,
    retire_after_us BIGINT NOT NULL,
    -- how long the generation before stays trusted once this one is active
    overlap_us      BIGINT NOT NULL
);
INSERT INTO ca_generations (generation, phase, new_root, created_us, changed_us, retire_after_us, overlap_us)
    SELECT generation, 'active', true, MIN(created_us), MIN(created_us), 0, 0 FROM ca_keys GROUP BY generation;

-- +goose Down
DROP TABLE ca_generations;
