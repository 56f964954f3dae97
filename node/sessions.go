package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Invalidator is an optional side interface of Grants: one that caches
// answers forgets a person's when their access changes.
type Invalidator interface {
	Invalidate(user string)
}

// AllInvalidator is an optional side interface of Grants: one that caches
// answers forgets every one (a change that may touch anyone).
type AllInvalidator interface {
	InvalidateAll()
}

// Session describes a request in flight on this node: every request, and
// so every long-running watch, exec, attach and port-forward.
type Session struct {
	RequestID string
	User      string
	Groups    []string
	Serial    string // of the client certificate, hex
	Cluster   string
	// Request is what the request asks of the cluster: a change of the
	// person's grants that no longer covers it ends it.
	Request grant.Request
}

// sessions tracks this node's requests in flight so that a revocation can
// end them at once.
type sessions struct {
	mu   sync.Mutex // guards live
	live map[*liveSession]struct{}
}

type liveSession struct {
	Session
	cancel context.CancelFunc
}

// add registers s until the returned func is called; cancel ends it.
func (t *sessions) add(s Session, cancel context.CancelFunc) func() {
	ls := &liveSession{Session: s, cancel: cancel}
	t.mu.Lock()
	if t.live == nil {
		t.live = map[*liveSession]struct{}{}
	}
	t.live[ls] = struct{}{}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.live, ls)
		t.mu.Unlock()
	}
}

func (t *sessions) snapshot() []*liveSession {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*liveSession, 0, len(t.live))
	for ls := range t.live {
		out = append(out, ls)
	}
	return out
}

func (t *sessions) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.live)
}

// Sessions returns the requests in flight on this node.
func (n *Node) Sessions() []Session {
	var out []Session
	for _, ls := range n.sessions.snapshot() {
		out = append(out, ls.Session)
	}
	return out
}

// EndSessions ends every request in flight for which match is true - its
// client and its tunnel stream are closed - and returns how many it ended.
// Use it after revoking a certificate (match its serial) or a person.
func (n *Node) EndSessions(match func(Session) bool) int {
	ended := 0
	for _, ls := range n.sessions.snapshot() {
		if match(ls.Session) {
			ls.cancel()
			ended++
		}
	}
	if ended > 0 {
		n.log.Info("sessions ended", "count", ended)
	}
	return ended
}

// AccessChanged brings the node and the connected agents in line with a
// change to user's access (a grant added, narrowed, expired or revoked, or
// the person removed); groups are the person's groups now. For each cluster
// connected here it asks Grants again: their requests in flight that the
// new grants no longer cover are ended (all of them where nothing is left),
// and the agent deletes their service account and bindings, or makes their
// bindings match the new grants before their next request.
//
// The node refuses the person's next request on its own (grants are read on
// every request); AccessChanged is what makes the change reach live streams
// and the clusters' RBAC at once. The agents are told in parallel, each
// within ControlTimeout: AccessChanged returns when they have answered or
// that has passed, so one wedged agent cannot hold the caller.
func (n *Node) AccessChanged(ctx context.Context, user string, groups []string) error {
	if inv, ok := n.cfg.Grants.(Invalidator); ok {
		inv.Invalidate(user)
	}
	clusters := n.cfg.Registry.Clusters()
	for _, ls := range n.sessions.snapshot() {
		if ls.User == user && !slices.Contains(clusters, ls.Cluster) {
			clusters = append(clusters, ls.Cluster)
		}
	}
	var errs []error
	var controls []*tunnel.Control
	var where []string
	now := map[string][]grant.Grant{}
	for _, cluster := range clusters {
		grants, err := n.cfg.Grants.Grants(ctx, user, groups, cluster)
		if err != nil {
			errs = append(errs, fmt.Errorf("node: grants of %q on %q: %w", user, cluster, err))
			continue
		}
		now[cluster] = grants
		c := &tunnel.Control{RequestID: newRequestID(), Op: tunnel.OpSync, User: user, Grants: grants}
		if len(grants) == 0 {
			c = &tunnel.Control{RequestID: c.RequestID, Op: tunnel.OpRevoke, User: user}
		}
		if n.cfg.Registry.Connected(cluster) {
			controls, where = append(controls, c), append(where, cluster)
		}
	}
	// Live streams first: they are what a revoked person still holds.
	n.EndSessions(func(s Session) bool {
		grants, known := now[s.Cluster]
		return s.User == user && known && !grant.Covers(grants, s.Request)
	})
	errs = append(errs, n.fanOut(ctx, where, controls))
	return errors.Join(errs...)
}

// fanOut sends each control to its cluster's agent in parallel, each within
// ControlTimeout, and waits for them until they have answered, that
// timeout has passed, or ctx ends. The sends are the node's goroutines:
// Run waits for them at shutdown.
func (n *Node) fanOut(ctx context.Context, clusters []string, controls []*tunnel.Control) error {
	if len(controls) == 0 {
		return nil
	}
	n.bgMu.Lock()
	if n.bgStopped {
		n.bgMu.Unlock()
		return ErrStopped
	}
	n.bg.Add(len(controls))
	n.bgMu.Unlock()
	results := make(chan error, len(controls))
	for i, c := range controls {
		cluster := clusters[i]
		go func() {
			defer n.bg.Done()
			cctx, cancel := context.WithTimeout(n.bgCtx, n.cfg.ControlTimeout)
			defer cancel()
			err := n.cfg.Registry.Control(cctx, cluster, c)
			if err != nil {
				n.log.Warn("agent control failed", "cluster", cluster, "op", c.Op, "user", c.User, "err", err)
				err = fmt.Errorf("node: %s %q on %q: %w", c.Op, c.User, cluster, err)
			}
			results <- err
		}()
	}
	wait := time.NewTimer(n.cfg.ControlTimeout)
	defer wait.Stop()
	var errs []error
	for range controls {
		select {
		case err := <-results:
			errs = append(errs, err)
		case <-wait.C:
			return errors.Join(append(errs, fmt.Errorf("node: some agents did not answer within %s", n.cfg.ControlTimeout))...)
		case <-ctx.Done():
			return errors.Join(append(errs, ctx.Err())...)
		}
	}
	return errors.Join(errs...)
}

// AccessChangedAll looks again at every person with a request in flight
// here, after a change that may touch anyone (a cluster shared or
// deleted).
func (n *Node) AccessChangedAll(ctx context.Context) error {
	if inv, ok := n.cfg.Grants.(AllInvalidator); ok {
		inv.InvalidateAll()
	}
	users := map[string]bool{}
	for _, ls := range n.sessions.snapshot() {
		users[ls.User] = true
	}
	var errs []error
	for u := range users {
		errs = append(errs, n.AccessChanged(ctx, u, nil))
	}
	return errors.Join(errs...)
}

// RevokeUser ends every request in flight of user on this node and tells
// every connected agent to delete their service account and bindings. The
// caller has already made the person's certificates fail verification.
func (n *Node) RevokeUser(ctx context.Context, user string) error {
	if inv, ok := n.cfg.Grants.(Invalidator); ok {
		inv.Invalidate(user)
	}
	n.EndSessions(func(s Session) bool { return s.User == user })
	clusters := n.cfg.Registry.Clusters()
	controls := make([]*tunnel.Control, len(clusters))
	for i := range clusters {
		controls[i] = &tunnel.Control{RequestID: newRequestID(), Op: tunnel.OpRevoke, User: user}
	}
	return n.fanOut(ctx, clusters, controls)
}

// CertRevoker is the part of the CA that refuses revoked certificates.
// *ca.Authority implements it.
type CertRevoker interface {
	RevokeUser(user string, before time.Time)
	Revoke(serialHex string)
	RevokeAgents(cluster string, before time.Time)
}

// Revoker applies revocations on this node: the CA refuses the
// certificates, the node ends the sessions they opened, and the agents
// remove the person's service accounts. It implements api.Revoker.
type Revoker struct {
	CA   CertRevoker
	Node *Node
}

// RevokeUser refuses the person's certificates issued before before and
// ends everything they hold.
func (r *Revoker) RevokeUser(ctx context.Context, user string, before time.Time) error {
	r.CA.RevokeUser(user, before)
	return r.Node.RevokeUser(ctx, user)
}

// RevokeSerial refuses one certificate and ends its sessions.
func (r *Revoker) RevokeSerial(_ context.Context, serial string) error {
	r.CA.Revoke(serial)
	r.Node.EndSessions(func(s Session) bool { return strings.EqualFold(s.Serial, serial) })
	return nil
}

// RevokeAgents refuses the cluster's agent certificates issued before
// before and closes its tunnel here (a re-homed cluster's old agent).
func (r *Revoker) RevokeAgents(_ context.Context, cluster string, before time.Time) error {
	r.CA.RevokeAgents(cluster, before)
	r.Node.cfg.Registry.DisconnectIssuedBefore(cluster, before)
	return nil
}
