package ring

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// PeerALPN is the TLS application protocol of node-to-node connections; the
// version is in the name, as with the tunnel's.
const PeerALPN = "gatehouse-peer/1"

// Frames on a peer stream (tunnel frame encoding, this protocol's types).
const (
	// frameOpen opens a forwarded request: a JSON peerOpen follows.
	frameOpen tunnel.FrameType = 1
	// frameOpened answers it: a JSON peerOpened; on success the stream
	// then carries the request's bytes to and from the agent.
	frameOpened tunnel.FrameType = 2
)

// MaxHops bounds forwarding: the node that receives a request forwards it
// to the owner at most once, and the owner never forwards again, so a
// disagreement about owners cannot make a loop.
const MaxHops = 1

type peerOpen struct {
	Cluster string         `json:"cluster"`
	Hops    int            `json:"hops"`
	Header  *tunnel.Header `json:"header"`
}

type peerOpened struct {
	// Error is empty on success; NoTunnel says the owner does not hold the
	// cluster's tunnel (the ingress may wait and try again).
	Error    string `json:"error,omitempty"`
	NoTunnel bool   `json:"noTunnel,omitempty"`
}

// Errors of forwarding.
var (
	// ErrLoop: a forwarded request would be forwarded again.
	ErrLoop = errors.New("ring: forwarding loop refused")
	// ErrPeer: the peer refused or failed the request.
	ErrPeer = errors.New("ring: peer")
)

// NodeVerifier checks a peer's certificate chain: a gateway node's, and
// no other kind. *ca.Authority implements it.
type NodeVerifier interface {
	VerifyNode(chain []*x509.Certificate) (string, error)
}

// LocalTunnels are the tunnels this node holds. *tunnel.Registry
// implements it.
type LocalTunnels interface {
	Open(ctx context.Context, cluster string, h *tunnel.Header) (net.Conn, error)
	Connected(cluster string) bool
}

// PeerConfig configures Peers.
type PeerConfig struct {
	// Addr is the address peers connect to, host:port (port 0 picks one).
	Addr string
	// GetCertificate returns this node's certificate (from the nodes
	// intermediate), served to peers and presented to them.
	GetCertificate func() *tls.Certificate
	// Roots verify peers' serving certificates (the gateway's root);
	// Verifier then checks that the chain is a node's.
	Roots    *x509.CertPool
	Verifier NodeVerifier
	// Local are this node's tunnels, onto which forwarded requests go.
	Local LocalTunnels
	// DialTimeout bounds connecting to a peer. A second: peers are in one
	// datacenter or region.
	DialTimeout time.Duration
	// Protocols serve other node-to-node protocols on the same port, told
	// apart by their TLS application protocol (the Raft transport). A
	// connection that negotiated one, from a verified node, is handed to
	// its function, which owns it from then on.
	Protocols map[string]func(*tls.Conn)
	// Unauthenticated names protocols of Protocols that a caller without a
	// node certificate may speak: a new node enrolling for its first
	// certificate, which proves itself inside the protocol. Every other
	// protocol demands a node certificate.
	Unauthenticated []string
	Logger          *slog.Logger
}

// Peers serves forwarded requests to this node's tunnels and forwards
// requests to other nodes, over one pooled mutual-TLS yamux session per
// peer. The request's identity travels in the open frame, which only a
// peer with a node certificate can write; the owner only pipes bytes onto
// the agent's tunnel.
type Peers struct {
	cfg PeerConfig
	log *slog.Logger
	ln  net.Listener

	mu       sync.Mutex                // guards sessions, served and closed
	sessions map[string]*yamux.Session // dialled, by peer address
	served   map[*yamux.Session]bool   // accepted from peers
	closed   bool

	wg sync.WaitGroup // the listener's and each served session's goroutines
}

// NewPeers listens on cfg.Addr. Serve serves it.
func NewPeers(cfg PeerConfig) (*Peers, error) {
	if cfg.GetCertificate == nil || cfg.Roots == nil || cfg.Verifier == nil || cfg.Local == nil {
		return nil, errors.New("ring: GetCertificate, Roots, Verifier and Local are required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = time.Second
	}
	p := &Peers{cfg: cfg, log: cfg.Logger, sessions: map[string]*yamux.Session{}, served: map[*yamux.Session]bool{}}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	protos := []string{PeerALPN}
	for alpn := range cfg.Protocols {
		protos = append(protos, alpn)
	}
	for _, alpn := range cfg.Unauthenticated {
		if cfg.Protocols[alpn] == nil {
			return nil, fmt.Errorf("ring: unauthenticated protocol %q is not among Protocols", alpn)
		}
	}
	ln, err := tls.Listen("tcp", cfg.Addr, &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: protos,
		// A certificate is asked of every caller and demanded (a node's)
		// unless the protocol is one of Unauthenticated.
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cfg.GetCertificate(), nil },
		VerifyConnection: func(cs tls.ConnectionState) error {
			if slices.Contains(cfg.Unauthenticated, cs.NegotiatedProtocol) {
				return nil
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("ring: a node certificate is required")
			}
			_, err := cfg.Verifier.VerifyNode(cs.PeerCertificates)
			return err
		},
	})
	if err != nil {
		return nil, fmt.Errorf("ring: peer listener: %w", err)
	}
	p.ln = ln
	return p, nil
}

func verifyNode(v NodeVerifier, raw [][]byte) error {
	var chain []*x509.Certificate
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		chain = append(chain, c)
	}
	_, err := v.VerifyNode(chain)
	return err
}

// Addr is the address peers reach this node at.
func (p *Peers) Addr() string { return p.ln.Addr().String() }

// Serve accepts peers until ctx ends or Close.
func (p *Peers) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { p.Close() })
	defer stop()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.isClosed() {
				return nil
			}
			return fmt.Errorf("ring: accept: %w", err)
		}
		// Under mu, so that no Add comes after Close began to Wait.
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return nil
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			p.servePeer(ctx, c.(*tls.Conn))
		}()
	}
}

func (p *Peers) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// servePeer serves one peer's session: each stream is a forwarded request.
func (p *Peers) servePeer(ctx context.Context, c *tls.Conn) {
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := c.HandshakeContext(hctx)
	cancel()
	if err != nil {
		c.Close()
		p.log.Warn("ring: peer refused", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	if alpn := c.ConnectionState().NegotiatedProtocol; alpn != PeerALPN {
		if fn := p.cfg.Protocols[alpn]; fn != nil {
			fn(c)
			return
		}
		c.Close()
		return
	}
	defer c.Close()
	sess, err := yamux.Server(c, peerYamux())
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		sess.Close()
		return
	}
	p.served[sess] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.served, sess)
		p.mu.Unlock()
		sess.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.serveStream(ctx, st)
		}()
	}
}

// serveStream opens the forwarded request's stream on the local tunnel and
// pipes bytes both ways until either side ends.
func (p *Peers) serveStream(ctx context.Context, st net.Conn) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req peerOpen
	if err := tunnel.ReadJSON(st, frameOpen, &req); err != nil {
		p.log.Warn("ring: bad peer stream", "err", err)
		return
	}
	st.SetReadDeadline(time.Time{})
	answer := func(res peerOpened) bool { return tunnel.WriteJSON(st, frameOpened, &res) == nil }
	switch {
	case req.Header == nil || req.Header.Validate() != nil:
		answer(peerOpened{Error: "malformed identity frame"})
		return
	case req.Hops > MaxHops:
		answer(peerOpened{Error: ErrLoop.Error()})
		return
	case !p.cfg.Local.Connected(req.Cluster):
		answer(peerOpened{Error: "the cluster's tunnel is not on this node", NoTunnel: true})
		return
	}
	agent, err := p.cfg.Local.Open(ctx, req.Cluster, req.Header)
	if err != nil {
		answer(peerOpened{Error: err.Error(), NoTunnel: errors.Is(err, tunnel.ErrNoTunnel)})
		return
	}
	defer agent.Close()
	if !answer(peerOpened{}) {
		return
	}
	pipe(st, agent)
}

// pipe copies both ways until one direction ends, then closes both.
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	go func() { io.Copy(a, b); a.Close(); done <- struct{}{} }()
	go func() { io.Copy(b, a); b.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// Open forwards a request for cluster to the peer at addr: a stream of the
// pooled session carrying the identity frame, then the request's bytes.
// An owner that does not hold the tunnel answers tunnel.ErrNoTunnel.
func (p *Peers) Open(ctx context.Context, addr, cluster string, h *tunnel.Header) (net.Conn, error) {
	sess, err := p.session(ctx, addr)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream()
	if err != nil {
		p.drop(addr, sess)
		return nil, fmt.Errorf("%w %s: %v", ErrPeer, addr, err)
	}
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	if err := tunnel.WriteJSON(st, frameOpen, &peerOpen{Cluster: cluster, Hops: 1, Header: h}); err != nil {
		st.Close()
		return nil, fmt.Errorf("%w %s: %v", ErrPeer, addr, err)
	}
	var res peerOpened
	if err := tunnel.ReadJSON(st, frameOpened, &res); err != nil {
		st.Close()
		return nil, fmt.Errorf("%w %s: %v", ErrPeer, addr, err)
	}
	st.SetDeadline(time.Time{})
	switch {
	case res.NoTunnel:
		st.Close()
		return nil, tunnel.ErrNoTunnel
	case res.Error != "":
		st.Close()
		return nil, fmt.Errorf("%w %s: %s", ErrPeer, addr, res.Error)
	}
	return st, nil
}

// DialProtocol opens a mutual-TLS connection to the peer at addr for
// another node-to-node protocol (one of a peer's Protocols), from this
// node's peer address, verified as a node's.
func (p *Peers) DialProtocol(ctx context.Context, addr, alpn string) (*tls.Conn, error) {
	c, err := p.dialer(alpn).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrPeer, addr, err)
	}
	return c.(*tls.Conn), nil
}

// DialUnauthenticated opens a connection to another node's peer port for
// one of its Unauthenticated protocols, without a node certificate (a new
// node enrolling); the other node's certificate is verified as a node's
// all the same.
func (p *Peers) DialUnauthenticated(ctx context.Context, addr, alpn string) (*tls.Conn, error) {
	d := p.dialer(alpn)
	d.Config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrPeer, addr, err)
	}
	return c.(*tls.Conn), nil
}

// dialer dials peers for protocol alpn.
func (p *Peers) dialer(alpn string) *tls.Dialer {
	// From the peer address, as gossip: nodes are told apart by address.
	var local *net.TCPAddr
	if a, ok := p.ln.Addr().(*net.TCPAddr); ok {
		local = localAddr(a.IP.String())
	}
	return &tls.Dialer{NetDialer: &net.Dialer{Timeout: p.cfg.DialTimeout, LocalAddr: local}, Config: &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpn},
		RootCAs:    p.cfg.Roots,
		// Peers are addressed by IP:port from gossip; the chain must be a
		// node's (VerifyConnection), whatever name it carries.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != alpn {
				return fmt.Errorf("ring: peer does not speak %s", alpn)
			}
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			return verifyNode(p.cfg.Verifier, raw)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.cfg.GetCertificate(), nil },
	}}
}

// session returns the pooled session to addr, dialling it if needed.
func (p *Peers) session(ctx context.Context, addr string) (*yamux.Session, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if s := p.sessions[addr]; s != nil && !s.IsClosed() {
		p.mu.Unlock()
		return s, nil
	}
	p.mu.Unlock()
	c, err := p.dialer(PeerALPN).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrPeer, addr, err)
	}
	s, err := yamux.Client(c, peerYamux())
	if err != nil {
		c.Close()
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		s.Close()
		return nil, ErrClosed
	}
	if old := p.sessions[addr]; old != nil && !old.IsClosed() {
		s.Close() // another caller dialled first
		return old, nil
	}
	p.sessions[addr] = s
	return s, nil
}

func (p *Peers) drop(addr string, s *yamux.Session) {
	p.mu.Lock()
	if p.sessions[addr] == s {
		delete(p.sessions, addr)
	}
	p.mu.Unlock()
	s.Close()
}

// Close stops accepting, closes every session, and waits for the goroutines
// serving peers. It is idempotent.
func (p *Peers) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	sessions := p.sessions
	p.sessions = map[string]*yamux.Session{}
	var served []*yamux.Session
	for s := range p.served {
		served = append(served, s)
	}
	p.mu.Unlock()
	p.ln.Close()
	for _, s := range sessions {
		s.Close()
	}
	for _, s := range served {
		s.Close()
	}
	p.wg.Wait()
	return nil
}

func peerYamux() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 10 * time.Second
	c.ConnectionWriteTimeout = 10 * time.Second
	c.MaxStreamWindowSize = tunnel.StreamWindow
	c.LogOutput = io.Discard
	return c
}
