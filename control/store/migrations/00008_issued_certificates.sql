-- +goose Up
-- Every certificate the CA signs, by serial, under a unique key: a serial
-- is never issued twice, whichever node led when it was signed (issue 11).
-- Rows past their expiry are pruned.
CREATE TABLE issued_certificates (
    serial       TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    issued_us    BIGINT NOT NULL,
    not_after_us BIGINT NOT NULL
);
CREATE INDEX issued_certificates_not_after ON issued_certificates (not_after_us);

-- +goose Down
DROP TABLE issued_certificates;
