package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hashicorp/yamux"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// gateway is a minimal gateway end: a TLS listener that verifies agent
// certificates with the real CA and serves their tunnels in a Registry.
type gateway struct {
	t     testing.TB
	auth  *ca.Authority
	reg   *Registry
	addr  string
	renew func(ctx context.Context, csrPEM []byte) ([]byte, time.Time, error)
	wg    sync.WaitGroup
}

func newGateway(t testing.TB) *gateway {
	t.Helper()
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{ALPN},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{t: t, auth: auth, reg: NewRegistry(nil), addr: l.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				tc := c.(*tls.Conn)
				if err := tc.HandshakeContext(ctx); err != nil {
					tc.Close()
					return
				}
				cluster, notAfter, err := auth.VerifyAgent(tc.ConnectionState().PeerCertificates)
				if err != nil {
					tc.Close()
					return
				}
				opts := ServeOptions{NotAfter: notAfter}
				if g.renew != nil {
					opts.Renew = g.renew
				}
				g.reg.Serve(ctx, cluster, tc, opts)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		cancel()
		g.reg.Close()
		g.wg.Wait()
	})
	return g
}

func (g *gateway) agentCert(cluster string, ttl time.Duration) *tls.Certificate {
	g.t.Helper()
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		g.t.Fatal(err)
	}
	chain, err := g.auth.IssueAgent(context.Background(), cluster, key.Public(), ttl)
	if err != nil {
		g.t.Fatal(err)
	}
	c, err := tls.X509KeyPair(chain, keyPEM)
	if err != nil {
		g.t.Fatal(err)
	}
	return &c
}

// runClient runs an agent tunnel client until the test ends.
func (g *gateway) runClient(cfg ClientConfig) *Client {
	g.t.Helper()
	cfg.GatewayAddr = g.addr
	cfg.RootCAs = g.auth.RootPool()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond
	}
	c, err := NewClient(cfg)
	if err != nil {
		g.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	g.t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, testenv.Cond(what, cond))
}

// whoami answers every request with the stream header's user.
var whoami = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	h, ok := HeaderFromContext(r.Context())
	if !ok {
		http.Error(w, "no header", http.StatusInternalServerError)
		return
	}
	fmt.Fprint(w, h.User)
})

// get sends one HTTP request down cluster's tunnel as user.
func get(t testing.TB, reg *Registry, cluster, user string) (string, error) {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return reg.Open(ctx, cluster, &Header{RequestID: "r", User: user, Grants: []grant.Grant{{Role: "view"}}})
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + cluster + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestStreamsCarryTheHeaderAndControlMessagesAreAnswered(t *testing.T) {
	g := newGateway(t)
	var mu sync.Mutex
	var got []*Control
	cert := g.agentCert("c1", time.Hour)
	c := g.runClient(ClientConfig{
		GetCertificate: func() (*tls.Certificate, error) { return cert, nil },
		Handler:        whoami,
		Control: ControlFunc(func(_ context.Context, c *Control) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, c)
			if c.User == "broken" {
				return errors.New("cannot delete service account")
			}
			return nil
		}),
	})
	waitFor(t, "tunnel", func() bool { return g.reg.Connected("c1") })
	if !c.Connected() {
		t.Fatal("client does not report the tunnel")
	}
	if out, err := get(t, g.reg, "c1", "ada"); err != nil || out != "ada" {
		t.Fatalf("request: %q %v", out, err)
	}

	ctx := context.Background()
	if err := g.reg.Control(ctx, "c1", &Control{Op: OpRevoke, User: "ada"}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	sync := &Control{Op: OpSync, User: "bob", Grants: []grant.Grant{{Role: "view", Namespace: "team"}}}
	if err := g.reg.Control(ctx, "c1", sync); err != nil {
		t.Fatalf("sync: %v", err)
	}
	err := g.reg.Control(ctx, "c1", &Control{Op: OpRevoke, User: "broken"})
	if !errors.Is(err, ErrControlFailed) || !strings.Contains(err.Error(), "cannot delete service account") {
		t.Fatalf("agent error not carried back: %v", err)
	}
	mu.Lock()
	if len(got) != 3 || got[0].Op != OpRevoke || got[0].User != "ada" || got[1].Op != OpSync || got[1].Grants[0].Key() != sync.Grants[0].Key() {
		t.Fatalf("agent saw %+v", got)
	}
	mu.Unlock()

	// Refused before anything is sent.
	if err := g.reg.Control(ctx, "c1", &Control{Op: "shutdown", User: "x"}); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("unknown op: %v", err)
	}
	if err := g.reg.Control(ctx, "nope", &Control{Op: OpRevoke, User: "x"}); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("unknown cluster: %v", err)
	}
	if got := g.reg.Clusters(); len(got) != 1 || got[0] != "c1" {
		t.Fatalf("Clusters() = %v", got)
	}
}

func TestAgentWithoutControlHandlerAnswersWithError(t *testing.T) {
	g := newGateway(t)
	cert := g.agentCert("c1", time.Hour)
	g.runClient(ClientConfig{GetCertificate: func() (*tls.Certificate, error) { return cert, nil }, Handler: whoami})
	waitFor(t, "tunnel", func() bool { return g.reg.Connected("c1") })
	if err := g.reg.Control(context.Background(), "c1", &Control{Op: OpRevoke, User: "ada"}); !errors.Is(err, ErrControlFailed) {
		t.Fatalf("got %v", err)
	}
}

// A tunnel ends when the agent's certificate does, unless the agent renews
// over the tunnel: then the same tunnel (no reconnect) lives on.
func TestRenewalOverTheTunnelKeepsItUp(t *testing.T) {
	g := newGateway(t)
	const ttl = 1500 * time.Millisecond
	var renewedFor atomic.Value
	g.renew = func(_ context.Context, csrPEM []byte) ([]byte, time.Time, error) {
		renewedFor.Store(string(csrPEM))
		notAfter := time.Now().Add(time.Hour)
		return []byte("CHAIN"), notAfter, nil
	}

	// Without renewal the tunnel is closed at expiry.
	short := g.agentCert("expiring", ttl)
	g.runClient(ClientConfig{GetCertificate: func() (*tls.Certificate, error) { return short, nil }, Handler: whoami})
	waitFor(t, "tunnel", func() bool { return g.reg.Connected("expiring") })
	waitFor(t, "tunnel closed at expiry", func() bool { return !g.reg.Connected("expiring") })

	// With renewal it stays up past the first certificate's expiry.
	cert := g.agentCert("renewing", ttl)
	notAfter := cert.Leaf.NotAfter
	c := g.runClient(ClientConfig{GetCertificate: func() (*tls.Certificate, error) { return cert, nil }, Handler: whoami})
	waitFor(t, "tunnel", func() bool { return g.reg.Connected("renewing") && c.Connected() })
	chain, err := c.RenewCertificate(context.Background(), []byte("CSR"))
	if err != nil || string(chain) != "CHAIN" || renewedFor.Load() != "CSR" {
		t.Fatalf("renew: %q %v", chain, err)
	}
	waitFor(t, "the first certificate's expiry to pass", func() bool { return time.Now().After(notAfter.Add(300 * time.Millisecond)) })
	if !g.reg.Connected("renewing") || c.Sessions() != 1 {
		t.Fatalf("tunnel dropped despite renewal: connected=%v sessions=%d", g.reg.Connected("renewing"), c.Sessions())
	}
	if out, err := get(t, g.reg, "renewing", "ada"); err != nil || out != "ada" {
		t.Fatalf("request after renewal: %q %v", out, err)
	}
}

func TestRenewalRefusedAndNotConnected(t *testing.T) {
	g := newGateway(t)
	g.renew = func(context.Context, []byte) ([]byte, time.Time, error) {
		return nil, time.Time{}, errors.New("csr: bad signature")
	}
	cert := g.agentCert("c1", time.Hour)
	c, err := NewClient(ClientConfig{GatewayAddr: g.addr, RootCAs: g.auth.RootPool(), MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		GetCertificate: func() (*tls.Certificate, error) { return cert, nil }, Handler: whoami})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RenewCertificate(context.Background(), []byte("CSR")); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("before connecting: %v", err)
	}
	c = g.runClient(ClientConfig{GetCertificate: func() (*tls.Certificate, error) { return cert, nil }, Handler: whoami})
	waitFor(t, "tunnel", func() bool { return g.reg.Connected("c1") && c.Connected() })
	if _, err := c.RenewCertificate(context.Background(), []byte("CSR")); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Fatalf("refusal: %v", err)
	}
}

// connectProxy is an HTTP CONNECT proxy, as a corporate egress proxy is: it
// checks Proxy-Authorization and then splices bytes.
type connectProxy struct {
	addr     string
	want     string // expected Proxy-Authorization
	mu       sync.Mutex
	connects []string
}

func newConnectProxy(t *testing.T, user, pass string) *connectProxy {
	p := &connectProxy{want: "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	var wg sync.WaitGroup
	var conns sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				if req.Header.Get("Proxy-Authorization") != p.want {
					io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
					return
				}
				p.mu.Lock()
				p.connects = append(p.connects, req.Host)
				p.mu.Unlock()
				up, err := net.Dial("tcp", req.Host)
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				conns.Store(up, true)
				defer up.Close()
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	return p
}

func TestTunnelThroughConnectProxy(t *testing.T) {
	g := newGateway(t)
	p := newConnectProxy(t, "agent", "s3cret")
	cert := g.agentCert("c1", time.Hour)
	proxyURL, _ := url.Parse("http://agent:s3cret@" + p.addr)
	g.runClient(ClientConfig{
		GetCertificate: func() (*tls.Certificate, error) { return cert, nil },
		Handler:        whoami,
		Proxy:          func(*url.URL) (*url.URL, error) { return proxyURL, nil },
	})
	waitFor(t, "tunnel through the proxy", func() bool { return g.reg.Connected("c1") })
	if out, err := get(t, g.reg, "c1", "ada"); err != nil || out != "ada" {
		t.Fatalf("request: %q %v", out, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.connects) == 0 || p.connects[0] != g.addr {
		t.Fatalf("proxy saw CONNECT %v, want %s", p.connects, g.addr)
	}
}

func TestConnectProxyRefusals(t *testing.T) {
	p := newConnectProxy(t, "agent", "s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wrong, _ := url.Parse("http://agent:wrong@" + p.addr)
	if _, err := dialConnect(ctx, wrong, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "407") {
		t.Fatalf("bad proxy credentials: %v", err)
	}
	if strings.Contains(fmt.Sprint(dialConnect(ctx, wrong, "127.0.0.1:1")), "wrong") {
		t.Fatal("error message leaks the proxy password")
	}
	socks, _ := url.Parse("socks5://" + p.addr)
	if _, err := dialConnect(ctx, socks, "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "only http://") {
		t.Fatalf("socks proxy: %v", err)
	}
}

// BenchmarkIdleTunnelHeap connects 1,000 agents to one registry (both ends
// in this process, over loopback TLS 1.3 and yamux) and reports the Go heap
// that one idle tunnel costs, both ends together.
//
//	go test -run '^$' -bench BenchmarkIdleTunnelHeap -benchtime 1x ./tunnel/
func BenchmarkIdleTunnelHeap(b *testing.B) {
	agents := 1000
	if testing.Short() {
		agents = 50
	}
	for range b.N {
		g := newGateway(b)
		certs := make([]*tls.Certificate, agents)
		for i := range certs {
			certs[i] = g.agentCert(fmt.Sprintf("c-%d", i), time.Hour)
		}
		heap := func() uint64 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapInuse
		}
		before := heap()
		for _, cert := range certs {
			// Each agent is its own cluster, as in production.
			g.runClient(ClientConfig{GetCertificate: func() (*tls.Certificate, error) { return cert, nil }, Handler: whoami})
		}
		waitFor(b, "all tunnels", func() bool { return g.reg.Len() == agents })
		b.ReportMetric(float64(heap()-before)/float64(agents), "heap-B/tunnel")
		b.ReportMetric(float64(runtime.NumGoroutine())/float64(agents), "goroutines/tunnel")
	}
}

// Close returns only once every Serve call has returned, and a registry
// that is closed refuses new tunnels.
func TestRegistryCloseWaitsForServe(t *testing.T) {
	reg := NewRegistry(nil)
	served := make(chan struct{})
	srv, cli := net.Pipe()
	defer cli.Close()
	go func() {
		defer close(served)
		reg.Serve(context.Background(), "c1", srv, ServeOptions{})
	}()
	// The client end must speak yamux for the session to come up.
	sess, err := yamux.Client(cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	waitFor(t, "the tunnel", func() bool { return reg.Connected("c1") })
	reg.Close()
	select {
	case <-served:
	default:
		t.Fatal("Close returned while Serve was still running")
	}
	a, b := net.Pipe()
	defer b.Close()
	if err := reg.Serve(context.Background(), "c2", a, ServeOptions{}); !errors.Is(err, ErrRegistryClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
}

// A revocation of a cluster's older agent certificates closes a tunnel of
// such a certificate, and leaves a newer agent's.
func TestDisconnectIssuedBefore(t *testing.T) {
	reg := NewRegistry(nil)
	defer reg.Close()
	issued := time.Now()
	srv, cli := net.Pipe()
	defer cli.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		reg.Serve(context.Background(), "c1", srv, ServeOptions{Issued: issued})
	}()
	sess, err := yamux.Client(cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	waitFor(t, "the tunnel", func() bool { return reg.Connected("c1") })
	if reg.DisconnectIssuedBefore("c1", issued.Add(-time.Second)) || !reg.Connected("c1") {
		t.Fatal("a tunnel of a newer certificate was closed")
	}
	if !reg.DisconnectIssuedBefore("c1", issued) {
		t.Fatal("the revoked certificate's tunnel was not closed")
	}
	<-served
	if reg.Connected("c1") {
		t.Fatal("still connected")
	}
}

// Two gateways that redirect the agent to each other: the agent follows
// one redirect per attempt, counts the second as a failed attempt, and
// backs off - no panic, no storm.
func TestRedirectLoopBacksOff(t *testing.T) {
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ls [2]net.Listener
	for i := range ls {
		if ls[i], err = tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
			ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{ALPN2}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i, l := range ls {
		other := ls[1-i].Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.(*tls.Conn).Handshake()
				WriteJSON(c, FrameWelcome, &Welcome{Redirect: other})
				c.Close()
			}
		}()
	}
	defer func() {
		for _, l := range ls {
			l.Close()
		}
		wg.Wait()
	}()
	key, keyPEM, _ := pki.NewKey()
	chain, _ := auth.IssueAgent(context.Background(), "c1", key.Public(), time.Hour)
	agentCert, _ := tls.X509KeyPair(chain, keyPEM)
	cfg := DefaultClientConfig()
	cfg.GatewayAddr, cfg.ServerName, cfg.RootCAs, cfg.Proxy = ls[0].Addr().String(), "127.0.0.1", auth.RootPool(), nil
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 40*time.Millisecond
	cfg.GetCertificate = func() (*tls.Certificate, error) { return &agentCert, nil }
	cfg.Handler = whoami
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	// Attempts counts an attempt when it starts and Redirects once its
	// redirect is read: wait for the redirects themselves.
	waitFor(t, "three redirects", func() bool { return c.Redirects() >= 3 })
	cancel()
	<-done
	if c.Sessions() != 0 || c.Redirects() < 3 || c.Redirects() > c.Attempts() {
		t.Fatalf("sessions %d, redirects %d, attempts %d", c.Sessions(), c.Redirects(), c.Attempts())
	}
}

// The registry pings every tunnel from one loop: a live agent answers and
// stays; one that stops answering is closed after the dead-after time.
func TestRegistryPingsTunnels(t *testing.T) {
	reg := NewRegistry(nil)
	reg.pingEvery, reg.deadAfter = 50*time.Millisecond, 200*time.Millisecond
	defer reg.Close()
	serve := func(cluster string) (net.Conn, chan struct{}) {
		srv, cli := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			reg.Serve(context.Background(), cluster, srv, ServeOptions{})
		}()
		return cli, done
	}
	// A live agent: yamux answers the pings.
	liveConn, liveDone := serve("live")
	live, err := yamux.Client(liveConn, yamuxConfig(nil, false))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	// A hung agent: it spoke yamux once, then reads nothing more.
	hungConn, hungDone := serve("hung")
	defer hungConn.Close()
	waitFor(t, "both tunnels", func() bool { return reg.Connected("live") && reg.Connected("hung") })
	start := time.Now()
	select {
	case <-hungDone:
		t.Logf("the hung tunnel closed %s after both were up", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the hung tunnel was not closed")
	}
	if !reg.Connected("live") {
		t.Fatal("the live tunnel was closed")
	}
	select {
	case <-liveDone:
		t.Fatal("the live tunnel's Serve returned")
	default:
	}
}

// The gateway's trust bundle reaches the agent over the tunnel (OpTrust,
// a root rotation): the client verifies the gateway with it from then on
// and tells its owner; a bundle that is not CA certificates is refused
// before it is sent.
func TestTrustBundleOverTheTunnel(t *testing.T) {
	g := newGateway(t)
	cert := g.agentCert("c1", time.Hour)
	var got atomic.Value
	c := g.runClient(ClientConfig{GetCertificate: func() (*tls.Certificate, error) { return cert, nil }, Handler: whoami,
		OnTrust: func(b []byte) { got.Store(string(b)) }})
	waitFor(t, "tunnel", func() bool { return g.reg.Connected("c1") })
	before := c.roots.Load()
	other, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	bundle := string(g.auth.RootPEM()) + string(other.RootPEM())
	if err := g.reg.Control(context.Background(), "c1", &Control{Op: OpTrust, Trust: bundle}); err != nil {
		t.Fatalf("trust: %v", err)
	}
	if got.Load() != bundle || c.roots.Load() == before {
		t.Fatal("the client did not take the bundle")
	}
	leaf := cert.Certificate[0]
	for _, bad := range []string{"", "not pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf}))} {
		if err := g.reg.Control(context.Background(), "c1", &Control{Op: OpTrust, Trust: bad}); !errors.Is(err, ErrBadHeader) {
			t.Fatalf("bundle %.20q: %v", bad, err)
		}
	}
	if err := g.reg.Control(context.Background(), "c1", &Control{Op: OpRevoke, User: "ada", Trust: bundle}); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("a bundle on another op: %v", err)
	}
}
