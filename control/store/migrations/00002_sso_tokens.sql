-- +goose Up
-- The refresh token with which Gatehouse reads a person's current groups
-- from their SSO provider at each login. Kratos keeps only the token of the
-- registration; a provider that rotates refresh tokens spends it at the
-- first use, so the newest one lives here, sealed (AES-256-GCM with the
-- node's token key; the row's user and provider are the associated data).
-- source is the SHA-256 of the Kratos token it descends from: when the
-- person links the provider again, Kratos's new token wins.
CREATE TABLE sso_tokens (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    source      TEXT NOT NULL,
    sealed      TEXT NOT NULL,  -- base64
    updated_us  BIGINT NOT NULL,
    PRIMARY KEY (user_id, provider)
);
