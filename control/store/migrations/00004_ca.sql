-- +goose Up
-- The certificate authority's durable state, shared by every node: one row
-- per key (the root; the users, agents and nodes intermediates) and
-- generation. Private keys are never stored in the clear: sealed_key is an
-- envelope (a data key seals the PKCS#8 key with AES-256-GCM; the
-- key-encryption key, which is not in the store, wraps the data key),
-- base64. kek_id names the KEK, never the key.
CREATE TABLE ca_keys (
    generation  BIGINT NOT NULL,
    role        TEXT NOT NULL,
    cert_pem    TEXT NOT NULL,
    sealed_key  TEXT NOT NULL,
    kek_id      TEXT NOT NULL,
    created_us  BIGINT NOT NULL,
    PRIMARY KEY (generation, role)
);
