// Package control owns Gatehouse's configuration and decisions: the store
// (CockroachDB through pgx and cockroach-go, an embedded store for single-node
// use), authorization policy (Casbin over organizations, projects,
// namespaces and roles), identity (Ory Kratos sessions, SSO group mapping,
// API tokens), the certificate authority (run by the Raft-elected leader) and
// the REST API.
//
// Nothing lives here yet; see docs/design/0001-architecture.md.
package control
