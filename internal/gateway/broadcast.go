package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/ring/consensus"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// ApplyALPN is the TLS application protocol, on the peer port, of commands
// that a node asks the Raft leader to commit to the log (design 0006).
// Only nodes reach it: the peer port demands a node certificate.
const ApplyALPN = "gatehouse-apply/1"

// Frames of the apply protocol (tunnel frame encoding).
const (
	frameApply   tunnel.FrameType = 3 // a JSON command
	frameApplied tunnel.FrameType = 4 // a JSON applyResponse
)

// commandVersion is the version of command this node writes and reads.
const commandVersion = 1

// broadcastWait bounds how long a revocation waits for the Raft group to
// carry it to every node. Past it the change feed still does, within its
// poll interval; the request that revoked does not fail.
const broadcastWait = 2 * time.Second

// commandHistory is how old a command may be and still be applied. Raft
// replays the log since its last snapshot when a node starts; what older
// commands did is in the store, which the node loaded at start.
const commandHistory = time.Minute

// command is an entry of Raft's log: a change that every node applies at
// once. Every command is also in the store, whose change feed delivers it
// within its poll interval (100 ms by default) if the group cannot: Raft
// is the fast path, the store the truth (design 0006).
type command struct {
	V int `json:"v"`
	// Origin is the node that applied it first; it skips its own.
	Origin string    `json:"origin"`
	Stamp  time.Time `json:"stamp"`
	// Change is one of the store's revocation changes, or a change of the
	// certificate authority's generations.
	Change store.Change `json:"change"`
}

// validate refuses what no node writes: commands come from nodes, but a
// node may be newer, or broken.
func (c *command) validate() error {
	if c.V != commandVersion {
		return fmt.Errorf("gateway: command version %d (this node reads %d)", c.V, commandVersion)
	}
	switch c.Change.Kind {
	case store.ChangeRevokeSerial, store.ChangeRevokeUser, store.ChangeRevokeCluster, store.ChangeCA:
	default:
		return fmt.Errorf("gateway: command kind %q", c.Change.Kind)
	}
	if c.Change.Subject == "" || len(c.Change.Subject) > 256 || c.Origin == "" {
		return errors.New("gateway: a command names its subject and origin")
	}
	return nil
}

type applyResponse struct {
	Error     string `json:"error,omitempty"`
	NotLeader bool   `json:"notLeader,omitempty"`
}

// commandQueue is how many committed commands may wait to be applied on
// this node; past it a command is dropped, and the change feed delivers
// it.
const commandQueue = 256

// broadcastMetrics count how revocations reach this node.
type broadcastMetrics struct {
	applied *prometheus.CounterVec
	sent    *prometheus.CounterVec
}

func newBroadcastMetrics() *broadcastMetrics {
	return &broadcastMetrics{
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_changes_applied_total",
			Help: "Changes (revocations, grants) applied on this node, by the way they came: raft (the log), feed (the store's change feed); a change may come both ways.",
		}, []string{"via"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_raft_broadcasts_total",
			Help: "Revocations this node sent through the Raft group, by result (ok; failed: the change feed carries it).",
		}, []string{"result"}),
	}
}

func (m *broadcastMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.applied, m.sent}
}

// committed receives a command committed to the log (consensus.Config.Apply,
// on Raft's goroutine): it queues it for applyCommands and never blocks.
func (g *Gateway) committed(b []byte) {
	select {
	case g.commands <- b:
	default:
		g.log.Warn("consensus: command queue full; the change feed delivers the change")
	}
}

// applyCommands applies the queued commands, until ctx ends.
func (g *Gateway) applyCommands(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-g.commands:
			var c command
			if err := json.Unmarshal(b, &c); err != nil {
				g.log.Warn("consensus: unreadable command, ignored", "err", err)
				continue
			}
			if err := c.validate(); err != nil {
				g.log.Warn("consensus: command ignored", "err", err)
				continue
			}
			if c.Origin == g.cfg.Node.Name || g.now().Sub(c.Stamp) > commandHistory {
				continue
			}
			if err := (applier{g: g, via: "raft"}).ApplyChange(ctx, c.Change); err != nil {
				g.log.Warn("consensus: command not applied; the change feed retries", "kind", c.Change.Kind, "err", err)
			}
		}
	}
}

// broadcast carries a revocation this node has applied to every other node
// through the Raft log, waiting for a leader at most broadcastWait. A
// failure is logged, not returned: the change feed carries it too.
func (g *Gateway) broadcast(ctx context.Context, ch store.Change) {
	if g.cons == nil {
		return
	}
	// A caller that hangs up does not stop the revocation on its way.
	ctx = context.WithoutCancel(ctx)
	cmd := command{V: commandVersion, Origin: g.cfg.Node.Name, Stamp: g.now(), Change: ch}
	b, err := json.Marshal(&cmd)
	if err == nil {
		_, err = g.onLeader(ctx, broadcastWait, g.cons.IsLeader,
			func() error { return g.applyHere(b) },
			func(ctx context.Context, addr string) error { return g.applyRemote(ctx, addr, &cmd) })
	}
	if err != nil {
		g.broadcastMetrics.sent.WithLabelValues("failed").Inc()
		g.log.Warn("consensus: revocation not sent through the group; the change feed carries it", "kind", ch.Kind, "err", err)
		return
	}
	g.broadcastMetrics.sent.WithLabelValues("ok").Inc()
}

// applyHere commits b to the log on this node, the leader.
func (g *Gateway) applyHere(b []byte) error {
	err := g.cons.Apply(b, broadcastWait)
	if errors.Is(err, consensus.ErrNotLeader) {
		return retryableErr{err}
	}
	return err
}

// applyRemote asks the leader at addr to commit cmd.
func (g *Gateway) applyRemote(ctx context.Context, addr string, cmd *command) error {
	ctx, cancel := context.WithTimeout(ctx, broadcastWait)
	defer cancel()
	c, err := g.peers.DialProtocol(ctx, addr, ApplyALPN)
	if err != nil {
		return retryableErr{err}
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if err := tunnel.WriteJSON(c, frameApply, cmd); err != nil {
		return retryableErr{err}
	}
	var res applyResponse
	if err := tunnel.ReadJSON(c, frameApplied, &res); err != nil {
		return retryableErr{err}
	}
	if res.Error != "" {
		return remoteErr{msg: res.Error, notLeader: res.NotLeader}
	}
	return nil
}

// serveApply commits one node's command to the log (Peers.Protocols): the
// peer port has verified that it is a node.
func (g *Gateway) serveApply(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(broadcastWait + time.Second))
	var cmd command
	if err := tunnel.ReadJSON(c, frameApply, &cmd); err != nil {
		g.log.Warn("consensus: bad command from a node", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	var res applyResponse
	err := cmd.validate()
	if err == nil {
		var b []byte
		if b, err = json.Marshal(&cmd); err == nil {
			err = g.applyHere(b)
		}
	}
	if err != nil {
		res.Error, res.NotLeader = err.Error(), ca.Retryable(err)
	}
	tunnel.WriteJSON(c, frameApplied, &res)
}

// onLeader runs local while this node leads (leads), else remote against
// the Raft leader's peer address, within the wait and a second. While there is no leader, or the one
// asked no longer leads (a retryable error), it tries again every 100 ms
// for at most wait. It says where it ran: "local" or "leader".
func (g *Gateway) onLeader(ctx context.Context, wait time.Duration, leads func() bool, local func() error, remote func(ctx context.Context, addr string) error) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		var where string
		var err error
		if addr, ok := g.leaderPeerAddr(); ok {
			// A leader cut off by a partition does not answer at all: the
			// call ends a moment after the wait.
			rctx, cancel := context.WithDeadline(ctx, deadline.Add(time.Second))
			where, err = "leader", remote(rctx, addr)
			cancel()
		} else if leads() {
			where, err = "local", local()
		} else {
			err = retryableErr{ca.ErrNotLeader}
		}
		if err == nil || !ca.Retryable(err) {
			return where, err
		}
		if !time.Now().Before(deadline) {
			return "", fmt.Errorf("gateway: no leader within %s: %w", wait, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leaderPeerAddr is the Raft leader's current peer address, from the
// ring, unless this node leads or there is no leader.
func (g *Gateway) leaderPeerAddr() (string, bool) {
	name, _ := g.cons.Leader()
	if name == "" || name == g.ring.Name() {
		return "", false
	}
	for _, m := range g.ring.Members() {
		if m.Name == name && m.Meta.PeerAddr != "" {
			return m.Meta.PeerAddr, true
		}
	}
	return "", false
}

// clusterRevoker applies a revocation on this node, then carries it to
// every other node through the Raft group (the store's change feed carries
// it too). It implements api.Revoker and api.AgentRevoker.
type clusterRevoker struct{ g *Gateway }

var (
	_ api.Revoker      = clusterRevoker{}
	_ api.AgentRevoker = clusterRevoker{}
)

func (r clusterRevoker) RevokeUser(ctx context.Context, user string, before time.Time) error {
	err := r.g.revoker.RevokeUser(ctx, user, before)
	r.g.broadcast(ctx, store.Change{Kind: store.ChangeRevokeUser, Subject: user, Before: before})
	return err
}

func (r clusterRevoker) RevokeSerial(ctx context.Context, serial string) error {
	err := r.g.revoker.RevokeSerial(ctx, serial)
	r.g.broadcast(ctx, store.Change{Kind: store.ChangeRevokeSerial, Subject: serial})
	return err
}

func (r clusterRevoker) RevokeAgents(ctx context.Context, cluster string, before time.Time) error {
	err := r.g.revoker.RevokeAgents(ctx, cluster, before)
	r.g.broadcast(ctx, store.Change{Kind: store.ChangeRevokeCluster, Subject: cluster, Before: before})
	return err
}
