package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// ClientConfig configures the agent's end of the tunnel.
type ClientConfig struct {
	// GatewayAddr is the gateway's public address, host:port.
	GatewayAddr string
	// ServerName is the name checked in the gateway's certificate; empty
	// means the host of GatewayAddr.
	ServerName string
	// RootCAs verifies the gateway (from the bootstrap Secret).
	RootCAs *x509.CertPool
	// GetCertificate returns the agent's client certificate. It is called on
	// every dial, so a renewed certificate is used from the next connection.
	GetCertificate func() (*tls.Certificate, error)
	// Handler serves each stream's HTTP request. HeaderFromContext returns
	// the stream's Header inside it.
	Handler http.Handler
	// Hello returns what the agent says of itself when a tunnel starts
	// (version 2); nil says nothing.
	Hello func() Hello
	// Control carries out the gateway's control messages; nil answers each
	// with an error.
	Control ControlHandler
	// OnTrust, if set, is told the gateway's new trust bundle (OpTrust),
	// which the client verifies the gateway with from then on: the agent
	// keeps it for its next start.
	OnTrust func(bundle []byte)
	// Proxy returns the HTTP CONNECT proxy for a URL, or nil for none. The
	// default reads HTTPS_PROXY and NO_PROXY.
	Proxy func(*url.URL) (*url.URL, error)
	// MinBackoff and MaxBackoff bound the jittered exponential delay between
	// connection attempts: quick recovery from a blip, and a thousand agents
	// do not stampede a restarted gateway.
	MinBackoff, MaxBackoff time.Duration
	// StableAfter is how long a tunnel must have served for the backoff to
	// start again from MinBackoff. Two seconds tells a gateway that took
	// the agent and then died (a node killed: reconnect at once) from one
	// that accepts and drops it at once (back off, no storm). It was
	// MaxBackoff: agents whose nodes were killed a few seconds after each
	// other then waited up to 30 s (BenchmarkOwnerKill). Zero means 2 s.
	StableAfter time.Duration
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
}

// DefaultClientConfig returns backoff between 250 ms and 30 s and proxy
// settings from the environment.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		MinBackoff:  250 * time.Millisecond,
		MaxBackoff:  30 * time.Second,
		StableAfter: 2 * time.Second,
		Proxy:       func(u *url.URL) (*url.URL, error) { return http.ProxyFromEnvironment(&http.Request{URL: u}) },
	}
}

// Validate checks the configuration.
func (c ClientConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.GatewayAddr); err != nil {
		return fmt.Errorf("tunnel: GatewayAddr %q: %w", c.GatewayAddr, err)
	}
	switch {
	case c.RootCAs == nil:
		return errors.New("tunnel: RootCAs is required")
	case c.GetCertificate == nil:
		return errors.New("tunnel: GetCertificate is required")
	case c.Handler == nil:
		return errors.New("tunnel: Handler is required")
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return errors.New("tunnel: need 0 < MinBackoff <= MaxBackoff")
	case c.StableAfter < 0:
		return errors.New("tunnel: StableAfter must not be negative")
	}
	return nil
}

// ControlHandler carries out a gateway's control message. An error is sent
// back to the gateway as the message's result.
type ControlHandler interface {
	Control(ctx context.Context, c *Control) error
}

// ControlFunc adapts a function to ControlHandler.
type ControlFunc func(ctx context.Context, c *Control) error

// Control calls f.
func (f ControlFunc) Control(ctx context.Context, c *Control) error { return f(ctx, c) }

// Client is the agent's end of the tunnel: it dials the gateway, keeps the
// tunnel up, and serves the gateway's streams.
type Client struct {
	cfg       ClientConfig
	log       *slog.Logger
	connected atomic.Bool
	sessions  atomic.Int64 // tunnels established so far
	redirects atomic.Int64 // redirects followed so far
	attempts  atomic.Int64 // connections tried so far
	// roots verify the gateway: RootCAs, then each bundle of OpTrust.
	roots atomic.Pointer[x509.CertPool]

	mu     sync.Mutex // guards sess and remote
	sess   *yamux.Session
	remote string // the address of the node holding the tunnel
	node   string // its name, from its welcome

	// A move (OpMove) serves a second session beside the first until the
	// gateway closes the first. active counts the sessions being served;
	// idle receives when it drops to zero; moves owns the goroutines of
	// moved sessions; runCtx is Run's context, which they live in.
	active atomic.Int32
	idle   chan struct{}
	moves  sync.WaitGroup
	runCtx context.Context
}

// NewClient returns a client for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(cfg.GatewayAddr)
	}
	if cfg.Proxy == nil {
		cfg.Proxy = func(*url.URL) (*url.URL, error) { return nil, nil }
	}
	if cfg.StableAfter == 0 {
		cfg.StableAfter = 2 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: log, idle: make(chan struct{}, 1)}
	c.roots.Store(cfg.RootCAs)
	return c, nil
}

// Connected reports whether a tunnel is up now.
func (c *Client) Connected() bool { return c.connected.Load() }

// Sessions returns how many tunnels have been established since Run began.
func (c *Client) Sessions() int64 { return c.sessions.Load() }

// Run keeps a tunnel to the gateway until ctx ends, reconnecting with
// jittered exponential backoff. It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	c.mu.Lock()
	c.runCtx = ctx
	c.mu.Unlock()
	defer c.moves.Wait()
	backoff := c.cfg.MinBackoff
	quick := 0 // redirects to an unreachable node in a row
	for {
		start := time.Now()
		conn, err := c.dial(ctx)
		if errors.Is(err, errRedirectUnreachable) && quick < quickRetries {
			// The gateway is up and its ring is about to move the owner:
			// try again soon rather than later.
			quick++
			backoff = c.cfg.MinBackoff
		} else if err != nil && !errors.Is(err, errRedirectUnreachable) {
			quick = 0
		}
		if err == nil {
			quick = 0
			c.active.Add(1)
			c.serve(ctx, conn, nil)
			// A session that moved on: serve the new one until it ends.
			for c.active.Load() > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-c.idle:
				}
			}
			// A tunnel that stayed up a while resets the backoff.
			if time.Since(start) > c.cfg.StableAfter {
				backoff = c.cfg.MinBackoff
			}
		} else if ctx.Err() == nil {
			c.log.Warn("tunnel: cannot reach gateway", "addr", c.cfg.GatewayAddr, "err", err, "retry", backoff)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Full jitter in [backoff/2, backoff].
		wait := backoff/2 + rand.N(backoff/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	c.attempts.Add(1)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := c.dialRaw(dctx, c.cfg.GatewayAddr)
	if err != nil {
		return nil, err
	}
	tc, redirect, err := c.handshake(dctx, raw)
	if err != nil || redirect == "" {
		return tc, err
	}
	// The node that should hold the tunnel, dialled directly, once: a
	// second redirect (nodes that disagree about owners, for a moment) is
	// a failed attempt, retried with backoff from the gateway address -
	// never a storm of redirects.
	c.redirects.Add(1)
	c.log.Info("tunnel: redirected to the cluster's node", "from", c.cfg.GatewayAddr, "to", redirect)
	if raw, err = c.dialRaw(dctx, redirect); err != nil {
		return nil, fmt.Errorf("%w %s: %w", errRedirectUnreachable, redirect, err)
	}
	tc, again, err := c.handshake(dctx, raw)
	if err != nil {
		return nil, fmt.Errorf("redirected to %s: %w", redirect, err)
	}
	if again != "" { // handshake has closed the connection
		return nil, fmt.Errorf("%w: %s sent the agent on to %s", ErrRedirectLoop, redirect, again)
	}
	return tc, nil
}

// dialRaw opens a TCP connection to addr, through the HTTPS proxy if one
// is configured for it.
func (c *Client) dialRaw(ctx context.Context, addr string) (net.Conn, error) {
	proxyURL, err := c.cfg.Proxy(&url.URL{Scheme: "https", Host: addr})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if proxyURL != nil {
		return dialConnect(ctx, proxyURL, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// errRedirectUnreachable: the gateway answered, but the node it sent the
// agent to cannot be reached - most likely a node that has just died and
// that the gateway's ring has not yet declared dead (about a second).
var errRedirectUnreachable = errors.New("tunnel: redirected to an unreachable node")

// quickRetries is how many redirects to an unreachable node in a row are
// retried after MinBackoff rather than a doubling backoff: enough to
// outlast failure detection (1.2 s at 250 ms), few enough that an agent
// that cannot reach its owner for another reason soon backs off as usual.
const quickRetries = 5

// ErrRedirectLoop: a node the agent was redirected to redirected it again.
var ErrRedirectLoop = errors.New("tunnel: redirected twice")

// handshake runs TLS on raw and, on a version-2 tunnel, reads the
// gateway's welcome: a redirect closes the connection and is returned.
func (c *Client) handshake(ctx context.Context, raw net.Conn) (net.Conn, string, error) {
	tc := tls.Client(raw, &tls.Config{
		ServerName: c.cfg.ServerName,
		RootCAs:    c.roots.Load(),
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN2, ALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.cfg.GetCertificate()
		},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, "", err
	}
	switch p := tc.ConnectionState().NegotiatedProtocol; p {
	case ALPN:
		return tc, "", nil
	case ALPN2:
	default:
		tc.Close()
		return nil, "", fmt.Errorf("gateway does not speak %s (negotiated %q)", ALPN2, p)
	}
	if d, ok := ctx.Deadline(); ok {
		tc.SetReadDeadline(d)
	}
	var w Welcome
	if err := ReadJSON(tc, FrameWelcome, &w); err != nil {
		tc.Close()
		return nil, "", fmt.Errorf("tunnel: welcome: %w", err)
	}
	tc.SetReadDeadline(time.Time{})
	if w.Redirect != "" {
		tc.Close()
		if _, _, err := net.SplitHostPort(w.Redirect); err != nil {
			return nil, "", fmt.Errorf("tunnel: bad redirect %q", w.Redirect)
		}
		return nil, w.Redirect, nil
	}
	var hello Hello
	if c.cfg.Hello != nil {
		hello = c.cfg.Hello()
	}
	if err := WriteJSON(tc, FrameHello, &hello); err != nil {
		tc.Close()
		return nil, "", fmt.Errorf("tunnel: hello: %w", err)
	}
	return &welcomedConn{Conn: tc, node: w.Node}, "", nil
}

// welcomedConn is a tunnel's connection with the name of the node that
// welcomed it.
type welcomedConn struct {
	*tls.Conn
	node string
}

// Remote returns the address of the node holding the current tunnel, or
// "" when none is up.
func (c *Client) Remote() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return ""
	}
	return c.remote
}

// Node returns the name of the node holding the current tunnel, as it
// said in its welcome; "" when none is up or the gateway did not say.
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return ""
	}
	return c.node
}

// Attempts returns how many times the client has dialled the gateway.
func (c *Client) Attempts() int64 { return c.attempts.Load() }

// Redirects returns how many redirects the agent has followed.
func (c *Client) Redirects() int64 { return c.redirects.Load() }

// serve runs one tunnel until it ends or ctx is done, then closes every
// stream and returns after every stream has been served. The caller has
// counted it in active; ready, if set, is closed once it serves.
func (c *Client) serve(ctx context.Context, conn net.Conn, ready chan<- struct{}) {
	defer func() {
		if c.active.Add(-1) == 0 {
			select {
			case c.idle <- struct{}{}:
			default:
			}
		}
	}()
	sess, err := yamux.Client(CoalesceWrites(conn), yamuxConfig(c.log, true))
	if err != nil {
		conn.Close()
		return
	}
	c.mu.Lock()
	c.sess = sess
	c.remote = conn.RemoteAddr().String()
	c.node = ""
	if wc, ok := conn.(*welcomedConn); ok {
		c.node = wc.node
	}
	c.mu.Unlock()
	c.connected.Store(true)
	c.sessions.Add(1)
	c.log.Info("tunnel up", "gateway", c.cfg.GatewayAddr)
	srv := &http.Server{
		Handler: c.cfg.Handler,
		// The request line must come promptly; the request itself may then
		// stream for hours (exec, watch).
		ReadHeaderTimeout: 30 * time.Second,
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return context.WithValue(ctx, streamKey{}, nc)
		},
		ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	ln := &streamListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: sess.Addr()}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		srv.Serve(ln)
	}()
	go func() {
		defer wg.Done()
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.dispatch(sctx, st, ln)
			}()
		}
	}()
	if ready != nil {
		close(ready)
	}
	select {
	case <-sess.CloseChan():
	case <-ctx.Done():
	}
	c.mu.Lock()
	if c.sess == sess { // a moved session may have taken over
		c.sess = nil
		c.connected.Store(false)
	}
	c.mu.Unlock()
	cancel()
	sess.Close()
	srv.Close() // closes the listener and every open stream
	wg.Wait()
	c.log.Info("tunnel down", "gateway", c.cfg.GatewayAddr)
}

// dispatch reads a gateway stream's first frame, in the stream's own
// goroutine (so a slow stream never holds up the others), and hands a
// person's stream to the HTTP server or carries out a control message.
func (c *Client) dispatch(ctx context.Context, st *yamux.Stream, ln *streamListener) {
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	t, payload, err := ReadFrame(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		c.log.Warn("tunnel: bad stream from gateway", "err", err)
		st.Close()
		return
	}
	switch t {
	case FrameControl:
		if ctl, err := ParseControl(payload); err == nil && ctl.Op == OpTrust {
			defer st.Close()
			pool, _ := TrustPool([]byte(ctl.Trust)) // checked by ParseControl
			c.roots.Store(pool)
			c.log.Info("tunnel: the gateway's trust bundle changed")
			if c.cfg.OnTrust != nil {
				c.cfg.OnTrust([]byte(ctl.Trust))
			}
			st.SetWriteDeadline(time.Now().Add(30 * time.Second))
			WriteJSON(st, FrameResult, &Result{})
			return
		}
		if ctl, err := ParseControl(payload); err == nil && ctl.Op == OpMove {
			defer st.Close()
			var res Result
			if err := c.move(ctl.Addr); err != nil {
				c.log.Warn("tunnel: move refused", "to", ctl.Addr, "err", err)
				res.Error = err.Error()
			}
			st.SetWriteDeadline(time.Now().Add(30 * time.Second))
			WriteJSON(st, FrameResult, &res)
			return
		}
		c.control(ctx, st, payload)
	case FrameHeader:
		h, err := ParseHeader(payload)
		if err != nil {
			c.log.Warn("tunnel: bad stream header", "err", err)
			st.Close()
			return
		}
		select {
		case ln.conns <- &streamConn{Stream: st, header: h}:
		case <-ln.done:
			st.Close()
		}
	default:
		c.log.Warn("tunnel: unexpected frame from gateway", "type", t)
		st.Close()
	}
}

// control carries out a gateway's control message with the configured
// handler and answers it.
func (c *Client) control(ctx context.Context, st *yamux.Stream, payload []byte) {
	defer st.Close()
	var res Result
	ctl, err := ParseControl(payload)
	switch {
	case err != nil:
		res.Error = err.Error()
	case c.cfg.Control == nil:
		res.Error = "this agent takes no control messages"
	default:
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := c.cfg.Control.Control(cctx, ctl); err != nil {
			res.Error = err.Error()
		}
		cancel()
	}
	st.SetWriteDeadline(time.Now().Add(30 * time.Second))
	WriteJSON(st, FrameResult, &res)
}

// move opens a tunnel to the node at addr and serves it beside the current
// one, returning once it serves: the gateway then stops using the current
// tunnel and closes it when its streams are done. A node that redirects
// again refuses the move.
func (c *Client) move(addr string) error {
	c.mu.Lock()
	ctx := c.runCtx
	c.mu.Unlock()
	if ctx == nil {
		return errors.New("tunnel: not running")
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := c.dialRaw(dctx, addr)
	if err != nil {
		return fmt.Errorf("move to %s: %w", addr, err)
	}
	tc, redirect, err := c.handshake(dctx, raw)
	if err != nil {
		return fmt.Errorf("move to %s: %w", addr, err)
	}
	if redirect != "" {
		return fmt.Errorf("%w: %s sent the agent on to %s", ErrRedirectLoop, addr, redirect)
	}
	ready := make(chan struct{})
	c.active.Add(1)
	c.moves.Add(1)
	go func() {
		defer c.moves.Done()
		c.serve(ctx, tc, ready)
	}()
	select {
	case <-ready:
		c.log.Info("tunnel: moved", "to", addr)
		return nil
	case <-dctx.Done():
		return fmt.Errorf("move to %s: %w", addr, dctx.Err())
	}
}

// ErrNotConnected is returned by RenewCertificate when no tunnel is up.
var ErrNotConnected = errors.New("tunnel: not connected")

// RenewCertificate asks the gateway, over the current tunnel, to sign csrPEM
// for this agent's cluster, and returns the new chain (PEM). The tunnel
// stays up: the gateway extends its life to the new certificate's.
func (c *Client) RenewCertificate(ctx context.Context, csrPEM []byte) ([]byte, error) {
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return nil, ErrNotConnected
	}
	st, err := sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("tunnel: renew: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(30 * time.Second))
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	if err := WriteJSON(st, FrameRenew, &Renew{CSR: string(csrPEM)}); err != nil {
		return nil, fmt.Errorf("tunnel: renew: %w", err)
	}
	var res Result
	if err := ReadJSON(st, FrameResult, &res); err != nil {
		return nil, fmt.Errorf("tunnel: renew: %w", err)
	}
	if res.Error != "" {
		return nil, fmt.Errorf("tunnel: renew: gateway: %s", res.Error)
	}
	return []byte(res.Certificate), nil
}

// dialConnect opens a TCP connection to target through an HTTP CONNECT
// proxy.
func dialConnect(ctx context.Context, proxy *url.URL, target string) (net.Conn, error) {
	if proxy.Scheme != "http" {
		return nil, fmt.Errorf("proxy %s: only http:// CONNECT proxies are supported", proxy.Redacted())
	}
	addr := proxy.Host
	if proxy.Port() == "" {
		addr = net.JoinHostPort(proxy.Hostname(), "80")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", proxy.Redacted(), err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: target}, Host: target, Header: http.Header{}}
	if u := proxy.User; u != nil {
		pw, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)))
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: %w", proxy.Redacted(), err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: %w", proxy.Redacted(), err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: CONNECT %s: %s", proxy.Redacted(), target, resp.Status)
	}
	// TLS speaks first, so a proxy that already sent bytes is broken.
	if br.Buffered() > 0 {
		conn.Close()
		return nil, fmt.Errorf("proxy %s: unexpected data after CONNECT response", proxy.Redacted())
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

type streamKey struct{}

// HeaderFromContext returns the Header of the stream a request arrived on,
// inside a Handler given to ClientConfig.
func HeaderFromContext(ctx context.Context) (*Header, bool) {
	sc, ok := ctx.Value(streamKey{}).(*streamConn)
	if !ok || sc.header == nil {
		return nil, false
	}
	return sc.header, true
}

// streamListener hands people's streams, header already read, to an
// http.Server.
type streamListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	addr      net.Addr
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return l.addr }

// streamConn is a person's stream whose Header frame has been read.
type streamConn struct {
	*yamux.Stream
	header *Header // read-only
}

// GatewayAddr returns the host:port an agent dials for a gateway URL
// (https://HOST[:PORT], 443 by default) and the host its certificate must
// name.
func GatewayAddr(gatewayURL string) (addr, host string, err error) {
	u, err := url.Parse(gatewayURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", "", fmt.Errorf("tunnel: gateway URL %q must be https://HOST[:PORT]", gatewayURL)
	}
	addr = u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	return addr, u.Hostname(), nil
}
