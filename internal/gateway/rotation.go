package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/ring"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Rotation of the certificate authority (design 0006). `gatehouse ca
// rotate` adds a generation in standby to the store; the change feed (and
// the Raft log, for what the leader does) tells every node, which reloads
// its authority, trusts the new generation and gossips so (Meta.CATrust).
// The leader makes it active once every live node trusts it, and retires
// the generation before it after the overlap the rotation asked for. A
// node whose serving certificate another intermediate signed renews it; a
// changed trust bundle (a new root) goes to the agents over their tunnels.

// rotationInterval is how often the leader looks at a rotation's progress.
const rotationInterval = time.Second

// reloadCA loads the authority's generations again and acts on what
// changed. Reloads are serialized.
func (g *Gateway) reloadCA(ctx context.Context) error {
	g.caMu.Lock()
	defer g.caMu.Unlock()
	before := g.CA.RootPEM()
	active := g.CA.Active()
	if err := g.CA.Reload(ctx, g.cfg.KEK, g.cfg.Store); err != nil {
		return fmt.Errorf("gateway: reload the certificate authority: %w", err)
	}
	g.log.Info("certificate authority reloaded", "active", g.CA.Active(), "newest", g.CA.Newest(), "was", active)
	g.gossipCA(ctx)
	if c := g.cert.Load(); c != nil && !servedBy(c, g.CA) {
		g.wakeRenew()
	}
	if !bytes.Equal(before, g.CA.RootPEM()) {
		g.pushTrust("")
	}
	return nil
}

// gossipCA tells the other nodes which generations this node trusts and
// serves under, if that changed.
func (g *Gateway) gossipCA(ctx context.Context) {
	if g.ring == nil {
		return
	}
	newest, serving := g.CA.Newest(), g.servingGeneration()
	if m := g.ring.Meta(); m.CATrust == newest && m.CAServing == serving {
		return
	}
	if err := g.ring.SetMeta(ctx, func(m *ring.Meta) { m.CATrust, m.CAServing = newest, serving }); err != nil {
		g.log.Warn("certificate authority: generations not gossiped", "err", err)
	}
}

// servingGeneration is the generation whose intermediate signed this
// node's serving certificate (0: none trusted).
func (g *Gateway) servingGeneration() int64 {
	c := g.cert.Load()
	if c == nil || c.Leaf == nil {
		return 0
	}
	return g.CA.NodeGeneration(c.Leaf)
}

// servedBy reports whether c was signed by the intermediate that signs
// node certificates now.
func servedBy(c *tls.Certificate, auth *ca.Authority) bool {
	si := auth.ServingIntermediate()
	return c.Leaf != nil && bytes.Equal(c.Leaf.RawIssuer, si.RawSubject) && bytes.Equal(c.Leaf.AuthorityKeyId, si.SubjectKeyId)
}

func (g *Gateway) wakeRenew() {
	select {
	case g.renewNow <- struct{}{}:
	default:
	}
}

// pushTrust queues the trust bundle for cluster's agent, or every agent
// here if cluster is "".
func (g *Gateway) pushTrust(cluster string) {
	select {
	case g.trustQueue <- cluster:
	default:
		g.log.Warn("certificate authority: trust bundle queue full", "cluster", cluster)
	}
}

// trustLoop sends the trust bundle to the agents queued by pushTrust,
// until ctx ends. An agent connecting while a rotation is under way gets
// it too (tunnelBook.TunnelUp), so that one offline when it began has the
// new root before the old one retires.
func (g *Gateway) trustLoop(ctx context.Context) {
	for {
		var cluster string
		select {
		case <-ctx.Done():
			return
		case cluster = <-g.trustQueue:
		}
		clusters := []string{cluster}
		if cluster == "" {
			clusters = g.Registry.Clusters()
		}
		bundle := string(g.CA.RootPEM())
		for _, cl := range clusters {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := g.Registry.Control(cctx, cl, &tunnel.Control{RequestID: "trust", Op: tunnel.OpTrust, Trust: bundle})
			cancel()
			if err != nil {
				g.log.Warn("certificate authority: the trust bundle did not reach an agent", "cluster", cl, "err", err)
				continue
			}
			g.log.Info("certificate authority: trust bundle sent to an agent", "cluster", cl)
		}
	}
}

// rotationLoop moves a rotation on while this node leads and signs, until
// ctx ends.
func (g *Gateway) rotationLoop(ctx context.Context) {
	every(ctx, rotationInterval, func() {
		// The Raft leader, or a node alone.
		if g.CA.Sealed() || (g.cons != nil && !g.cons.IsLeader()) {
			return
		}
		if err := g.advanceRotation(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("certificate authority: rotation not moved on; trying again", "err", err)
		}
	})
}

// advanceRotation makes a standby generation active once every live node
// trusts it, and retires a retiring one whose overlap has passed.
func (g *Gateway) advanceRotation(ctx context.Context) error {
	now := g.now()
	for _, gen := range g.CA.Generations() {
		switch gen.Phase {
		case ca.PhaseStandby:
			if !g.auditedStandby[gen.Number] {
				g.auditedStandby[gen.Number] = true
				g.auditCA("ca.rotation.standby", gen, "")
			}
			if missing := g.notTrusting(gen.Number); len(missing) > 0 {
				continue
			}
			retire := now.Add(gen.Overlap)
			if err := g.cfg.Store.ActivateCAGeneration(ctx, gen.Number, retire); err != nil {
				return err
			}
			g.log.Info("certificate authority: generation active", "generation", gen.Number, "newRoot", gen.NewRoot, "previousRetiresAfter", retire)
			g.auditCA("ca.rotation.active", gen, "the generation before retires after "+retire.UTC().Format(time.RFC3339))
			if err := g.caChanged(ctx, gen.Number); err != nil {
				return err
			}
		case ca.PhaseRetiring:
			if now.Before(gen.RetireAfter) {
				continue
			}
			if err := g.cfg.Store.SunsetCAGeneration(ctx, gen.Number); err != nil {
				return err
			}
			g.log.Info("certificate authority: generation at sunset; the nodes move their serving certificates off it", "generation", gen.Number)
			g.auditCA("ca.rotation.sunset", gen, "")
			if err := g.caChanged(ctx, gen.Number); err != nil {
				return err
			}
		case ca.PhaseSunset:
			if serving := g.servingUnder(gen.Number); len(serving) > 0 {
				continue
			}
			if err := g.cfg.Store.RetireCAGeneration(ctx, gen.Number); err != nil {
				return err
			}
			g.log.Info("certificate authority: generation retired", "generation", gen.Number)
			g.auditCA("ca.rotation.retired", gen, "")
			if err := g.caChanged(ctx, gen.Number); err != nil {
				return err
			}
		}
	}
	return nil
}

// notTrusting returns the live members that do not yet trust generation
// n (their gossip says an older newest).
func (g *Gateway) notTrusting(n int64) []string {
	if g.ring == nil {
		if g.CA.Newest() < n {
			return []string{g.cfg.Node.Name}
		}
		return nil
	}
	var out []string
	for _, m := range g.ring.Members() {
		if m.Meta.CATrust < n {
			out = append(out, m.Name)
		}
	}
	return out
}

// servingUnder returns the live members whose serving certificate
// generation n signed.
func (g *Gateway) servingUnder(n int64) []string {
	if g.ring == nil {
		if g.servingGeneration() == n {
			return []string{g.cfg.Node.Name}
		}
		return nil
	}
	var out []string
	for _, m := range g.ring.Members() {
		if m.Meta.CAServing == n {
			out = append(out, m.Name)
		}
	}
	return out
}

// caChanged reloads this node's authority after a phase it moved, and
// tells the other nodes at once through the Raft log (the change feed
// tells them too).
func (g *Gateway) caChanged(ctx context.Context, n int64) error {
	if err := g.reloadCA(ctx); err != nil {
		return err
	}
	g.broadcast(ctx, store.Change{Kind: store.ChangeCA, Subject: fmt.Sprint(n)})
	return nil
}

// auditCA writes a rotation's phase to the audit stream.
func (g *Gateway) auditCA(action string, gen ca.Generation, detail string) {
	kind := "intermediates"
	if gen.NewRoot {
		kind = "root"
	}
	d := "rotation of the " + kind + "; root sha256 " + gen.RootFingerprint
	if detail != "" {
		d += "; " + detail
	}
	g.auditSystem(action, fmt.Sprintf("ca/generation/%d", gen.Number), "", d)
}

// CAGenerations implements api.CAView: the generations this node trusts.
func (g *Gateway) CAGenerations() []apitypes.CAGeneration {
	var out []apitypes.CAGeneration
	for _, gen := range g.CA.Generations() {
		cg := apitypes.CAGeneration{Number: gen.Number, Phase: gen.Phase, NewRoot: gen.NewRoot, Created: gen.Created.UTC(),
			RootFingerprint: gen.RootFingerprint, Overlap: gen.Overlap.String()}
		if !gen.RetireAfter.IsZero() {
			t := gen.RetireAfter.UTC()
			cg.RetireAfter = &t
		}
		switch gen.Phase {
		case ca.PhaseStandby:
			cg.Waiting = g.notTrusting(gen.Number)
		case ca.PhaseSunset:
			cg.Waiting = g.servingUnder(gen.Number)
		}
		out = append(out, cg)
	}
	return out
}
