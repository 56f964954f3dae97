// Package tunnel owns the protocol between a cluster's agent and the gateway,
// and the agent itself.
//
// The agent dials out (never in) with TLS 1.3 and its own short-lived client
// certificate, negotiates a versioned ALPN protocol and multiplexes streams
// over that one connection (hashicorp/yamux with a large window). Each stream
// carries one client request plus an authenticated frame naming the person it
// runs for; the agent executes it against the cluster's API server as that
// person's just-in-time service account.
//
// Nothing lives here yet; see docs/design/0001-architecture.md.
package tunnel
