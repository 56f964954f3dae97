// Package ring owns gateway cluster membership and tunnel placement.
//
// Nodes find each other with hashicorp/memberlist (Ring: encrypted gossip,
// each node's metadata, failure detection tuned to about a second).
// Rendezvous hashing with bounded load over the live, non-draining members
// (Place) names the node that holds each cluster agent's tunnel, so every
// node can answer "who owns cluster X?" without asking anyone.
//
// Forwarding a request to the owner over node-to-node mTLS, and redirecting
// agents to it, come next (issue 10); the node reaches tunnels through its
// node.Tunnels interface, so a single node works without a ring.
package ring
