// Package consensus elects one node of the gateway cluster to lead, with
// hashicorp/raft: the leader runs the certificate authority (issue 11).
// Raft runs over the node-to-node port (its own TLS application protocol,
// mutual TLS with node certificates), its servers are the ring's members,
// and the voters among them are kept to a configured number from the
// ring's view, as Consul's autopilot does: members join as non-voters and
// are promoted while voters are missing, and a voter dead past a grace
// period is removed and replaced.
//
// Raft's log carries only what must reach every node at once (the
// application's commands, through Apply); the durable truth stays in the
// store, so that a node whose disk is wiped, or a whole cluster restarted
// on empty disks, forms again without manual steps. Design 0006.
package consensus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/ring"
)

// ALPN is the TLS application protocol of Raft's connections between
// nodes, on the peer port.
const ALPN = "gatehouse-raft/1"

// Errors.
var (
	// ErrNotLeader: the node does not lead; ask the leader.
	ErrNotLeader = errors.New("consensus: not the leader")
	// ErrClosed: Close has been called.
	ErrClosed = errors.New("consensus: closed")
)

// Ring is what consensus needs of the gateway cluster's membership:
// *ring.Ring implements it.
type Ring interface {
	Name() string
	Members() []ring.Member
	Meta() ring.Meta
	SetMeta(ctx context.Context, fn func(*ring.Meta)) error
}

// Dialer opens connections to other nodes' peer ports for Raft:
// *ring.Peers implements it.
type Dialer interface {
	DialProtocol(ctx context.Context, addr, alpn string) (*tls.Conn, error)
}

// Config configures a Consensus.
type Config struct {
	// Ring is the gateway cluster's membership; members' peer addresses are
	// their Raft addresses and their names their Raft ids.
	Ring Ring
	// Dialer connects to other nodes (ring.Peers); Handoff receives the
	// connections that reach this node (give it to the peers' Protocols
	// under ALPN).
	Dialer Dialer
	// Addr is this node's peer address, as the others reach it.
	Addr string
	// Dir holds Raft's log, stable store and snapshots.
	Dir string
	// Voters is how many voters the group keeps (3 or 5; 1 for a node
	// alone). Other members are non-voters: they follow, and stand by.
	Voters int
	// BootstrapExpect is how many members must be seen, none of them with
	// Raft state, before a new group forms; zero means Voters.
	BootstrapExpect int
	// DeadGrace is how long a member may be dead before the leader removes
	// it from the group (a voter is then replaced).
	DeadGrace time.Duration
	// Apply receives each command committed to the log, on every node, in
	// order; nil ignores them.
	Apply func(cmd []byte)
	// HeartbeatTimeout and ElectionTimeout are Raft's; LeaderLeaseTimeout
	// bounds how long a leader that lost contact keeps leading.
	HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout time.Duration
	// ReconcileInterval is how often the leader aligns the group with the
	// ring.
	ReconcileInterval time.Duration
	Logger            *slog.Logger
}

// DefaultConfig returns 3 voters, half-second Raft timeouts and a 30 s
// grace for the dead.
//
// Raft's defaults (1 s heartbeat and election timeouts) fail over in
// 1.3-2.6 s here, and 200 ms settings in 0.3-0.6 s. Half a second keeps
// failover near one second, within the 2 s that signing may pause, while a
// busy 2-core node that misses a heartbeat by a few hundred milliseconds
// does not start an election.
func DefaultConfig() Config {
	return Config{
		Voters: 3, DeadGrace: 30 * time.Second,
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond, ReconcileInterval: time.Second,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Ring == nil || c.Dialer == nil:
		return errors.New("consensus: Ring and Dialer are required")
	case c.Addr == "":
		return errors.New("consensus: Addr is required")
	case c.Dir == "":
		return errors.New("consensus: Dir is required")
	case c.Voters < 1 || c.Voters > 9:
		return fmt.Errorf("consensus: Voters %d: from 1 to 9", c.Voters)
	case c.BootstrapExpect < 0:
		return errors.New("consensus: BootstrapExpect must not be negative")
	case c.HeartbeatTimeout <= 0 || c.ElectionTimeout <= 0 || c.LeaderLeaseTimeout <= 0 || c.LeaderLeaseTimeout > c.HeartbeatTimeout:
		return errors.New("consensus: timeouts must be positive, the lease at most the heartbeat timeout")
	case c.DeadGrace <= 0 || c.ReconcileInterval <= 0:
		return errors.New("consensus: DeadGrace and ReconcileInterval must be positive")
	}
	return nil
}

// Consensus is this node's place in the Raft group.
type Consensus struct {
	cfg   Config
	log   *slog.Logger
	raft  *raft.Raft
	trans *raft.NetworkTransport
	layer *streamLayer
	store *raftboltdb.BoltStore
	snaps raft.SnapshotStore
	id    raft.ServerID

	leaderChanges prometheus.Counter
	applyLatency  prometheus.Histogram

	mu     sync.Mutex           // guards seen
	seen   map[string]time.Time // when the leader first saw a member dead
	obs    *raft.Observer
	obsCh  chan raft.Observation
	stop   chan struct{}
	wg     sync.WaitGroup
	closed sync.Once
	err    error
}

// New opens Raft's state in Dir and starts Raft. Run then forms or joins
// the group and keeps it aligned with the ring.
func New(cfg Config) (*Consensus, error) {
	if cfg.BootstrapExpect == 0 {
		cfg.BootstrapExpect = cfg.Voters
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("consensus: %w", err)
	}
	c := &Consensus{cfg: cfg, log: cfg.Logger, id: raft.ServerID(cfg.Ring.Name()), seen: map[string]time.Time{}, stop: make(chan struct{})}
	hlog := hclog.FromStandardLogger(slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug), &hclog.LoggerOptions{Name: "raft", Level: hclog.Debug})
	var err error
	if c.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")}); err != nil {
		return nil, fmt.Errorf("consensus: log store: %w", err)
	}
	if c.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog); err != nil {
		c.store.Close()
		return nil, fmt.Errorf("consensus: snapshots: %w", err)
	}
	c.layer = newStreamLayer(cfg.Addr, cfg.Dialer)
	c.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: c.layer, MaxPool: 3, Timeout: 5 * time.Second, Logger: hlog,
		ServerAddressProvider: addressBook{cfg.Ring}})
	rc := raft.DefaultConfig()
	rc.LocalID = c.id
	rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout
	rc.CommitTimeout = 20 * time.Millisecond
	rc.Logger = hlog
	// Snapshots hold nothing but the log's position (fsm): keep the log
	// short.
	rc.SnapshotThreshold, rc.TrailingLogs = 1024, 1024
	if c.raft, err = raft.NewRaft(rc, &fsm{apply: cfg.Apply}, c.store, c.store, c.snaps, c.trans); err != nil {
		c.trans.Close()
		c.store.Close()
		return nil, fmt.Errorf("consensus: %w", err)
	}
	c.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_raft_leader_changes_total",
		Help: "Changes of the Raft group's leader seen by this node.",
	})
	c.applyLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "gatehouse_raft_apply_seconds",
		Help: "Time from Apply on the leader to the command's commit (commit latency).",
		// From a tenth of a millisecond to a few seconds.
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 13),
	})
	c.obsCh = make(chan raft.Observation, 16)
	c.obs = raft.NewObserver(c.obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	c.raft.RegisterObserver(c.obs)
	return c, nil
}

// Handoff takes a Raft connection that reached this node (register it as
// the peers' Protocols[ALPN]).
func (c *Consensus) Handoff(conn *tls.Conn) { c.layer.handoff(conn) }

// Run forms or joins the group, then, while this node leads, keeps the
// group aligned with the ring (every ReconcileInterval, and at each change
// of leader), until ctx ends or Close.
func (c *Consensus) Run(ctx context.Context) error {
	c.wg.Add(1)
	defer c.wg.Done()
	has, err := raft.HasExistingState(c.store, c.store, c.snaps)
	if err != nil {
		return fmt.Errorf("consensus: %w", err)
	}
	if has {
		c.markState(ctx)
	}
	t := time.NewTicker(c.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if !has {
			if has, err = c.maybeBootstrap(ctx); err != nil {
				c.log.Warn("consensus: bootstrap", "err", err)
			}
		}
		if c.IsLeader() {
			c.reconcile()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.stop:
			return nil
		case <-t.C:
		case <-c.obsCh:
			c.leaderChanges.Inc()
		}
		// A node added by the leader has state from then on.
		if !has && c.raft.Leader() != "" {
			has = true
			c.markState(ctx)
		}
	}
}

// markState gossips that this node holds Raft state.
func (c *Consensus) markState(ctx context.Context) {
	if c.cfg.Ring.Meta().Consensus {
		return
	}
	if err := c.cfg.Ring.SetMeta(ctx, func(m *ring.Meta) { m.Consensus = true }); err != nil {
		c.log.Warn("consensus: state flag not gossiped", "err", err)
	}
}

// maybeBootstrap forms a new group if this node has no Raft state, sees at
// least BootstrapExpect members, none of which has any, and is among the
// first Voters of them by name; the others bootstrap the same
// configuration, which Raft accepts (the servers agree on it). A member
// with state means a group exists: this node waits to be added.
func (c *Consensus) maybeBootstrap(ctx context.Context) (bool, error) {
	members := c.cfg.Ring.Members()
	var ready []ring.Member
	for _, m := range members {
		if m.Meta.Consensus {
			return false, nil // a group exists; its leader adds this node
		}
		if m.Meta.PeerAddr != "" && !m.Meta.Draining {
			ready = append(ready, m)
		}
	}
	if len(ready) < c.cfg.BootstrapExpect {
		return false, nil
	}
	slices.SortFunc(ready, func(a, b ring.Member) int { return strings.Compare(a.Name, b.Name) })
	voters := ready[:min(c.cfg.Voters, len(ready))]
	if !slices.ContainsFunc(voters, func(m ring.Member) bool { return m.Name == string(c.id) }) {
		return false, nil // not a first voter: added by the leader
	}
	var conf raft.Configuration
	for _, m := range voters {
		addr := m.Meta.PeerAddr
		if m.Name == string(c.id) {
			addr = c.cfg.Addr
		}
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(addr)})
	}
	c.log.Info("consensus: forming a new group", "voters", len(conf.Servers))
	if err := c.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return false, err
	}
	c.markState(ctx)
	return true, nil
}

// reconcile, on the leader, aligns the group with the ring: live members
// join as non-voters, non-voters are promoted while voters are missing,
// and members dead for DeadGrace are removed.
func (c *Consensus) reconcile() {
	fut := c.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return
	}
	conf := fut.Configuration()
	alive := map[string]ring.Member{}
	for _, m := range c.cfg.Ring.Members() {
		if m.Meta.PeerAddr != "" {
			alive[m.Name] = m
		}
	}
	now := time.Now()
	in := map[string]raft.Server{}
	voters := 0
	for _, s := range conf.Servers {
		in[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// The gone.
	for _, s := range conf.Servers {
		name := string(s.ID)
		if s.ID == c.id {
			continue
		}
		if _, ok := alive[name]; ok {
			delete(c.seen, name) // a draining one too: it may be restarting
			continue
		}
		first, ok := c.seen[name]
		if !ok {
			c.seen[name] = now
			continue
		}
		if now.Sub(first) < c.cfg.DeadGrace {
			continue
		}
		c.log.Warn("consensus: removing a member dead past the grace period", "member", name, "voter", s.Suffrage == raft.Voter)
		if err := c.raft.RemoveServer(s.ID, 0, 0).Error(); err != nil {
			c.log.Warn("consensus: remove", "member", name, "err", err)
			continue
		}
		delete(c.seen, name)
		if s.Suffrage == raft.Voter {
			voters--
		}
	}
	// The new. A member back on another address stays as it is: the
	// transport finds every server's current address in the ring
	// (addressBook). (Re-adding it with its new address would also race in
	// raft v1.7.2, which reads a follower's peer unlocked while a
	// configuration change rewrites it.)
	names := make([]string, 0, len(alive))
	for name := range alive {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		m := alive[name]
		if _, ok := in[name]; ok || raft.ServerID(name) == c.id {
			continue
		}
		if err := c.raft.AddNonvoter(raft.ServerID(name), raft.ServerAddress(m.Meta.PeerAddr), 0, 0).Error(); err != nil {
			c.log.Warn("consensus: add", "member", name, "err", err)
			continue
		}
		c.log.Info("consensus: member added", "member", name, "addr", m.Meta.PeerAddr)
		in[name] = raft.Server{ID: raft.ServerID(name), Address: raft.ServerAddress(m.Meta.PeerAddr), Suffrage: raft.Nonvoter}
	}
	// Promotions while voters are missing: live non-voters, by name.
	for _, name := range names {
		if voters >= c.cfg.Voters {
			break
		}
		s, ok := in[name]
		if !ok || s.Suffrage == raft.Voter || alive[name].Meta.Draining {
			continue
		}
		if err := c.raft.AddVoter(s.ID, s.Address, 0, 0).Error(); err != nil {
			c.log.Warn("consensus: promote", "member", name, "err", err)
			continue
		}
		c.log.Info("consensus: member promoted to voter", "member", name)
		voters++
	}
}

// IsLeader reports whether this node leads now.
func (c *Consensus) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the leader's name and address, or empty strings while
// there is none.
func (c *Consensus) Leader() (name, addr string) {
	a, id := c.raft.LeaderWithID()
	return string(id), string(a)
}

// LeaderCh receives true when this node becomes the leader and false when
// it stops being one (raft's own channel: one reader).
func (c *Consensus) LeaderCh() <-chan bool { return c.raft.LeaderCh() }

// Apply commits cmd to the log; every node's Config.Apply receives it. It
// fails with ErrNotLeader on a follower.
func (c *Consensus) Apply(cmd []byte, timeout time.Duration) error {
	start := time.Now()
	err := c.raft.Apply(cmd, timeout).Error()
	if err == nil {
		c.applyLatency.Observe(time.Since(start).Seconds())
	}
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	}
	return err
}

// Servers returns the group's configuration: each server's name, address
// and whether it votes.
func (c *Consensus) Servers() ([]raft.Server, error) {
	fut := c.raft.GetConfiguration()
	if err := fut.Error(); err != nil {
		return nil, err
	}
	return fut.Configuration().Servers, nil
}

// Roles returns each server's place in the group by name: "leader",
// "voter" or "non-voter".
func (c *Consensus) Roles() map[string]string {
	servers, err := c.Servers()
	if err != nil {
		return nil
	}
	leader, _ := c.Leader()
	roles := make(map[string]string, len(servers))
	for _, s := range servers {
		switch {
		case string(s.ID) == leader:
			roles[string(s.ID)] = "leader"
		case s.Suffrage == raft.Voter:
			roles[string(s.ID)] = "voter"
		default:
			roles[string(s.ID)] = "non-voter"
		}
	}
	return roles
}

// Collectors returns the group's Prometheus metrics: this node's state,
// term and indexes, its last contact with the leader, leader changes and
// commit latency.
func (c *Consensus) Collectors() []prometheus.Collector {
	stat := func(key string) float64 {
		v, _ := strconv.ParseFloat(c.raft.Stats()[key], 64)
		return v
	}
	gauge := func(name, help string, fn func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn)
	}
	return []prometheus.Collector{
		c.leaderChanges, c.applyLatency,
		gauge("gatehouse_raft_leader", "1 while this node leads the Raft group.", func() float64 {
			if c.IsLeader() {
				return 1
			}
			return 0
		}),
		gauge("gatehouse_raft_voter", "1 while this node votes in the Raft group.", func() float64 {
			if r := c.Roles()[string(c.id)]; r == "leader" || r == "voter" {
				return 1
			}
			return 0
		}),
		gauge("gatehouse_raft_term", "The Raft group's current term, as this node knows it.", func() float64 { return stat("term") }),
		gauge("gatehouse_raft_commit_index", "The last log index this node knows committed.", func() float64 { return stat("commit_index") }),
		gauge("gatehouse_raft_applied_index", "The last log index this node applied.", func() float64 { return stat("applied_index") }),
		gauge("gatehouse_raft_last_contact_seconds", "Since this node last heard from the leader (0 on the leader; -1: never).", func() float64 {
			switch v := c.raft.Stats()["last_contact"]; v {
			case "0":
				return 0
			case "never", "":
				return -1
			default:
				d, _ := time.ParseDuration(v)
				return d.Seconds()
			}
		}),
	}
}

// Stats returns Raft's own figures (state, term, indexes, last contact).
func (c *Consensus) Stats() map[string]string { return c.raft.Stats() }

// Close leaves gracefully: a leader first hands leadership to another
// voter, so that signing pauses for a hand-over rather than an election.
// Raft's state stays on disk for the node's return. It is idempotent.
func (c *Consensus) Close() error {
	c.shutdown(true)
	return c.err
}

// shutdown stops the group's goroutines, Raft and its store, once; a
// leader first hands leadership over if transfer.
func (c *Consensus) shutdown(transfer bool) {
	c.closed.Do(func() {
		close(c.stop)
		if transfer && c.IsLeader() {
			if err := c.raft.LeadershipTransfer().Error(); err != nil {
				c.log.Warn("consensus: leadership not transferred", "err", err)
			} else {
				c.log.Info("consensus: leadership transferred before stopping")
			}
		}
		c.raft.DeregisterObserver(c.obs)
		c.err = c.raft.Shutdown().Error()
		c.trans.Close()
		c.wg.Wait()
		if err := c.store.Close(); err != nil && c.err == nil {
			c.err = err
		}
	})
}

// addressBook finds a server's current address in the ring: a node that
// comes back on another address (a rescheduled pod) is reached there,
// though Raft's configuration still names the old one until the leader
// updates it.
type addressBook struct{ r Ring }

func (b addressBook) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	for _, m := range b.r.Members() {
		if m.Name == string(id) && m.Meta.PeerAddr != "" {
			return raft.ServerAddress(m.Meta.PeerAddr), nil
		}
	}
	return "", fmt.Errorf("consensus: %s is not a live member", id)
}

// StepDown hands leadership to another voter if this node leads (a
// graceful stop begins with it); it stays a member.
func (c *Consensus) StepDown() error {
	if !c.IsLeader() {
		return nil
	}
	return c.raft.LeadershipTransfer().Error()
}

// Halt stops at once, without handing leadership over: to the others it
// looks like a crash. Tests use it; a node uses Close.
func (c *Consensus) Halt() { c.shutdown(false) }

// fsm applies commands; its snapshots carry nothing (the store is the
// truth), only the log's position, which Raft keeps itself.
type fsm struct{ apply func([]byte) }

func (f *fsm) Apply(l *raft.Log) any {
	if f.apply != nil && l.Type == raft.LogCommand {
		f.apply(l.Data)
	}
	return nil
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return emptySnapshot{}, nil }

func (f *fsm) Restore(r io.ReadCloser) error { return r.Close() }

type emptySnapshot struct{}

func (emptySnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (emptySnapshot) Release()                             {}

// streamLayer is Raft's transport over the peer port: connections that
// reach this node come through handoff; outgoing ones through Dialer. It
// closes every connection it gave Raft when Raft closes it: Raft's
// NetworkTransport does not close its pool, and the goroutines serving
// the other ends would wait for ever.
type streamLayer struct {
	addr   tcpAddr
	dialer Dialer
	conns  chan net.Conn
	done   chan struct{}
	once   sync.Once

	mu   sync.Mutex // guards open and shut
	open map[net.Conn]bool
	shut bool
}

// track records c as open, or closes it if the layer is closed.
func (l *streamLayer) track(c net.Conn) (net.Conn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		c.Close()
		return nil, false
	}
	tc := &trackedConn{Conn: c, l: l}
	l.open[tc] = true
	return tc, true
}

type trackedConn struct {
	net.Conn
	l *streamLayer
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.open, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }

func newStreamLayer(addr string, d Dialer) *streamLayer {
	return &streamLayer{addr: tcpAddr(addr), dialer: d, conns: make(chan net.Conn), done: make(chan struct{}), open: map[net.Conn]bool{}}
}

func (l *streamLayer) handoff(c *tls.Conn) {
	tc, ok := l.track(c)
	if !ok {
		return
	}
	select {
	case l.conns <- tc:
	case <-l.done:
		tc.Close()
	}
}

func (l *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, ErrClosed
	}
}

func (l *streamLayer) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.mu.Lock()
		l.shut = true
		open := l.open
		l.open = map[net.Conn]bool{}
		l.mu.Unlock()
		for c := range open {
			c.(*trackedConn).Conn.Close()
		}
	})
	return nil
}

func (l *streamLayer) Addr() net.Addr { return l.addr }

func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := l.dialer.DialProtocol(ctx, string(address), ALPN)
	if err != nil {
		return nil, err
	}
	tc, ok := l.track(c)
	if !ok {
		return nil, ErrClosed
	}
	return tc, nil
}
