-- +goose Up
-- Secrets the nodes share, each sealed under the key-encryption key (the
-- KEK wraps it; the KEK is not in the store). "enrolment" proves that a
-- new node holds the KEK when it asks the Raft leader for its first
-- certificate (issue 11).
CREATE TABLE sealed_secrets (
    name       TEXT PRIMARY KEY,
    sealed     TEXT NOT NULL,
    kek_id     TEXT NOT NULL,
    created_us BIGINT NOT NULL
);

-- +goose Down
DROP TABLE sealed_secrets;
