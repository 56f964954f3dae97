-- +goose Up
-- Gatehouse's configuration. This file runs unchanged on CockroachDB,
-- PostgreSQL and the embedded SQLite store, so it keeps to what all three
-- accept: TEXT keys made in Go (random, never sequences), BIGINT times in
-- Unix microseconds, TEXT holding JSON, no booleans, no triggers. Every
-- mutable row carries a version for optimistic concurrency.
-- Migrations are forward-only: a change is a new file, never an edit.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    cert_ttl_s  BIGINT NOT NULL DEFAULT 0,  -- default kubeconfig certificate lifetime; 0 = built-in
    max_ttl_s   BIGINT NOT NULL DEFAULT 0,  -- longest a member may ask for; 0 = built-in
    version     BIGINT NOT NULL DEFAULT 1,
    created_us  BIGINT NOT NULL
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    version     BIGINT NOT NULL DEFAULT 1,
    created_us  BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

-- A cluster's name is its id in paths (/k8s/NAME) and certificates, so it
-- is unique across the installation.
CREATE TABLE clusters (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL DEFAULT '',   -- kube-system UID, set at registration
    description TEXT NOT NULL DEFAULT '',
    version     BIGINT NOT NULL DEFAULT 1,
    created_us  BIGINT NOT NULL
);

-- Clusters shared with projects other than their own.
CREATE TABLE cluster_shares (
    cluster_id  TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (cluster_id, project_id)
);

-- People. kratos_id is empty until the first login of a person who was
-- provisioned by email (grants may exist before then).
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    email       TEXT NOT NULL UNIQUE,
    kratos_id   TEXT NOT NULL DEFAULT '',
    display     TEXT NOT NULL DEFAULT '',
    cert_ttl_s  BIGINT NOT NULL DEFAULT 0,
    version     BIGINT NOT NULL DEFAULT 1,
    created_us  BIGINT NOT NULL,
    last_login_us BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX users_kratos ON users (kratos_id);

CREATE TABLE groups_ (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    version     BIGINT NOT NULL DEFAULT 1,
    created_us  BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

-- source is 'local' (added by an admin) or 'idp' (from the identity
-- provider's groups claim, replaced at every login).
CREATE TABLE group_members (
    group_id    TEXT NOT NULL REFERENCES groups_ (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source      TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id, source)
);
CREATE INDEX group_members_user ON group_members (user_id);

-- IdP group names that mean membership of a Gatehouse group.
CREATE TABLE idp_group_maps (
    org_id      TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    idp_group   TEXT NOT NULL,
    group_id    TEXT NOT NULL REFERENCES groups_ (id) ON DELETE CASCADE,
    PRIMARY KEY (org_id, idp_group, group_id)
);

-- Custom roles (the built-in ones live in code, control/policy). rules is a
-- JSON array of Kubernetes PolicyRules; scope is the narrowest scope the
-- role may be bound at ('org', 'project', 'namespace').
CREATE TABLE roles (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    rules       TEXT NOT NULL DEFAULT '[]',
    description TEXT NOT NULL DEFAULT '',
    version     BIGINT NOT NULL DEFAULT 1,
    created_us  BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

-- Role bindings: a subject ('user' or 'group' and its id) holds a role (a
-- built-in name, or a custom role's name in the org) in a scope: the
-- organization, a project, or a namespace of a project's clusters.
-- expires_us 0 means no expiry.
CREATE TABLE role_bindings (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    subject_kind TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    role         TEXT NOT NULL,
    project_id   TEXT NOT NULL DEFAULT '',
    namespace    TEXT NOT NULL DEFAULT '',
    expires_us   BIGINT NOT NULL DEFAULT 0,
    created_by   TEXT NOT NULL DEFAULT '',
    version      BIGINT NOT NULL DEFAULT 1,
    created_us   BIGINT NOT NULL
);
CREATE INDEX role_bindings_subject ON role_bindings (subject_kind, subject_id);
CREATE INDEX role_bindings_expiry ON role_bindings (expires_us);

-- API tokens for automation. Only the SHA-256 of the secret is stored; the
-- token is shown once. roles is a JSON array of role names the token is
-- limited to (empty: the owner's access).
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    roles        TEXT NOT NULL DEFAULT '[]',
    expires_us   BIGINT NOT NULL,
    revoked_us   BIGINT NOT NULL DEFAULT 0,
    last_used_us BIGINT NOT NULL DEFAULT 0,
    created_us   BIGINT NOT NULL,
    UNIQUE (user_id, name)
);

-- Revocations: of one certificate (serial) or of everything a person held
-- before a moment (user_id, before_us). Kept until what they revoke has
-- expired (until_us).
CREATE TABLE revocations (
    id          TEXT PRIMARY KEY,
    serial      TEXT NOT NULL DEFAULT '',
    user_id     TEXT NOT NULL DEFAULT '',
    before_us   BIGINT NOT NULL DEFAULT 0,
    until_us    BIGINT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    created_us  BIGINT NOT NULL
);
CREATE INDEX revocations_serial ON revocations (serial);
CREATE INDEX revocations_user ON revocations (user_id);

-- Bootstrap tokens for agent registration: one-time, hashed, expiring,
-- bound to their cluster and, once used, to the fingerprint that used it.
CREATE TABLE bootstrap_tokens (
    id           TEXT PRIMARY KEY,
    cluster_id   TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    secret_hash  TEXT NOT NULL,
    expires_us   BIGINT NOT NULL,
    used_by      TEXT NOT NULL DEFAULT '',
    used_us      BIGINT NOT NULL DEFAULT 0,
    created_us   BIGINT NOT NULL
);
CREATE INDEX bootstrap_tokens_cluster ON bootstrap_tokens (cluster_id);
