// Package gateway assembles a gateway node from its parts: the store, the
// policy, the certificate authority (loaded from the store and unsealed
// with the key-encryption key), the tunnel registry, the node, the REST API,
// the expirer of time-bound grants and the renewal of the node's serving
// certificate. It is the one composition root: `gatehouse node` and
// `gatehouse dev` both build their gateway here.
package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/node"
	"github.com/gatehouse-dev/gatehouse/ring"
	"github.com/gatehouse-dev/gatehouse/ring/consensus"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Config configures a gateway.
type Config struct {
	// Node is the node's configuration; New fills in its certificate,
	// verifier, grants, registry, audit sink and registrar.
	Node node.Config
	// Store is the open, migrated store. The gateway does not close it.
	Store *store.Store
	// KEK unseals the CA's keys.
	KEK ca.KEK
	// CertDir, when set, keeps the node's serving certificate across
	// restarts, its key sealed with KEK: in a gateway cluster a node with a
	// good kept certificate never unseals the CA's keys unless elected.
	CertDir string
	// InitCA creates the CA in the store if it holds none (the first node
	// of an installation; `gatehouse ca init` does the same on its own).
	InitCA bool
	// Audit receives the node's and the API's events. The gateway does not
	// close it.
	Audit audit.Sink
	// PublicURL is where agents and people reach the gateway
	// (https://HOST:PORT); empty means https://HOSTS[0]:PORT of the bound
	// address.
	PublicURL string
	// Hosts are the names and addresses the serving certificate is for.
	Hosts []string
	// ServingCertTTL is the lifetime of the node's serving certificate. A
	// week: short enough that a stolen key soon dies, long enough that a
	// CA outage of days does not stop the node; it is renewed at two
	// thirds of its life, without a restart.
	ServingCertTTL time.Duration
	// AccessCacheTTL is how long the node keeps an access decision.
	AccessCacheTTL time.Duration
	// FeedInterval is how often the node polls the change feed; zero
	// means control.Follower's default (100 ms).
	FeedInterval time.Duration
	// ExpiryInterval is how often the node looks for expired grants; zero
	// means control.DefaultExpiryInterval.
	ExpiryInterval time.Duration
	// CertCheckInterval is how often the node looks whether its serving
	// certificate is due for renewal. A minute is nothing against a
	// lifetime of days, and it follows a clock that jumps.
	CertCheckInterval time.Duration
	// Identity validates Kratos sessions; nil accepts API tokens only.
	Identity *identity.Kratos
	// SSO reads SSO groups at login; nil keeps Kratos's.
	SSO *api.SSOConfig
	// Ring, when set, makes the node a member of a gateway cluster:
	// gossip, tunnel placement, agent redirects and forwarding. Nil is a
	// node on its own, which holds every tunnel.
	Ring *RingConfig
	// Logger receives the gateway's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// RingConfig is a node's place in a gateway cluster.
type RingConfig struct {
	// GossipAddr is memberlist's address (TCP and UDP), host:port.
	GossipAddr string
	// Seeds are other nodes' gossip addresses (or a DNS name that
	// resolves to them).
	Seeds []string
	// Key encrypts gossip (16, 24 or 32 bytes), the same on every node.
	Key []byte
	// PeerAddr is where other nodes forward requests to this one,
	// host:port (mutual TLS with node certificates).
	PeerAddr string
	// PublicAddr is this node's own address for agents, where others
	// redirect the agents whose tunnel belongs here; empty means the
	// node's listen address (which must then name a host).
	PublicAddr string
	// Zone is the node's failure domain, if known.
	Zone string
	// KeysInterval is how often the node reads the list of clusters it
	// places (new clusters are placed by rendezvous alone until then).
	KeysInterval time.Duration
	// RaftDir, when set, makes the node a member of the Raft group that
	// elects the certificate authority's leader (design 0006), with its
	// state there.
	RaftDir string
	// Voters is how many voters the Raft group keeps (3 or 5);
	// BootstrapExpect how many fresh members must be seen before a new
	// group forms (zero: Voters).
	Voters, BootstrapExpect int
	// DrainTimeout bounds how long a graceful stop spends handing its
	// agents over to their new owners; zero means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// EnrolWait bounds how long a node without a certificate looks for a
	// leader to enrol with; zero means DefaultEnrolWait.
	EnrolWait time.Duration
	// HandoverGrace bounds how long a tunnel whose cluster now belongs on
	// another node keeps serving its streams (watches, exec) after the
	// agent has moved; zero means DefaultHandoverGrace.
	HandoverGrace time.Duration
}

// DefaultHandoverGrace lets requests in flight on a moved tunnel finish: a
// minute covers every ordinary request and most exec sessions; a watch
// older than that is cut, and its client watches again (through the new
// owner).
const DefaultHandoverGrace = time.Minute

// DefaultDrainTimeout: a move is one TLS handshake on the new owner, so
// thousands of agents move in a few seconds; ten is room for that and
// short against a pod's usual 30 s termination grace period.
const DefaultDrainTimeout = 10 * time.Second

// DefaultConfig returns the defaults; Store, KEK and Audit must be set.
func DefaultConfig() Config {
	return Config{Node: node.DefaultConfig(), ServingCertTTL: 7 * 24 * time.Hour, AccessCacheTTL: time.Second, CertCheckInterval: time.Minute}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Store == nil || c.Audit == nil:
		return errors.New("gateway: Store and Audit are required")
	case c.KEK == nil:
		return ca.ErrNoKEK
	case c.ServingCertTTL < time.Minute:
		return errors.New("gateway: ServingCertTTL must be at least a minute")
	case c.CertCheckInterval <= 0:
		return errors.New("gateway: CertCheckInterval must be positive")
	case c.AccessCacheTTL < 0 || c.AccessCacheTTL > time.Minute:
		return errors.New("gateway: AccessCacheTTL must be from 0 to 1m")
	}
	if _, _, err := net.SplitHostPort(c.Node.Addr); err != nil {
		return fmt.Errorf("gateway: Addr %q: %w", c.Node.Addr, err)
	}
	return nil
}

// Gateway is an assembled gateway node.
type Gateway struct {
	// CA is the certificate authority, unsealed.
	CA *ca.Authority
	// Node is the gateway node.
	Node *node.Node
	// Registry holds the tunnels of the agents connected here.
	Registry *tunnel.Registry

	cfg         Config
	log         *slog.Logger
	now         func() time.Time
	policy      *policy.Engine
	cert        atomic.Pointer[tls.Certificate]
	feed        *control.Follower
	book        *tunnelBook
	revoker     *node.Revoker // the API's, and the change feed's
	ring        *ring.Ring
	cons        *consensus.Consensus // nil without a Raft group
	signMetrics *signMetrics
	peers       *ring.Peers   // nil for a node alone
	ringMetrics *ring.Metrics // nil for a node alone
	// commands are the Raft log's commands waiting to be applied here.
	commands         chan []byte
	broadcastMetrics *broadcastMetrics

	// Rotation of the certificate authority (rotation.go).
	caMu           sync.Mutex    // serializes reloads
	renewNow       chan struct{} // wakes renewLoop
	trustQueue     chan string   // agents to send the trust bundle to; "": all
	auditedStandby map[int64]bool
	enrol          *enrolGuard // on the leader: new nodes' enrolments

	ready   chan struct{} // closed once the API serves
	url     string        // set before ready closes
	running atomic.Bool
	wg      sync.WaitGroup

	closeOnce sync.Once
}

// New opens (or, with InitCA, creates) the CA and assembles the gateway.
// It does not listen until Run.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, now: cfg.Now, ready: make(chan struct{}),
		commands: make(chan []byte, commandQueue), broadcastMetrics: newBroadcastMetrics(),
		renewNow: make(chan struct{}, 1), trustQueue: make(chan string, 1024), auditedStandby: map[int64]bool{}, enrol: newEnrolGuard()}
	g.book = &tunnelBook{g: g, sessions: map[string]string{}}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.now == nil {
		g.now = time.Now
	}
	if len(cfg.Hosts) == 0 {
		cfg.Hosts = DefaultHosts(cfg.Node.Addr)
	}
	if d := cfg.Node.ClusterDomain; d != "" {
		// Host routing: one certificate for every CLUSTER.d.
		cfg.Hosts = append(cfg.Hosts, "*."+d)
	}
	g.cfg.Hosts = cfg.Hosts
	var err error
	needEnrol := false
	caCfg := ca.DefaultConfig()
	caCfg.Now = g.now
	// In a gateway cluster only the elected leader unseals the keys: a node
	// whose kept serving certificate is still good opens the authority
	// sealed, and never holds them unless it is elected.
	if cfg.Ring != nil && cfg.Ring.RaftDir != "" && cfg.CertDir != "" {
		if g.CA, err = ca.OpenPublic(ctx, caCfg, cfg.Store); err == nil {
			if c, ok := g.keptCert(ctx); ok {
				g.cert.Store(&c)
				g.log.Info("serving certificate kept from the last run", "notAfter", c.Leaf.NotAfter)
			} else {
				// No certificate yet: the node asks the leader for one once
				// it has joined the ring (enrolFirst).
				needEnrol = true
			}
		}
	} else {
		g.CA, err = ca.Open(ctx, caCfg, cfg.KEK, cfg.Store)
	}
	if errors.Is(err, ca.ErrNoState) && cfg.InitCA {
		g.CA, err = ca.Init(ctx, caCfg, cfg.KEK, cfg.Store)
		if errors.Is(err, ca.ErrInitialized) { // another node won the race
			g.CA, err = ca.Open(ctx, caCfg, cfg.KEK, cfg.Store)
		} else if err == nil {
			g.log.Info("certificate authority created in the store")
		}
	}
	if err != nil {
		return nil, err
	}
	// The feed's position first, then the revocations: a revocation made
	// between the two is both loaded and applied, never neither.
	g.feed = &control.Follower{Store: cfg.Store, Handler: applier{g: g, via: "feed"}, Interval: cfg.FeedInterval, Logger: g.log, Now: cfg.Now}
	g.feed.Start()
	if err := LoadRevocations(ctx, cfg.Store, g.CA); err != nil {
		return nil, err
	}
	if g.cert.Load() == nil && !needEnrol {
		if err := g.renewCert(); err != nil {
			return nil, err
		}
	}
	if g.policy, err = policy.New(cfg.Store); err != nil {
		return nil, err
	}
	g.Registry = tunnel.NewRegistry(g.log)
	ncfg := cfg.Node
	if cfg.Ring != nil {
		if err := g.joinRing(ncfg.Addr); err != nil {
			g.Registry.Close()
			return nil, err
		}
		if needEnrol {
			if err := g.enrolFirst(ctx); err != nil {
				g.closeRing()
				g.Registry.Close()
				return nil, fmt.Errorf("gateway: first serving certificate: %w", err)
			}
			g.gossipCA(ctx)
		}
		g.ringMetrics = ring.NewMetrics()
		ncfg.Tunnels = &ring.Tunnels{Ring: g.ring, Local: g.Registry, Peers: g.peers, Metrics: g.ringMetrics}
		ncfg.Redirector = g.ring
		ncfg.Collectors = append(ncfg.Collectors, g.ringMetrics.Collectors()...)
		ncfg.Collectors = append(ncfg.Collectors, ring.MembersGauge(g.ring))
		if g.cons != nil {
			ncfg.Collectors = append(ncfg.Collectors, g.cons.Collectors()...)
		}
		ncfg.Collectors = append(ncfg.Collectors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "gatehouse_ca_signing",
			Help: "1 while this node holds the certificate authority's signing keys (in a gateway cluster, the Raft leader alone).",
		}, func() float64 {
			if g.CA.Sealed() {
				return 0
			}
			return 1
		}))
	}
	g.signMetrics = newSignMetrics()
	ncfg.Collectors = append(ncfg.Collectors, g.signMetrics.collectors()...)
	ncfg.Collectors = append(ncfg.Collectors, g.broadcastMetrics.collectors()...)
	ncfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return g.cert.Load(), nil }
	ncfg.Verifier, ncfg.Registry, ncfg.Audit = g.CA, g.Registry, cfg.Audit
	access := &control.Access{Store: cfg.Store, Policy: g.policy, CacheTTL: cfg.AccessCacheTTL, Now: cfg.Now}
	ncfg.Grants, ncfg.Recording = access, access
	ncfg.Registrar, ncfg.AgentIssuer = cfg.Store, signer{g: g}
	ncfg.TunnelRecorder = g.book
	if ncfg.Logger == nil {
		ncfg.Logger = cfg.Logger
	}
	if ncfg.Now == nil {
		ncfg.Now = cfg.Now
	}
	if g.Node, err = node.New(ncfg); err != nil {
		g.closeRing()
		g.Registry.Close()
		return nil, err
	}
	g.revoker = &node.Revoker{CA: g.CA, Node: g.Node}
	if g.cons != nil {
		// Only the Raft leader holds the signing keys (design 0006); this
		// node signed its own serving certificate at start, and unseals
		// again if it is elected.
		g.CA.Seal()
	}
	return g, nil
}

// leadership unseals the authority while this node leads the Raft group
// and seals it when it stops leading, until ctx ends.
func (g *Gateway) leadership(ctx context.Context) {
	defer g.CA.Seal()
	ch := g.cons.LeaderCh()
	for {
		select {
		case <-ctx.Done():
			return
		case lead := <-ch:
			if !lead {
				g.CA.Seal()
				g.setLeads(ctx, false)
				g.log.Info("consensus: no longer the leader; signing keys sealed")
				g.auditSystem("ca.leader.lost", "node/"+g.cfg.Node.Name, "", "this node no longer leads the Raft group; the signing keys are sealed")
				continue
			}
			if err := g.CA.Unseal(ctx, g.cfg.KEK, g.cfg.Store); err != nil {
				// A leader that cannot sign hands over to one that can.
				g.log.Error("consensus: elected, but the signing keys do not unseal; stepping down", "err", err)
				if err := g.cons.StepDown(); err != nil {
					g.log.Warn("consensus: step down", "err", err)
				}
				continue
			}
			g.setLeads(ctx, true)
			g.log.Info("consensus: elected leader; signing keys unsealed")
			g.auditSystem("ca.leader.elected", "node/"+g.cfg.Node.Name, "", "this node leads the Raft group and holds the signing keys")
		}
	}
}

// joinRing starts the peer endpoint and joins the gateway cluster.
func (g *Gateway) joinRing(listen string) error {
	rc := g.cfg.Ring
	public := rc.PublicAddr
	if public == "" {
		host, _, _ := net.SplitHostPort(listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			return errors.New("gateway: Ring.PublicAddr is required when the node listens on every address")
		}
		public = listen
	}
	var err error
	pcfg := ring.PeerConfig{Addr: rc.PeerAddr, GetCertificate: g.cert.Load, Roots: g.CA.RootPool(), Verifier: g.CA, Local: g.Registry, Logger: g.log}
	if rc.RaftDir != "" {
		// Set before the peer endpoint serves (Run), read by its
		// goroutines after.
		pcfg.Protocols = map[string]func(*tls.Conn){consensus.ALPN: func(c *tls.Conn) {
			if g.cons == nil {
				c.Close()
				return
			}
			g.cons.Handoff(c)
		}, SignALPN: g.serveSign, ApplyALPN: g.serveApply, EnrolALPN: g.serveEnrol}
		// A new node has no certificate to show yet (serveEnrol checks its
		// proof of the KEK instead).
		pcfg.Unauthenticated = []string{EnrolALPN}
	}
	g.peers, err = ring.NewPeers(pcfg)
	if err != nil {
		return err
	}
	keys, err := g.cfg.Store.ClusterNames(context.Background())
	if err != nil {
		g.peers.Close()
		return err
	}
	cfg := ring.DefaultConfig()
	cfg.Name, cfg.BindAddr, cfg.Key, cfg.Seeds, cfg.Logger = g.cfg.Node.Name, rc.GossipAddr, rc.Key, rc.Seeds, g.log
	cfg.Meta = ring.Meta{PeerAddr: g.peers.Addr(), PublicAddr: public, Zone: rc.Zone, Generation: g.now().UnixMilli(), CATrust: g.CA.Newest(), CAServing: g.servingGeneration()}
	if g.ring, err = ring.New(cfg); err != nil {
		g.peers.Close()
		return err
	}
	g.ring.SetKeys(keys)
	if rc.RaftDir != "" {
		ccfg := consensus.DefaultConfig()
		ccfg.Ring, ccfg.Dialer, ccfg.Addr, ccfg.Dir, ccfg.Logger = g.ring, g.peers, g.peers.Addr(), rc.RaftDir, g.log
		if rc.Voters > 0 {
			ccfg.Voters = rc.Voters
		}
		ccfg.BootstrapExpect = rc.BootstrapExpect
		ccfg.Apply = g.committed
		if g.cons, err = consensus.New(ccfg); err != nil {
			g.ring.Close()
			g.peers.Close()
			return err
		}
	}
	return nil
}

func (g *Gateway) closeRing() {
	if g.cons != nil {
		g.cons.Close()
	}
	if g.ring != nil {
		g.ring.Close()
	}
	if g.peers != nil {
		g.peers.Close()
	}
}

// keysInterval is Ring.KeysInterval, 2 s when zero.
func (g *Gateway) keysInterval() time.Duration {
	if d := g.cfg.Ring.KeysInterval; d > 0 {
		return d
	}
	return 2 * time.Second
}

// Ring is the node's view of the gateway cluster; nil for a node alone.
func (g *Gateway) Ring() *ring.Ring { return g.ring }

// ringLoop keeps the ring's list of clusters and this node's tunnel count
// current, until ctx ends.
func (g *Gateway) ringLoop(ctx context.Context) {
	every(ctx, g.keysInterval(), func() {
		if keys, err := g.cfg.Store.ClusterNames(ctx); err == nil {
			g.ring.SetKeys(keys)
		} else if ctx.Err() == nil {
			g.log.Warn("ring: cluster list", "err", err)
		}
		if n := g.Registry.Len(); n != g.ring.Meta().Tunnels {
			if err := g.ring.SetMeta(ctx, func(m *ring.Meta) { m.Tunnels = n }); err != nil && ctx.Err() == nil {
				g.log.Warn("ring: tunnel count not gossiped", "err", err)
			}
		}
	})
}

// every calls fn each interval d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// goRun runs fn in a goroutine that Run waits for.
func (g *Gateway) goRun(fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
}

// handoverLoop moves the tunnels this node holds whose cluster now belongs
// on another node (a node joined, or came back): after each change of the
// ring, and every KeysInterval. The new tunnel comes first, then this one
// stops taking requests, then it closes when its streams are done.
func (g *Gateway) handoverLoop(ctx context.Context) {
	t := time.NewTicker(g.keysInterval())
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	moving := map[string]bool{}
	var mu sync.Mutex // guards moving
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.ring.Changes():
		}
		if g.ring.Meta().Draining {
			continue // leaving: its agents reconnect when it closes
		}
		for _, cluster := range g.Registry.Clusters() {
			owner, ok := g.ring.Owner(cluster)
			if !ok || owner.Name == g.ring.Name() || owner.Meta.PublicAddr == "" {
				continue
			}
			mu.Lock()
			busy := moving[cluster]
			moving[cluster] = true
			mu.Unlock()
			if busy {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(moving, cluster); mu.Unlock() }()
				g.handover(ctx, cluster, owner)
			}()
		}
	}
}

// handover asks cluster's agent to move to owner, then retires its tunnel
// here.
func (g *Gateway) handover(ctx context.Context, cluster string, owner ring.Member) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := g.Registry.Control(cctx, cluster, &tunnel.Control{RequestID: rand.Text(), Op: tunnel.OpMove, Addr: owner.Meta.PublicAddr})
	if err != nil {
		// A version-1 agent cannot move; it stays, and the ring forwards
		// to it.
		g.log.Warn("ring: tunnel not handed over", "cluster", cluster, "to", owner.Name, "err", err)
		g.ringMetrics.HandedOver(false)
		return
	}
	g.ringMetrics.HandedOver(true)
	grace := g.cfg.Ring.HandoverGrace
	if grace <= 0 {
		grace = DefaultHandoverGrace
	}
	if g.Registry.Retire(cluster, grace) {
		g.log.Info("ring: tunnel handed over", "cluster", cluster, "to", owner.Name)
	}
}

// DefaultHosts returns the names a node listening on addr serves: its host
// if it names one, then localhost and 127.0.0.1.
func DefaultHosts(addr string) []string {
	host, _, _ := net.SplitHostPort(addr)
	hosts := []string{"127.0.0.1", "localhost"}
	if host != "" && host != "localhost" && host != "127.0.0.1" && host != "0.0.0.0" && host != "::" {
		hosts = append([]string{host}, hosts...)
	}
	return hosts
}

// LoadRevocations applies the store's revocations in force to the CA: a
// node that starts refuses what was revoked before it did.
func LoadRevocations(ctx context.Context, st *store.Store, auth *ca.Authority) error {
	revs, err := st.Revocations(ctx, time.Time{})
	if err != nil {
		return err
	}
	for _, r := range revs {
		applyRevocation(auth, r)
	}
	return nil
}

func applyRevocation(auth *ca.Authority, r *store.Revocation) {
	switch {
	case r.Serial != "":
		auth.Revoke(r.Serial)
	case r.UserID != "":
		auth.RevokeUser(r.UserID, r.Before)
	case r.ClusterID != "":
		// Agent certificates name the cluster by its name; the store's
		// revocation by its id.
		auth.RevokeAgents(r.ClusterName, r.Before)
	}
}

// renewCert issues a new serving certificate from the nodes intermediate.
func (g *Gateway) renewCert() error {
	key, _, err := pki.NewKey()
	if err != nil {
		return err
	}
	// This node's authority while it is unsealed, else the leader's.
	chain, err := signer{g: g}.IssueNode(context.Background(), g.cfg.Hosts, key.Public(), g.cfg.ServingCertTTL)
	if err != nil {
		return fmt.Errorf("gateway: serving certificate: %w", err)
	}
	c, err := ca.NodeCertificate(chain, key)
	if err != nil {
		return fmt.Errorf("gateway: serving certificate: %w", err)
	}
	g.cert.Store(&c)
	if g.ring != nil {
		g.gossipCA(context.Background())
	}
	if g.cfg.CertDir != "" {
		if err := ca.SaveNodeCertificate(context.Background(), g.cfg.KEK, g.cfg.CertDir, g.cfg.Node.Name, c); err != nil {
			g.log.Warn("serving certificate not kept for the next start", "err", err)
		}
	}
	return nil
}

// keptCert returns the serving certificate kept from the last run, if it
// is a node certificate of this CA for this node's hosts with more than a
// third of its life left (renewal would be due at once otherwise).
func (g *Gateway) keptCert(ctx context.Context) (tls.Certificate, bool) {
	c, err := ca.LoadNodeCertificate(ctx, g.cfg.KEK, g.cfg.CertDir, g.cfg.Node.Name)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			g.log.Warn("the kept serving certificate does not load; signing a new one", "err", err)
		}
		return tls.Certificate{}, false
	}
	var chain []*x509.Certificate
	for _, der := range c.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return tls.Certificate{}, false
		}
		chain = append(chain, cert)
	}
	if _, err := g.CA.VerifyNode(chain); err != nil {
		g.log.Info("the kept serving certificate is not good any more; signing a new one", "err", err)
		return tls.Certificate{}, false
	}
	if c.Leaf.NotAfter.Sub(g.now()) < g.cfg.ServingCertTTL/3 {
		return tls.Certificate{}, false
	}
	for _, h := range g.cfg.Hosts {
		if strings.HasPrefix(h, "*.") {
			if !slices.Contains(c.Leaf.DNSNames, h) {
				return tls.Certificate{}, false
			}
			continue
		}
		if c.Leaf.VerifyHostname(h) != nil {
			return tls.Certificate{}, false
		}
	}
	return c, true
}

// ServingCertificate returns the certificate the node serves now.
func (g *Gateway) ServingCertificate() *tls.Certificate { return g.cert.Load() }

// renewLoop renews the serving certificate once two thirds of its life
// have passed, or once another intermediate signs node certificates (a
// rotation), looking every CertCheckInterval and when woken (wakeRenew).
func (g *Gateway) renewLoop(ctx context.Context) {
	t := time.NewTicker(g.cfg.CertCheckInterval)
	defer t.Stop()
	for {
		c := g.cert.Load()
		rotated := !servedBy(c, g.CA)
		if rotated || c.Leaf.NotAfter.Sub(g.now()) <= g.cfg.ServingCertTTL/3 {
			if err := g.renewCert(); err != nil {
				g.log.Error("serving certificate not renewed; trying again", "err", err)
			} else if !servedBy(g.cert.Load(), g.CA) {
				// The leader has not reloaded yet: again at the next look.
				g.log.Warn("serving certificate renewed, but not by the intermediate that serves now; trying again")
			} else {
				g.log.Info("serving certificate renewed", "notAfter", g.cert.Load().Leaf.NotAfter, "rotation", rotated)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.renewNow:
		}
	}
}

// Run serves until ctx ends: the node (with the API once it has its
// address), the follower of the change feed, the expirer and the
// certificate renewal. It returns once all of
// them have stopped.
func (g *Gateway) Run(ctx context.Context) error {
	if !g.running.CompareAndSwap(false, true) {
		return node.ErrRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The node and the peer endpoint outlive ctx by the drain: a graceful
	// stop first moves this node's agents, serving meanwhile. The peer
	// endpoint (and the pool of connections to the other nodes) outlives
	// the node: the node's last requests are forwarded through it.
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	peerCtx, stopPeers := context.WithCancel(context.Background())
	defer stopPeers()
	errc := make(chan error, 1)
	g.goRun(func() { errc <- g.Node.Run(serveCtx) })
	// The node's address, or its failure to listen (then it never has one).
	addrc := make(chan net.Addr, 1)
	g.goRun(func() {
		if a, err := g.Node.Addr(ctx); err == nil {
			addrc <- a
		}
	})
	var addr net.Addr
	select {
	case err := <-errc:
		cancel()
		stopServing()
		stopPeers()
		g.wg.Wait()
		return err
	case addr = <-addrc:
	}
	if err := g.startAPI(addr); err != nil {
		cancel()
		stopServing()
		stopPeers()
		g.wg.Wait()
		<-errc
		return err
	}
	close(g.ready)
	if g.ring != nil {
		g.auditSystem("node.join", "node/"+g.cfg.Node.Name, "", fmt.Sprintf("joined the gateway cluster: %d members seen", len(g.ring.Members())))
	}
	// Every node looks for expired grants; the change feed tells them all
	// (this one included) whose access changed.
	g.goRun(func() {
		(&control.Expirer{Store: g.cfg.Store, Interval: g.cfg.ExpiryInterval, Audit: g.cfg.Audit, Node: g.cfg.Node.Name, Logger: g.log}).Run(ctx)
	})
	g.goRun(func() { g.feed.Run(ctx) })
	g.goRun(func() { g.renewLoop(ctx) })
	g.goRun(func() { g.trustLoop(ctx) })
	g.goRun(func() { g.rotationLoop(ctx) })
	g.goRun(func() { g.book.heartbeats(ctx) })
	// The record of issued serials keeps what may still be in use.
	g.goRun(func() {
		every(ctx, time.Hour, func() {
			if _, err := g.cfg.Store.PruneIssued(ctx, g.now().Add(-time.Hour)); err != nil && ctx.Err() == nil {
				g.log.Warn("issued certificates not pruned", "err", err)
			}
		})
	})
	if g.ring != nil {
		g.goRun(func() {
			if err := g.peers.Serve(peerCtx); err != nil {
				g.log.Error("ring: peer endpoint stopped", "err", err)
			}
		})
		g.goRun(func() { g.handoverLoop(ctx) })
		if g.cons != nil {
			g.goRun(func() {
				if err := g.cons.Run(peerCtx); err != nil {
					g.log.Error("consensus stopped", "err", err)
				}
			})
			g.goRun(func() { g.leadership(peerCtx) })
			g.goRun(func() { g.applyCommands(peerCtx) })
		}
		g.goRun(func() { g.ringLoop(ctx) })
	}
	select {
	case err := <-errc: // the node failed
		cancel()
		stopServing()
		stopPeers()
		g.wg.Wait()
		return err
	case <-ctx.Done():
	}
	g.drain()
	stopServing()
	err := <-errc
	if g.cons != nil {
		// A leader hands leadership over first: signing pauses for a
		// hand-over, not an election.
		if err := g.cons.Close(); err != nil {
			g.log.Warn("consensus: stop", "err", err)
		}
	}
	if g.ring != nil {
		g.auditSystem("node.leave", "node/"+g.cfg.Node.Name, "", "leaving the gateway cluster (a graceful stop)")
		// Only now: until the node has stopped, the others may still
		// forward to it requests for tunnels it was handing over, and its
		// own requests in flight go through the peer pool.
		if err := g.ring.Leave(2 * time.Second); err != nil {
			g.log.Warn("ring: leave not gossiped; the others notice by failure detection", "err", err)
		}
	}
	stopPeers()
	g.wg.Wait()
	return err
}

// drain is the first half of a graceful stop. The node says it is not
// ready (load balancers send no new connections) and, in a gateway
// cluster, that it is draining: the others stop placing tunnels here, and
// it hands each of its agents over to the cluster's new owner, new tunnel
// first, as when a node joins. It returns once no agent is left here (or
// after DrainTimeout); requests and streams in flight go on meanwhile, and
// the node's shutdown then waits for them. An agent that cannot move (a
// version-1 agent, or no other node) stays until the node closes and then
// reconnects through the public address.
func (g *Gateway) drain() {
	g.Node.Drain()
	if g.ring == nil {
		return
	}
	if g.cons != nil {
		// Leadership first: signing moves in a hand-over, while this node
		// drains.
		if err := g.cons.StepDown(); err != nil {
			g.log.Warn("consensus: leadership not handed over", "err", err)
		}
	}
	timeout := g.cfg.Ring.DrainTimeout
	if timeout <= 0 {
		timeout = DefaultDrainTimeout
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := g.ring.SetMeta(ctx, func(m *ring.Meta) { m.Draining = true }); err != nil {
		g.log.Warn("ring: draining not gossiped", "err", err)
	}
	left := g.Registry.Len()
	g.log.Info("draining: handing agents over", "tunnels", left, "timeout", timeout)
	// A node that has not yet heard that this one drains redirects the
	// agent back here, and the move fails: try again until the view has
	// spread (gossip takes a few hundred milliseconds).
	for {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64) // moves at a time: each one is a TLS handshake on the new owner
		moves := 0
		for _, cluster := range g.Registry.Clusters() {
			owner, ok := g.ring.Owner(cluster)
			if !ok || owner.Name == g.ring.Name() || owner.Meta.PublicAddr == "" {
				continue // no other node: the agent stays until the node closes
			}
			moves++
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				g.handover(ctx, cluster, owner)
			}()
		}
		wg.Wait()
		if left = g.Registry.Len(); left == 0 || moves == 0 {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
	}
	g.log.Info("draining: done", "tunnelsLeft", left, "took", time.Since(start).Round(time.Millisecond))
}

func (g *Gateway) startAPI(addr net.Addr) error {
	g.url = g.cfg.PublicURL
	if g.url == "" {
		_, port, _ := net.SplitHostPort(addr.String())
		g.url = "https://" + net.JoinHostPort(g.cfg.Hosts[0], port)
	}
	acfg := api.DefaultConfig()
	acfg.Store, acfg.Policy, acfg.Audit, acfg.Node, acfg.Logger = g.cfg.Store, g.policy, g.cfg.Audit, g.cfg.Node.Name, g.log
	acfg.GatewayURL, acfg.GatewayCA, acfg.TrustBundle = g.url, g.CA.RootPEM(), g.CA.RootPEM
	acfg.Identity, acfg.SSO = g.cfg.Identity, g.cfg.SSO
	acfg.Issuer, acfg.Revoker, acfg.Notify = signer{g: g}, g.revoker, g.Node
	if g.cons != nil {
		// Revocations reach the other nodes through the Raft log at once,
		// and through the change feed in any case.
		acfg.Revoker = clusterRevoker{g}
	}
	acfg.View = g
	a, err := api.New(acfg)
	if err != nil {
		return err
	}
	g.Node.SetAPI(a)
	return nil
}

// Ready waits until the gateway serves its API, and returns its public URL.
func (g *Gateway) Ready(ctx context.Context) (string, error) {
	select {
	case <-g.ready:
		return g.url, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Close releases what New made (the tunnel registry). Run must have
// returned. It is idempotent.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		g.closeRing()
		g.Registry.Close()
	})
	return nil
}

// applier applies the change feed, and the Raft log's commands, on this
// node; via names the way (a metric's label).
type applier struct {
	g   *Gateway
	via string
}

var _ control.ChangeHandler = applier{}

// ApplyChange implements control.ChangeHandler. The node that made a change
// has applied it already; applying it again does no harm.
func (a applier) ApplyChange(ctx context.Context, c store.Change) error {
	g, rev := a.g, a.g.revoker
	g.broadcastMetrics.applied.WithLabelValues(a.via).Inc()
	switch c.Kind {
	case store.ChangeAccess:
		return g.Node.AccessChanged(ctx, c.Subject, nil)
	case store.ChangeAll:
		return g.Node.AccessChangedAll(ctx)
	case store.ChangeRevokeSerial:
		return rev.RevokeSerial(ctx, c.Subject)
	case store.ChangeRevokeUser:
		return rev.RevokeUser(ctx, c.Subject, c.Before)
	case store.ChangeRevokeCluster:
		return rev.RevokeAgents(ctx, c.Subject, c.Before)
	case store.ChangeRevokeToken:
		return nil // tokens are checked in the store at every use
	case store.ChangeCA:
		return g.reloadCA(ctx)
	}
	g.log.Warn("change feed: unknown kind, ignored", "kind", c.Kind, "id", c.ID)
	return nil
}

// Members implements api.ClusterView: the ring's live members, or this
// node alone.
func (g *Gateway) Members() []apitypes.Member {
	if g.ring == nil {
		host := g.url
		if u, err := url.Parse(g.url); err == nil {
			host = u.Host
		}
		return []apitypes.Member{{Name: g.cfg.Node.Name, PublicAddr: host, Tunnels: g.Registry.Len()}}
	}
	var roles map[string]string
	if g.cons != nil {
		roles = g.cons.Roles()
	}
	var out []apitypes.Member
	for _, m := range g.ring.Members() {
		out = append(out, apitypes.Member{Name: m.Name, PublicAddr: m.Meta.PublicAddr, PeerAddr: m.Meta.PeerAddr, Zone: m.Meta.Zone,
			Tunnels: m.Meta.Tunnels, Draining: m.Meta.Draining, Generation: m.Meta.Generation, Raft: roles[m.Name]})
	}
	return out
}

// Owner implements api.ClusterView.
func (g *Gateway) Owner(cluster string) string {
	if g.ring == nil {
		return g.cfg.Node.Name
	}
	m, _ := g.ring.Owner(cluster)
	return m.Name
}

// tunnelBook records in the store where this node's tunnels are, for
// gatehouse status: on connect, on disconnect, and a heartbeat every
// HeartbeatInterval.
type tunnelBook struct {
	g *Gateway

	mu       sync.Mutex        // guards sessions
	sessions map[string]string // of the tunnels up here: session -> cluster
}

// HeartbeatInterval is how often a node stamps its tunnels alive in the
// store: status counts a tunnel connected for three intervals.
const HeartbeatInterval = 30 * time.Second

func (b *tunnelBook) TunnelUp(cluster, session string, hello tunnel.Hello) {
	b.mu.Lock()
	b.sessions[session] = cluster
	b.mu.Unlock()
	b.g.auditSystem("tunnel.connect", "tunnel/"+session, cluster, "agent "+hello.AgentVersion+", Kubernetes "+hello.KubeVersion)
	if bytes.Count(b.g.CA.RootPEM(), []byte("BEGIN CERTIFICATE")) > 1 && hello.AgentVersion != "" {
		// A root rotation is under way: the agent may have missed the
		// bundle.
		b.g.pushTrust(cluster)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.g.cfg.Store.TunnelUp(ctx, &store.AgentTunnel{Cluster: cluster, Node: b.g.cfg.Node.Name, Session: session,
		AgentVersion: hello.AgentVersion, KubeVersion: hello.KubeVersion}); err != nil {
		b.g.log.Warn("status: tunnel not recorded", "cluster", cluster, "err", err)
	}
}

func (b *tunnelBook) TunnelDown(session string) {
	b.mu.Lock()
	cluster := b.sessions[session]
	delete(b.sessions, session)
	b.mu.Unlock()
	b.g.auditSystem("tunnel.disconnect", "tunnel/"+session, cluster, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.g.cfg.Store.TunnelDown(ctx, session); err != nil {
		b.g.log.Warn("status: tunnel end not recorded", "err", err)
	}
}

func (b *tunnelBook) heartbeats(ctx context.Context) {
	every(ctx, HeartbeatInterval, func() {
		b.mu.Lock()
		sessions := slices.Collect(maps.Keys(b.sessions))
		b.mu.Unlock()
		if err := b.g.cfg.Store.TunnelHeartbeat(ctx, b.g.cfg.Node.Name, sessions); err != nil && ctx.Err() == nil {
			b.g.log.Warn("status: heartbeat not recorded", "err", err)
		}
	})
}

// setLeads gossips whether this node leads and signs: a new node, which
// has no certificate to ask Raft with, finds the leader so.
func (g *Gateway) setLeads(ctx context.Context, leads bool) {
	if err := g.ring.SetMeta(ctx, func(m *ring.Meta) { m.Leads = leads }); err != nil {
		g.log.Warn("consensus: leadership not gossiped", "err", err)
	}
}

// auditSystem writes a system event of this node (a tunnel, a change of
// leader, the node joining or leaving).
func (g *Gateway) auditSystem(action, object, cluster, detail string) {
	ev := &audit.Event{Kind: audit.KindSystem, Action: action, Object: object, Cluster: cluster, Time: g.now(), Phase: audit.PhaseComplete,
		Node: g.cfg.Node.Name, Status: 200, Detail: detail}
	if err := g.cfg.Audit.Write(context.Background(), ev); err != nil {
		g.log.Error("audit: system event not written", "action", action, "err", err)
	}
}
