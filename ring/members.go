package ring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Errors of the ring.
var (
	// ErrClosed is returned once Close has been called.
	ErrClosed = errors.New("ring: closed")
	// ErrMetaTooLarge: a node's metadata does not fit memberlist's 512
	// bytes.
	ErrMetaTooLarge = errors.New("ring: node metadata larger than memberlist allows")
)

// Meta is what a node tells the others about itself through gossip.
type Meta struct {
	// PeerAddr is where other nodes reach it for node-to-node mTLS
	// (forwarding), host:port.
	PeerAddr string `json:"p,omitempty"`
	// PublicAddr is its own address for agents and people (the anycast
	// address is everyone's; this one is the node's alone), host:port.
	PublicAddr string `json:"a,omitempty"`
	// Zone is the failure domain it runs in, if known.
	Zone string `json:"z,omitempty"`
	// Tunnels is how many agent tunnels it holds now.
	Tunnels int `json:"t,omitempty"`
	// Generation tells a restarted node from its previous life (its start
	// time, Unix milliseconds).
	Generation int64 `json:"g,omitempty"`
	// Draining: it is leaving; no new tunnel is placed on it.
	Draining bool `json:"d,omitempty"`
	// Consensus: the node holds Raft state (it is, or was, in the
	// consensus group). A fresh cluster forms only among nodes of which
	// none has any (package consensus).
	Consensus bool `json:"r,omitempty"`
	// CATrust is the newest generation of the certificate authority the
	// node trusts: the leader makes a new generation active once every
	// node trusts it.
	CATrust int64 `json:"c,omitempty"`
	// CAServing is the generation whose intermediate signed the node's
	// serving certificate: the leader retires a generation once no node
	// serves under it.
	CAServing int64 `json:"s,omitempty"`
	// Leads: the node leads the Raft group and signs. A new node, which
	// has no certificate to ask Raft with, finds the leader so.
	Leads bool `json:"l,omitempty"`
}

// Member is a live node of the ring.
type Member struct {
	// Name is the node's name, unique in the ring.
	Name string
	// GossipAddr is its memberlist address, host:port.
	GossipAddr string
	Meta       Meta
}

// Config configures a Ring.
type Config struct {
	// Name is the node's name; it must be unique among the nodes.
	Name string
	// BindAddr is the gossip address (TCP and UDP), host:port; port 0
	// picks a free one.
	BindAddr string
	// AdvertiseAddr, when set, is the address others reach the gossip at
	// (behind NAT or in a pod), host:port.
	AdvertiseAddr string
	// Seeds are nodes to join: host:port, where a DNS name may resolve to
	// several addresses (a headless Service). A node that reaches none
	// starts alone, serves, and keeps trying every JoinRetry.
	Seeds []string
	// JoinRetry is how often a node alone tries its seeds again.
	JoinRetry time.Duration
	// Key encrypts and authenticates gossip (AES-GCM; 16, 24 or 32
	// bytes), the same on every node. Required: gossip says who owns which
	// tunnel, and a stranger must not be able to join or listen.
	Key []byte
	// Meta is the node's metadata at start.
	Meta Meta

	// Failure detection (see docs/design/0005-gateway-cluster.md).
	// memberlist's LAN defaults (1 s probes, 500 ms timeout, suspicion
	// 4) declare a dead peer of a 3-node ring dead after about 5.8 s;
	// people's requests to its clusters fail for that long. A 200 ms
	// probe with a 100 ms timeout (loopback and in-datacenter RTTs are
	// well under a millisecond) and a suspicion multiplier of 3 detect it
	// in about a second. False positives under CPU pressure are held off
	// by what memberlist keeps: indirect probes through three other
	// nodes, Lifeguard's awareness (a node that misses its own deadlines
	// stretches its timeouts up to 8x), and a suspicion that a refuted
	// node clears.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int

	// Logger receives the ring's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults; Name, BindAddr and Key must be set.
func DefaultConfig() Config {
	return Config{JoinRetry: 5 * time.Second, ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, SuspicionMult: 3}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Name == "" {
		return errors.New("ring: Name is required")
	}
	if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("ring: BindAddr %q: %w", c.BindAddr, err)
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddr); err != nil {
			return fmt.Errorf("ring: AdvertiseAddr %q: %w", c.AdvertiseAddr, err)
		}
	}
	switch {
	case len(c.Key) != 16 && len(c.Key) != 24 && len(c.Key) != 32:
		return errors.New("ring: Key must be 16, 24 or 32 bytes (gossip is always encrypted)")
	case c.ProbeInterval <= 0 || c.ProbeTimeout <= 0 || c.ProbeTimeout >= c.ProbeInterval:
		return errors.New("ring: ProbeTimeout must be positive and shorter than ProbeInterval")
	case c.SuspicionMult < 1:
		return errors.New("ring: SuspicionMult must be at least 1")
	case c.JoinRetry <= 0:
		return errors.New("ring: JoinRetry must be positive")
	}
	return nil
}

// Ring is this node's view of the gateway cluster: who is alive, what each
// says about itself, and (Owners) who holds which tunnel.
type Ring struct {
	cfg Config
	log *slog.Logger
	ml  *memberlist.Memberlist

	mu         sync.Mutex // guards meta, members, keys, owners and version
	meta       Meta
	members    map[string]Member // live members but this one, from memberlist's events
	gossipAddr string            // this node's, fixed at start
	keys       []string          // the clusters to place (SetKeys)
	owners     map[string]string // Place(keys, members), computed at ownersV
	version    uint64            // bumped by every change of members or keys
	ownersV    uint64

	changes chan struct{} // one pending notice of a membership change

	conflict chan struct{} // another address claims this node's name (its previous life)

	failedMu sync.Mutex              // guards failed
	failed   map[string]failedMember // members declared dead, by name

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New starts the node's gossip and joins the seeds. Reaching none is not an
// error: the node serves alone and keeps trying.
func New(cfg Config) (*Ring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Ring{cfg: cfg, log: cfg.Logger, meta: cfg.Meta, members: map[string]Member{}, changes: make(chan struct{}, 1), stop: make(chan struct{}),
		failed: map[string]failedMember{}, conflict: make(chan struct{}, 1)}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if b, _ := json.Marshal(cfg.Meta); len(b) > memberlist.MetaMaxSize {
		return nil, ErrMetaTooLarge
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	host, port, _ := net.SplitHostPort(cfg.BindAddr)
	mc.BindAddr = host
	mc.BindPort, _ = strconv.Atoi(port)
	mc.AdvertisePort = mc.BindPort
	if cfg.AdvertiseAddr != "" {
		h, p, _ := net.SplitHostPort(cfg.AdvertiseAddr)
		mc.AdvertiseAddr = h
		mc.AdvertisePort, _ = strconv.Atoi(p)
	}
	mc.SecretKey = cfg.Key
	// A node that died and comes back under its name on another address
	// (a rescheduled pod) takes its name back once the old one has been
	// dead this long; memberlist's default (0) refuses it for ever.
	mc.DeadNodeReclaimTime = time.Second
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult = cfg.ProbeInterval, cfg.ProbeTimeout, cfg.SuspicionMult
	// Gossip leaves from the gossip address, TCP as well as UDP, so that
	// firewalls (and the partition test) can tell nodes apart by address.
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: mc.BindPort,
		Logger: slog.NewLogLogger(r.log.Handler(), slog.LevelDebug)})
	if err != nil {
		return nil, fmt.Errorf("ring: %w", err)
	}
	mc.Transport = &boundTransport{NetTransport: nt, local: localAddr(host)}
	if mc.BindPort == 0 { // memberlist does this only for a transport of its own
		mc.BindPort = nt.GetAutoBindPort()
		if cfg.AdvertiseAddr == "" {
			mc.AdvertisePort = mc.BindPort
		}
	}
	mc.Conflict = conflicts{r}
	mc.Delegate = delegate{r}
	mc.Events = events{r}
	mc.Logger = slog.NewLogLogger(r.log.Handler(), slog.LevelDebug)
	ml, err := memberlist.Create(mc)
	if err != nil {
		nt.Shutdown()
		return nil, fmt.Errorf("ring: %w", err)
	}
	r.ml = ml
	local := ml.LocalNode()
	r.mu.Lock()
	r.gossipAddr = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
	r.mu.Unlock()
	if len(cfg.Seeds) > 0 {
		if n, err := ml.Join(cfg.Seeds); err != nil || n == 0 {
			r.log.Warn("ring: no seed reached; serving alone and trying again", "seeds", cfg.Seeds, "err", err)
		}
	}
	r.wg.Add(1)
	go r.rejoin()
	return r, nil
}

// AnnounceFor is how long a node that found its name held by an older
// address (its previous life) keeps announcing itself.
const AnnounceFor = 30 * time.Second

// ReconnectFor is how long a node keeps trying to reach a member it saw
// die (not leave): a partition of up to a day heals by itself.
const ReconnectFor = 24 * time.Hour

// rejoin, every JoinRetry, tries the seeds again while the node is alone,
// and tries each member declared dead (not one that left) again, as
// Serf's reconnect does. memberlist alone never heals a partition longer
// than its gossip-to-the-dead time (30 s): each side has declared the
// other dead and stops talking to it.
func (r *Ring) rejoin() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.JoinRetry)
	defer t.Stop()
	// After a conflict over this node's name, it announces itself at every
	// tick for a while: the others take the new address only once the old
	// one has been dead for a second, which takes failure detection.
	var announceUntil time.Time
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		case <-r.conflict:
			announceUntil = time.Now().Add(AnnounceFor)
			continue
		}
		if time.Now().Before(announceUntil) {
			r.announce()
		}
		if r.ml.NumMembers() <= 1 && len(r.cfg.Seeds) > 0 {
			if n, err := r.ml.Join(r.cfg.Seeds); err == nil && n > 0 {
				r.log.Info("ring: joined", "seeds", r.cfg.Seeds, "members", r.ml.NumMembers())
			}
		}
		r.failedMu.Lock()
		var addrs []string
		for name, f := range r.failed {
			if time.Since(f.at) > ReconnectFor {
				delete(r.failed, name)
				continue
			}
			addrs = append(addrs, f.addr)
		}
		r.failedMu.Unlock()
		// At once: an address that is gone costs a dial timeout.
		var wg sync.WaitGroup
		for _, addr := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if n, err := r.ml.Join([]string{addr}); err == nil && n > 0 {
					r.log.Info("ring: reached a member seen dead", "addr", addr, "members", r.ml.NumMembers())
				}
			}()
		}
		wg.Wait()
	}
}

// announce pushes this node's state to the others again (a join with the
// seeds and the members it knows): after it came back on another address,
// the others refuse its name until the old address is declared dead, and
// memberlist itself would only tell them again at its next push-pull.
func (r *Ring) announce() {
	addrs := slices.Clone(r.cfg.Seeds)
	for _, m := range r.Members() {
		if m.Name != r.cfg.Name {
			addrs = append(addrs, m.GossipAddr)
		}
	}
	if len(addrs) == 0 {
		return
	}
	if n, err := r.ml.Join(addrs); err == nil && n > 0 {
		r.log.Info("ring: announced this node again after a conflict over its name", "reached", n)
	}
}

// conflicts hears of another address claiming a member's name.
type conflicts struct{ r *Ring }

func (c conflicts) NotifyConflict(existing, other *memberlist.Node) {
	if existing.Name != c.r.cfg.Name {
		return
	}
	c.r.log.Info("ring: this node's name is held by an older address; announcing it again", "other", other.Address())
	select {
	case c.r.conflict <- struct{}{}:
	default:
	}
}

// boundTransport is memberlist's TCP/UDP transport with outgoing TCP
// connections bound to the gossip address.
type boundTransport struct {
	*memberlist.NetTransport
	local *net.TCPAddr // nil: the kernel chooses
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *boundTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: t.local}
	return d.Dial("tcp", a.Addr)
}

// DialTimeout implements memberlist.Transport.
func (t *boundTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// localAddr is the address outgoing connections are bound to: host's IP,
// or nil for an unspecified host (0.0.0.0, ::, a name).
func localAddr(host string) *net.TCPAddr {
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return nil
	}
	return &net.TCPAddr{IP: ip}
}

// Name is this node's name.
func (r *Ring) Name() string { return r.cfg.Name }

// GossipAddr is the address this node's gossip listens on, host:port.
func (r *Ring) GossipAddr() string { return r.gossipAddr }

// Members returns the live members, this node included, by name. It reads
// the ring's own copy, kept from memberlist's events: memberlist's Members
// hands out pointers to nodes that it goes on changing under its own lock.
func (r *Ring) Members() []Member {
	r.mu.Lock()
	out := make([]Member, 0, len(r.members)+1)
	for _, m := range r.members {
		if m.Name == r.cfg.Name {
			continue
		}
		out = append(out, m)
	}
	out = append(out, Member{Name: r.cfg.Name, GossipAddr: r.gossipAddr, Meta: r.meta})
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// upsert records a live member from memberlist's event; memberlist holds
// its lock while it calls, so n may be read here, and only here.
func (r *Ring) upsert(n *memberlist.Node) {
	m := Member{Name: n.Name, GossipAddr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
	if err := json.Unmarshal(n.Meta, &m.Meta); err != nil && len(n.Meta) > 0 {
		r.log.Warn("ring: a member's metadata does not parse", "member", n.Name, "err", err)
	}
	r.mu.Lock()
	r.members[n.Name] = m
	r.mu.Unlock()
}

func (r *Ring) remove(name string) {
	r.mu.Lock()
	delete(r.members, name)
	r.mu.Unlock()
}

// Owners places keys (cluster ids) over the live members that are not
// draining: Place with DefaultEpsilon. Every node with the same view and
// keys computes the same owners.
func (r *Ring) Owners(keys []string) map[string]string {
	var names []string
	for _, m := range r.Members() {
		if !m.Meta.Draining {
			names = append(names, m.Name)
		}
	}
	return Place(keys, names, DefaultEpsilon)
}

// SetKeys sets the clusters that Owner places (every node gives the same
// list, from the store, so that every node computes the same owners).
func (r *Ring) SetKeys(keys []string) {
	keys = slices.Compact(slices.Sorted(slices.Values(keys)))
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Equal(keys, r.keys) {
		r.keys = keys
		r.version++
	}
}

// Owner returns the member that should hold cluster's tunnel: its place
// among the keys of SetKeys, or, for a cluster not among them (new since),
// the first rendezvous choice. False when no member may hold it.
func (r *Ring) Owner(cluster string) (Member, bool) {
	members := r.Members()
	byName := make(map[string]Member, len(members))
	var names []string
	for _, m := range members {
		byName[m.Name] = m
		if !m.Meta.Draining {
			names = append(names, m.Name)
		}
	}
	if len(names) == 0 {
		return Member{}, false
	}
	r.mu.Lock()
	if r.owners == nil || r.ownersV != r.version {
		r.owners, r.ownersV = Place(r.keys, names, DefaultEpsilon), r.version
	}
	name, ok := r.owners[cluster]
	r.mu.Unlock()
	if !ok {
		name = Rank(cluster, names)[0]
	}
	m, ok := byName[name]
	return m, ok
}

// Meta returns this node's metadata.
func (r *Ring) Meta() Meta {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.meta
}

// SetMeta changes this node's metadata and gossips it, waiting up to
// timeout for the change to be sent.
func (r *Ring) SetMeta(ctx context.Context, update func(*Meta)) error {
	r.mu.Lock()
	m := r.meta
	update(&m)
	if b, _ := json.Marshal(m); len(b) > memberlist.MetaMaxSize {
		r.mu.Unlock()
		return ErrMetaTooLarge
	}
	r.meta = m
	r.mu.Unlock()
	timeout := 2 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	return r.ml.UpdateNode(timeout)
}

// Changes receives a value after membership or a member's metadata
// changed; notices that come while one is pending are merged into it.
func (r *Ring) Changes() <-chan struct{} { return r.changes }

func (r *Ring) changed() {
	r.mu.Lock()
	r.version++
	r.mu.Unlock()
	select {
	case r.changes <- struct{}{}:
	default:
	}
}

// Leave tells the others this node is going, waiting up to timeout, so
// that they move its tunnels at once instead of after failure detection.
func (r *Ring) Leave(timeout time.Duration) error { return r.ml.Leave(timeout) }

// Close stops the gossip (without leaving: use Leave first for a graceful
// stop) and the goroutines the ring owns. It is idempotent.
func (r *Ring) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.stop)
		r.wg.Wait()
		err = r.ml.Shutdown()
	})
	return err
}

// delegate gives memberlist this node's metadata; the ring gossips nothing
// else.
type delegate struct{ r *Ring }

func (d delegate) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(d.r.Meta())
	if len(b) > limit {
		return nil
	}
	return b
}
func (delegate) NotifyMsg([]byte)                {}
func (delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (delegate) LocalState(bool) []byte          { return nil }
func (delegate) MergeRemoteState([]byte, bool)   {}

// events turns memberlist's notices into Changes. memberlist calls them
// with its locks held: they must not block.
type events struct{ r *Ring }

func (e events) NotifyJoin(n *memberlist.Node) {
	e.r.upsert(n)
	e.r.recovered(n)
	e.r.changed()
}

func (e events) NotifyLeave(n *memberlist.Node) {
	e.r.remove(n.Name)
	// A node that left on purpose said first that it was draining; any
	// other leave is a death or a partition: try it again. (memberlist
	// v0.6.0 does not fill in the Node's State in this event.)
	var meta Meta
	if json.Unmarshal(n.Meta, &meta) != nil || !meta.Draining {
		e.r.failedMu.Lock()
		e.r.failed[n.Name] = failedMember{addr: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), at: time.Now()}
		e.r.failedMu.Unlock()
	}
	e.r.changed()
}

// failedMember is a member declared dead, to reconnect to.
type failedMember struct {
	addr string
	at   time.Time
}

// recovered forgets n as a member to reconnect to.
func (r *Ring) recovered(n *memberlist.Node) {
	r.failedMu.Lock()
	delete(r.failed, n.Name)
	r.failedMu.Unlock()
}

func (e events) NotifyUpdate(n *memberlist.Node) { e.r.upsert(n); e.r.changed() }

// Redirect implements node.Redirector: the owner's own address when the
// cluster's tunnel belongs on another live node.
func (r *Ring) Redirect(cluster string) (string, bool) {
	owner, ok := r.Owner(cluster)
	if !ok || owner.Name == r.Name() || owner.Meta.PublicAddr == "" {
		return "", false
	}
	return owner.Meta.PublicAddr, true
}
