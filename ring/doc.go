// Package ring owns gateway cluster membership and tunnel placement.
//
// Nodes find each other with hashicorp/memberlist; a consistent hash over the
// live members (rendezvous hashing with bounded load) names the node that
// holds each cluster agent's tunnel, so every node can answer "who owns
// cluster X?" without asking anyone. Requests that arrive at a node that does
// not own the tunnel are forwarded to the owner over an mutually
// authenticated node-to-node stream. The gateway consumes this package
// through a small Locator interface, so a single node works without it.
//
// Nothing lives here yet; see docs/design/0001-architecture.md.
package ring
