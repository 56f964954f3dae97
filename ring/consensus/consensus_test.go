package consensus_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/ring"
	"github.com/gatehouse-dev/gatehouse/ring/consensus"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// raft-boltdb's and bbolt's background work ends with the process.
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft-boltdb/v2.(*BoltStore).runMetrics"))
}

var gossipKey = []byte("0123456789abcdef0123456789abcdef")

// node is one member: a ring, a peer endpoint and its consensus.
type node struct {
	name    string
	dir     string
	ring    *ring.Ring
	peers   *ring.Peers
	cons    atomic.Pointer[consensus.Consensus]
	applied atomic.Int64
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped bool
}

type group struct {
	t     *testing.T
	auth  *ca.Authority
	nodes []*node
	base  string
}

func newGroup(t *testing.T) *group {
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &group{t: t, auth: auth, base: t.TempDir()}
}

// start starts node name (again, on the same Raft directory, if it ran
// before) and joins it to the others.
func (g *group) start(name string, voters int) *node {
	t := g.t
	t.Helper()
	cert, err := g.auth.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, dir: filepath.Join(g.base, name)}
	var seeds []string
	for _, o := range g.nodes {
		if !o.stopped {
			seeds = append(seeds, o.ring.GossipAddr())
		}
	}
	n.peers, err = ring.NewPeers(ring.PeerConfig{Addr: "127.0.0.1:0", GetCertificate: func() *tls.Certificate { return &cert },
		Roots: g.auth.RootPool(), Verifier: g.auth, Local: tunnel.NewRegistry(nil),
		Protocols: map[string]func(*tls.Conn){consensus.ALPN: func(c *tls.Conn) {
			if cs := n.cons.Load(); cs != nil {
				cs.Handoff(c)
				return
			}
			c.Close()
		}}})
	if err != nil {
		t.Fatal(err)
	}
	gaddr, err := testenv.FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	rcfg := ring.DefaultConfig()
	rcfg.Name, rcfg.BindAddr, rcfg.Key, rcfg.Seeds = name, gaddr, gossipKey, seeds
	rcfg.JoinRetry = 200 * time.Millisecond
	rcfg.Meta = ring.Meta{PeerAddr: n.peers.Addr()}
	if os.Getenv("CONSENSUS_TEST_LOG") != "" {
		rcfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	if n.ring, err = ring.New(rcfg); err != nil {
		t.Fatal(err)
	}
	cfg := consensus.DefaultConfig()
	cfg.Ring, cfg.Dialer, cfg.Addr, cfg.Dir, cfg.Voters = n.ring, n.peers, n.peers.Addr(), n.dir, voters
	cfg.DeadGrace, cfg.ReconcileInterval = 2*time.Second, 200*time.Millisecond
	cfg.Apply = func([]byte) { n.applied.Add(1) }
	if os.Getenv("CONSENSUS_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
	}
	cs, err := consensus.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.cons.Store(cs)
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(2)
	go func() { defer n.wg.Done(); n.peers.Serve(ctx) }()
	go func() { defer n.wg.Done(); cs.Run(ctx) }()
	g.nodes = append(g.nodes, n)
	t.Cleanup(n.stop)
	return n
}

// stop stops the node gracefully (a leader transfers leadership first).
func (n *node) stop() {
	if n.stopped {
		return
	}
	n.stopped = true
	n.cons.Load().Close()
	n.ring.Leave(time.Second)
	n.cancel()
	n.peers.Close()
	n.wg.Wait()
	n.ring.Close()
}

// crash stops the node without a word: no leadership transfer, no leave
// (its connections close, as a killed process's would).
func (n *node) crash() {
	n.stopped = true
	n.cancel()
	n.peers.Close()
	n.ring.Close()
	n.cons.Load().Halt()
	n.wg.Wait()
}

// leader waits until the running nodes agree on one leader and returns it.
func (g *group) leader(timeout time.Duration) *node {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var lead *node
		agree := true
		for _, n := range g.nodes {
			if n.stopped {
				continue
			}
			name, _ := n.cons.Load().Leader()
			if name == "" {
				agree = false
				break
			}
			for _, o := range g.nodes {
				if o.name == name && !o.stopped {
					if lead != nil && lead != o {
						agree = false
					}
					lead = o
				}
			}
		}
		if agree && lead != nil && lead.cons.Load().IsLeader() {
			return lead
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.t.Fatal("no leader agreed on in time")
	return nil
}

func voters(t *testing.T, n *node) (voters, nonvoters []string) {
	t.Helper()
	servers, err := n.cons.Load().Servers()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, string(s.ID))
		} else {
			nonvoters = append(nonvoters, string(s.ID))
		}
	}
	return voters, nonvoters
}

// Five nodes, three voters: the first three by name form the group, the
// other two join as non-voters; a command reaches all five; the leader
// crashes and another leads within the bound; the dead voter is replaced
// after the grace period; a graceful stop of the leader hands leadership
// over.
func TestGroupFormsFailsOverAndReplacesVoters(t *testing.T) {
	g := newGroup(t)
	for i := range 5 {
		g.start(fmt.Sprintf("n%d", i+1), 3)
	}
	lead := g.leader(20 * time.Second)
	t.Logf("leader %s", lead.name)
	testenv.Eventually(t, 20*time.Second, testenv.Cond("3 voters and 2 non-voters", func() bool {
		v, nv := voters(t, lead)
		return len(v) == 3 && len(nv) == 2
	}))
	if err := lead.cons.Load().Apply([]byte("hello"), time.Second); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, testenv.Cond("the command applied on every node", func() bool {
		for _, n := range g.nodes {
			if n.applied.Load() != 1 {
				return false
			}
		}
		return true
	}))
	for _, n := range g.nodes {
		if n != lead {
			if err := n.cons.Load().Apply([]byte("x"), time.Second); err == nil {
				t.Fatalf("%s (a follower) applied a command", n.name)
			}
			break
		}
	}

	// The leader crashes: another leads.
	start := time.Now()
	lead.crash()
	next := g.leader(10 * time.Second)
	t.Logf("leader %s crashed; %s leads %s later", lead.name, next.name, time.Since(start).Round(time.Millisecond))
	// Past the grace period the dead voter is removed and a non-voter
	// promoted in its place.
	testenv.Eventually(t, 20*time.Second, testenv.Cond("the dead voter replaced", func() bool {
		v, nv := voters(t, next)
		for _, name := range append(v, nv...) {
			if name == lead.name {
				return false
			}
		}
		return len(v) == 3 && len(nv) == 1
	}))

	// A graceful stop of the leader transfers leadership at once.
	start = time.Now()
	next.stop()
	third := g.leader(10 * time.Second)
	t.Logf("leader %s stopped gracefully; %s leads %s later", next.name, third.name, time.Since(start).Round(time.Millisecond))
}

// A voter that loses its disk comes back (on another address) and rejoins
// by itself; then every node stops and starts again, on new addresses,
// and the group forms again from its disks.
func TestWipedVoterRejoinsAndGroupRestarts(t *testing.T) {
	g := newGroup(t)
	for i := range 3 {
		g.start(fmt.Sprintf("n%d", i+1), 3)
	}
	lead := g.leader(20 * time.Second)
	if err := lead.cons.Load().Apply([]byte("one"), time.Second); err != nil {
		t.Fatal(err)
	}
	var victim *node
	for _, n := range g.nodes {
		if n != lead {
			victim = n
			break
		}
	}
	victim.crash()
	if err := os.RemoveAll(victim.dir); err != nil {
		t.Fatal(err)
	}
	back := g.start(victim.name, 3)
	testenv.Eventually(t, 20*time.Second, testenv.Cond("the wiped voter caught up", func() bool {
		name, _ := back.cons.Load().Leader()
		return name != "" && back.applied.Load() == 1
	}))
	v, _ := voters(t, g.leader(10*time.Second))
	if len(v) != 3 || !slices.Contains(v, victim.name) {
		t.Fatalf("voters after the rejoin: %v", v)
	}

	// Everything stops, then starts again.
	var names []string
	for _, n := range g.nodes {
		if !n.stopped {
			names = append(names, n.name)
			n.stop()
		}
	}
	for _, name := range names {
		g.start(name, 3)
	}
	lead = g.leader(20 * time.Second)
	t.Logf("after a restart of all, %s leads", lead.name)
	if err := lead.cons.Load().Apply([]byte("two"), time.Second); err != nil {
		t.Fatal(err)
	}
}
