// Package node is the Gatehouse gateway node: the process that accepts
// people's kubectl requests and agents' tunnels on one public TLS port,
// authenticates and authorizes each request, audits it and sends it down the
// tunnel of the cluster it names.
//
// One port serves both: a TLS client that negotiates the tunnel's ALPN
// (tunnel.ALPN) is an agent, and must present an agent certificate; every
// other client speaks HTTP/1.1 or HTTP/2 and must present a person's
// certificate to reach /k8s/CLUSTER/.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/util/validation"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/kubeapi"
	"github.com/gatehouse-dev/gatehouse/tunnel"
	"github.com/prometheus/client_golang/prometheus"
)

// Verifier checks client certificate chains. *ca.Authority implements it.
type Verifier interface {
	// VerifyUser returns the person a chain names, or an error saying why
	// it is refused (expired, wrong CA, revoked...).
	VerifyUser(chain []*x509.Certificate) (ca.UserIdentity, error)
	// VerifyAgent returns the cluster an agent chain names.
	VerifyAgent(chain []*x509.Certificate) (cluster string, notAfter time.Time, err error)
}

// Grants answers what Kubernetes access a person has on a cluster. An
// empty result means none: the request is refused.
type Grants interface {
	Grants(ctx context.Context, user string, groups []string, cluster string) ([]grant.Grant, error)
}

// RecordingPolicy says whose exec and attach sessions are recorded on a
// cluster: the roles (grant roles: "cluster-admin", "admin", "edit",
// "view" or a custom role's name) whose holders are recorded, "*" for
// everyone; none records no one. *control.Access implements it from the
// cluster's settings.
type RecordingPolicy interface {
	RecordRoles(ctx context.Context, cluster string) ([]string, error)
}

// Tunnels opens streams to clusters' agents. *tunnel.Registry implements it
// for the tunnels this node holds; the ring will implement it for a cluster
// of nodes, forwarding to the node that holds the tunnel.
type Tunnels interface {
	// Open opens a stream to cluster's agent carrying h, or fails with
	// tunnel.ErrNoTunnel.
	Open(ctx context.Context, cluster string, h *tunnel.Header) (net.Conn, error)
}

// Redirector says where an agent's tunnel belongs. The ring implements it
// in a gateway cluster; a single node has none and keeps every tunnel.
type Redirector interface {
	// Redirect returns the direct address (host:port) of the node that
	// should hold cluster's tunnel, and true, when that is not this node.
	Redirect(cluster string) (addr string, ok bool)
}

// TunnelRecorder is told where tunnels are (gatehouse status): the gateway
// writes it to the store. Calls must not block for long.
type TunnelRecorder interface {
	// TunnelUp: this node serves cluster's tunnel, whose connection is
	// named session; hello is what the agent said of itself (empty for a
	// version-1 agent).
	TunnelUp(cluster, session string, hello tunnel.Hello)
	// TunnelDown: the connection named session has ended.
	TunnelDown(session string)
}

// Config configures a Node.
type Config struct {
	// Name identifies the node in audit events and logs.
	Name string

	// Addr is the address the node listens on, host:port. Port 0 picks a
	// free port (see Node.Addr).
	Addr string

	// MetricsAddr, when set, serves Prometheus metrics at /metrics on a
	// plain-HTTP listener of its own, host:port. It is unauthenticated (a
	// scraper has no client certificate), so it belongs on an internal
	// address; it reveals counts, never names. Empty disables it.
	MetricsAddr string

	// Certificate is the node's serving certificate (leaf, then its
	// intermediate), unless GetCertificate is set.
	Certificate tls.Certificate

	// GetCertificate, when set, returns the serving certificate for each
	// handshake instead of Certificate: a renewed certificate is served
	// without a restart.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	// Verifier checks people's and agents' certificates.
	Verifier Verifier

	// Grants decides who may reach which cluster.
	Grants Grants

	// Registry receives the agents that connect to this node.
	Registry *tunnel.Registry

	// Tunnels opens streams to agents; nil means Registry.
	Tunnels Tunnels

	// Redirector, when set, sends agents of version-2 tunnels to the node
	// that should hold them; nil keeps every tunnel here.
	Redirector Redirector

	// Tunnels, if set, records where tunnels are.
	TunnelRecorder TunnelRecorder

	// ClusterDomain, when set, also routes by host: a request to
	// https://CLUSTER.ClusterDomain/PATH is PATH on CLUSTER, as
	// /k8s/CLUSTER/PATH is. It serves clients that drop a server's path
	// (kubectl proxy without --append-server-path, older kubectl's get
	// --raw). The serving certificate then names *.ClusterDomain.
	ClusterDomain string

	// Audit receives one event per request (two for long-running ones).
	Audit audit.Sink
	// AuditFailOpen serves requests whose events the audit sink cannot
	// take (an audit.Gate that is not ready: a full spool, a failing
	// disk), counting them in an alarm metric; by default (fail closed)
	// such requests are refused with 503.
	AuditFailOpen bool

	// Recording says on which clusters, and for which roles, exec and
	// attach sessions are recorded (package record); nil records none.
	Recording RecordingPolicy
	// RecordMaxBytes bounds one session's recording; zero means
	// record.DefaultMaxBytes.
	RecordMaxBytes int64

	// Registrar and AgentIssuer let new agents register with a bootstrap
	// token; either nil disables registration on this node.
	Registrar   Registrar
	AgentIssuer AgentIssuer

	// AgentCertTTL is the lifetime of agent certificates. A day bounds the
	// use of a stolen agent key; agents renew at half life.
	AgentCertTTL time.Duration

	// UnauthenticatedReadTimeout bounds reading the body of a request that
	// nothing has authenticated yet (agent registration): a client that
	// sends headers and stalls loses its connection instead of holding it
	// and a goroutine forever. A registration body is ~2 KiB.
	UnauthenticatedReadTimeout time.Duration

	// UnauthenticatedRate and UnauthenticatedBurst bound, per client
	// address, the requests to endpoints that need no credential (agent
	// registration, the API document). Agents register once and the
	// document is read rarely; 5 a second with a burst of 20 lets a NAT
	// full of new clusters through and a guesser nowhere.
	UnauthenticatedRate  float64
	UnauthenticatedBurst int

	// MaxHeaderBytes bounds a request's header, HTTP/1.1 and HTTP/2 alike.
	// People authenticate with client certificates and the API with one
	// bearer token: 64 KiB is ten times a large kubectl request.
	MaxHeaderBytes int

	// MaxConcurrentStreams bounds HTTP/2 streams per connection (250, as
	// Go's default, said explicitly: kubectl multiplexes watches and
	// requests on one connection). Go's server also bounds handlers queued
	// beyond it to four times as many, then closes the connection with
	// ENHANCE_YOUR_CALM: the rapid-reset defence (CVE-2023-44487).
	MaxConcurrentStreams int

	// ControlTimeout bounds how long a control message (revoke, sync) may
	// take to reach one agent and be carried out. An agent deletes or
	// binds a few RBAC objects: 5 s is generous, and a caller (an API
	// request) waits at most that long for a wedged agent.
	ControlTimeout time.Duration

	// ShutdownTimeout bounds how long Run waits for in-flight requests after
	// its context ends. Kubernetes gives a pod 30 s by default before it is
	// killed; 20 s leaves room for the rest of the shutdown.
	ShutdownTimeout time.Duration

	// Collectors are more Prometheus metrics to serve with the node's
	// (the gateway cluster's).
	Collectors []prometheus.Collector

	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger

	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns a configuration that listens on 127.0.0.1:8443.
// Certificate, Verifier, Grants, Registry and Audit must be set.
func DefaultConfig() Config {
	return Config{
		Name: "node-1", Addr: "127.0.0.1:8443", ShutdownTimeout: 20 * time.Second, AgentCertTTL: 24 * time.Hour,
		UnauthenticatedReadTimeout: 10 * time.Second, UnauthenticatedRate: 5, UnauthenticatedBurst: 20,
		MaxHeaderBytes: 64 << 10, MaxConcurrentStreams: 250, ControlTimeout: 5 * time.Second,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("node: Addr %q: %w", c.Addr, err)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("node: MetricsAddr %q: %w", c.MetricsAddr, err)
		}
	}
	switch {
	case c.Name == "":
		return errors.New("node: Name is required")
	case c.RecordMaxBytes < 0:
		return errors.New("node: RecordMaxBytes must not be negative")
	case c.ShutdownTimeout <= 0:
		return errors.New("node: ShutdownTimeout must be positive")
	case len(c.Certificate.Certificate) == 0 && c.GetCertificate == nil:
		return errors.New("node: Certificate or GetCertificate is required")
	case c.Verifier == nil:
		return errors.New("node: Verifier is required")
	case c.Grants == nil:
		return errors.New("node: Grants is required")
	case c.Registry == nil:
		return errors.New("node: Registry is required")
	case c.Audit == nil:
		return errors.New("node: Audit is required")
	case c.AgentCertTTL < 10*time.Minute || c.AgentCertTTL > 7*24*time.Hour:
		// A week at most: revocations of a cluster's agents (re-homing)
		// are kept that long (api.MaxAgentCertTTL).
		return errors.New("node: AgentCertTTL must be from 10 minutes to 7 days")
	case c.UnauthenticatedReadTimeout <= 0:
		return errors.New("node: UnauthenticatedReadTimeout must be positive")
	case c.UnauthenticatedRate <= 0 || c.UnauthenticatedBurst < 1:
		return errors.New("node: UnauthenticatedRate and UnauthenticatedBurst must be positive")
	case c.MaxHeaderBytes < 4<<10:
		return errors.New("node: MaxHeaderBytes must be at least 4 KiB")
	case c.MaxConcurrentStreams < 1:
		return errors.New("node: MaxConcurrentStreams must be positive")
	case c.ControlTimeout <= 0:
		return errors.New("node: ControlTimeout must be positive")
	case c.ClusterDomain != "" && len(validation.IsDNS1123Subdomain(c.ClusterDomain)) > 0:
		return fmt.Errorf("node: ClusterDomain %q is not a DNS name", c.ClusterDomain)
	}
	return nil
}

// Errors returned by Node.
var (
	// ErrRunning is returned by Run when the node is already running.
	ErrRunning = errors.New("node: already running")
	// ErrStopped is returned for work asked of a node that has stopped.
	ErrStopped = errors.New("node: stopped")
)

// Node is one gateway node.
type Node struct {
	cfg     Config
	log     *slog.Logger
	tunnels Tunnels

	mu      sync.Mutex // guards running and addr
	running bool
	addr    net.Addr
	ready   chan struct{} // closed once the listener is bound

	agents    sync.WaitGroup // agent connections being served
	sessions  sessions
	metrics   *metrics
	limiter   *addrLimiter                 // of unauthenticated endpoints
	api       atomic.Pointer[http.Handler] // the control-plane API, if any
	proxyOnce sync.Once
	rp        *httputil.ReverseProxy // kubeProxy

	draining atomic.Bool                 // a graceful stop has begun
	drainAt  atomic.Int64                // when (Unix ns)
	srv      atomic.Pointer[http.Server] // while Run serves

	// bg owns the control messages in flight to agents (fanOut); bgCtx
	// ends them when Run returns. bgMu guards bgStopped, so that no send
	// starts once Run waits for them (etcd's GoAttach does the same).
	bg        sync.WaitGroup
	bgCtx     context.Context
	bgCancel  context.CancelFunc
	bgMu      sync.Mutex
	bgStopped bool
}

// Drain begins a graceful stop: /readyz answers 503, so that load
// balancers send no new connections, and keep-alive ends: HTTP/1.1
// answers carry "Connection: close", and an HTTP/2 connection says GOAWAY
// once its streams are done. Clients thus move to other nodes on their
// own, while the node goes on serving until Run's context ends. It is
// idempotent; Run calls it at the end too.
func (n *Node) Drain() {
	if !n.draining.CompareAndSwap(false, true) {
		return
	}
	n.drainAt.Store(n.cfg.Now().UnixNano())
	if srv := n.srv.Load(); srv != nil {
		srv.SetKeepAlivesEnabled(false)
	}
}

// ConnectionDrain is how long Run lets clients leave after Drain before it
// shuts the server down. Shutdown closes an idle HTTP/2 connection at
// once, and a request that the client sends at that moment is lost with a
// GOAWAY it may not retry (seen under load: "server sent GOAWAY and
// closed the connection"); with keep-alive off for a second first, every
// busy connection has said GOAWAY gracefully, and the client sends its
// next request elsewhere.
const ConnectionDrain = time.Second

// SetAPI serves h under /api/ on the node's port (the REST API,
// control/api). It may be called before or while the node runs; until then
// /api/ answers 404.
func (n *Node) SetAPI(h http.Handler) { n.api.Store(&h) }

// New returns a node for cfg. It does not listen until Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	n := &Node{cfg: cfg, log: cfg.Logger, tunnels: cfg.Tunnels, ready: make(chan struct{})}
	if n.tunnels == nil {
		n.tunnels = cfg.Registry
	}
	n.metrics = newMetrics(n)
	n.limiter = newAddrLimiter(rate.Limit(cfg.UnauthenticatedRate), cfg.UnauthenticatedBurst, cfg.Now)
	n.bgCtx, n.bgCancel = context.WithCancel(context.Background())
	return n, nil
}

// Handler returns the node's HTTP handler (for people; agents never reach
// it).
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	// Unauthenticated by design: load balancers and the kubelet probe these
	// without credentials, and they reveal nothing but "up".
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// 503 from Drain on: a load balancer sends no new connections.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if n.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "draining")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("POST /v1/agents/register", n.limiter.wrap(n.registerHandler))
	// The API authenticates every request itself (control/api).
	api := func(w http.ResponseWriter, r *http.Request) {
		if h := n.api.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}
	mux.HandleFunc("/api/", api)
	// The API's one unauthenticated endpoint, rate-limited like the other.
	mux.HandleFunc("GET /api/v1/openapi.json", n.limiter.wrap(api))
	kube := &kubeHandler{n: n}
	// /k8s/ bypasses ServeMux, which would answer a path with dot segments
	// with a redirect to its cleaned form; the kube handler refuses those.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := n.hostCluster(r); ok || strings.HasPrefix(r.URL.Path, "/k8s/") {
			kube.ServeHTTP(w, r)
			return
		}
		if n.kubeShaped(r) {
			kubeapi.WriteStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf(
				"gatehouse: %s names no cluster. Reach a cluster at https://GATEWAY/k8s/CLUSTER%s%s (kubectl proxy drops that path unless given --append-server-path; an older kubectl's get --raw drops it too: use a newer kubectl, or the full URL)",
				r.URL.Path, r.URL.Path, n.hostHint()))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// hostCluster returns the cluster a request names by its host
// (CLUSTER.ClusterDomain), if host routing is on and it does.
func (n *Node) hostCluster(r *http.Request) (string, bool) {
	if n.cfg.ClusterDomain == "" {
		return "", false
	}
	// The Host header first; else the TLS server name (a kubeconfig with
	// tls-server-name reaches the gateway by address and names the
	// cluster in SNI alone).
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for _, name := range []string{host, tlsServerName(r)} {
		label, ok := strings.CutSuffix(strings.ToLower(name), "."+n.cfg.ClusterDomain)
		if ok && len(validation.IsDNS1123Label(label)) == 0 {
			return label, true
		}
	}
	return "", false
}

func tlsServerName(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return r.TLS.ServerName
}

func (n *Node) hostHint() string {
	if n.cfg.ClusterDomain == "" {
		return ""
	}
	return " or https://CLUSTER." + n.cfg.ClusterDomain + "/"
}

// kubeShaped reports whether a request that names no cluster has the path
// of a Kubernetes API request (and not of Gatehouse's own API).
func (n *Node) kubeShaped(r *http.Request) bool {
	p := r.URL.Path
	switch {
	case p == "/api" || p == "/apis" || p == "/version" || strings.HasPrefix(p, "/apis/") || strings.HasPrefix(p, "/openapi/"):
		return true
	case strings.HasPrefix(p, "/api/"):
		h := n.api.Load()
		if h == nil {
			return true
		}
		o, ok := (*h).(interface{ Owns(*http.Request) bool })
		return ok && !o.Owns(r)
	}
	return false
}

// Addr returns the bound address once Run has started listening, waiting
// for that or for ctx.
func (n *Node) Addr(ctx context.Context) (net.Addr, error) {
	select {
	case <-n.ready:
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.addr, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run serves until ctx ends, then shuts down: it stops accepting, closes
// every agent tunnel, and waits up to ShutdownTimeout for requests in
// flight. It returns nil after a clean shutdown.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.running {
		n.mu.Unlock()
		return ErrRunning
	}
	n.running = true
	n.mu.Unlock()

	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", n.cfg.Addr)
	if err != nil {
		return fmt.Errorf("node: listen: %w", err)
	}
	n.mu.Lock()
	n.addr = l.Addr()
	n.mu.Unlock()
	close(n.ready)

	agentCtx, cancelAgents := context.WithCancel(context.Background())
	defer cancelAgents()
	srv := &http.Server{
		Handler: n.Handler(),
		// Headers must come promptly; bodies and responses may stream for
		// hours (watch, exec, port-forward), so there is no read or write
		// timeout, and idle keep-alive connections are closed after 2 min.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    n.cfg.MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: n.cfg.MaxConcurrentStreams,
			// The HPACK tables and frames at the protocol's defaults, said
			// explicitly so that a change of Go's defaults is a visible one.
			MaxDecoderHeaderTableSize: 4096,
			MaxEncoderHeaderTableSize: 4096,
			MaxReadFrameSize:          16 << 10,
			// A dead peer's connection goes within 30 s + 15 s.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
		ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			GetCertificate: n.getCertificate,
			MinVersion:     tls.VersionTLS12,
			// Certificates are checked by the handlers, against the CA for
			// their kind, so that a refusal is a clear HTTP error rather
			// than a failed handshake.
			ClientAuth: tls.RequestClientCert,
			NextProtos: []string{"h2", "http/1.1", tunnel.ALPN2, tunnel.ALPN},
		},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			tunnel.ALPN:  func(_ *http.Server, c *tls.Conn, _ http.Handler) { n.serveAgent(agentCtx, c, 1) },
			tunnel.ALPN2: func(_ *http.Server, c *tls.Conn, _ http.Handler) { n.serveAgent(agentCtx, c, 2) },
		},
	}
	// With TLSNextProto set, HTTP/2 must be asked for explicitly.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)

	var metricsSrv *http.Server
	metricsErr := make(chan error, 1)
	if n.cfg.MetricsAddr != "" {
		ml, err := lc.Listen(ctx, "tcp", n.cfg.MetricsAddr)
		if err != nil {
			l.Close()
			return fmt.Errorf("node: metrics listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", n.MetricsHandler())
		// Profiles beside the metrics, on the same internal address: what
		// an operator needs to see where a node's memory or CPU goes.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { metricsErr <- metricsSrv.Serve(ml) }()
		n.log.Info("node metrics listening", "addr", ml.Addr().String())
	}

	n.srv.Store(srv)
	if n.draining.Load() {
		srv.SetKeepAlivesEnabled(false)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	n.log.Info("node listening", "addr", l.Addr().String(), "name", n.cfg.Name)

	select {
	case err := <-errc:
		if metricsSrv != nil {
			metricsSrv.Close()
			<-metricsErr
		}
		return fmt.Errorf("node: serve: %w", err)
	case <-ctx.Done():
	}
	n.Drain()
	drained := n.cfg.Now().Sub(time.Unix(0, n.drainAt.Load()))
	if wait := min(ConnectionDrain, n.cfg.ShutdownTimeout/2) - drained; wait > 0 {
		time.Sleep(wait)
	}
	if metricsSrv != nil {
		metricsSrv.Close()
		<-metricsErr
	}
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer cancel()
	// Tunnels are hijacked connections that Shutdown does not track.
	cancelAgents()
	err = srv.Shutdown(sctx)
	<-errc // Serve has returned ErrServerClosed
	if err != nil {
		srv.Close()
	}
	n.agents.Wait()
	n.bgMu.Lock()
	n.bgStopped = true
	n.bgMu.Unlock()
	n.bgCancel()
	n.bg.Wait()
	if err != nil {
		return fmt.Errorf("node: shutdown: %w", err)
	}
	n.log.Info("node stopped")
	return nil
}

// serveAgent authenticates an agent connection and runs its tunnel. A
// version-2 agent first gets a welcome, which may send it to the node that
// should hold its tunnel.
func (n *Node) serveAgent(ctx context.Context, c *tls.Conn, version int) {
	n.agents.Add(1)
	defer n.agents.Done()
	defer c.Close()
	if ctx.Err() != nil {
		// Stopping: the agent goes to another node (or back to this one
		// once it has restarted).
		n.log.Info("agent refused: the node is stopping", "remote", c.RemoteAddr().String())
		return
	}
	st := c.ConnectionState()
	if st.Version < tls.VersionTLS13 {
		n.log.Warn("agent refused: TLS older than 1.3", "remote", c.RemoteAddr().String())
		return
	}
	cluster, notAfter, err := n.cfg.Verifier.VerifyAgent(st.PeerCertificates)
	if err != nil {
		n.log.Warn("agent refused", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	var hello tunnel.Hello
	if version == 2 {
		var w tunnel.Welcome
		if n.cfg.Redirector != nil {
			if addr, ok := n.cfg.Redirector.Redirect(cluster); ok {
				w.Redirect = addr
			}
		}
		if w.Redirect == "" {
			w.Node = n.cfg.Name
		}
		c.SetWriteDeadline(n.cfg.Now().Add(10 * time.Second))
		if err := tunnel.WriteJSON(c, tunnel.FrameWelcome, &w); err != nil {
			n.log.Warn("agent welcome failed", "cluster", cluster, "err", err)
			return
		}
		c.SetWriteDeadline(time.Time{})
		if w.Redirect != "" {
			n.metrics.redirects.Inc()
			n.log.Info("agent redirected to its node", "cluster", cluster, "to", w.Redirect)
			return
		}
		c.SetReadDeadline(n.cfg.Now().Add(10 * time.Second))
		if err := tunnel.ReadJSON(c, tunnel.FrameHello, &hello); err != nil || hello.Validate() != nil {
			n.log.Warn("agent refused: no hello", "cluster", cluster, "err", err)
			return
		}
		c.SetReadDeadline(time.Time{})
	}
	// The tunnel ends when the agent's certificate does, unless the agent
	// renews it over the tunnel (at half life) first.
	opts := tunnel.ServeOptions{NotAfter: notAfter, Issued: ca.Issued(st.PeerCertificates[0]), Now: n.cfg.Now}
	if rec := n.cfg.TunnelRecorder; rec != nil {
		session := rand.Text()
		opts.OnUp = func() { rec.TunnelUp(cluster, session, hello) }
		opts.OnDown = func() { rec.TunnelDown(session) }
	}
	if n.cfg.AgentIssuer != nil {
		opts.Renew = func(ctx context.Context, csrPEM []byte) ([]byte, time.Time, error) {
			return n.renewAgent(ctx, cluster, csrPEM)
		}
	}
	n.cfg.Registry.Serve(ctx, cluster, c, opts)
}

// getCertificate serves GetCertificate's certificate, else Certificate.
func (n *Node) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if n.cfg.GetCertificate != nil {
		return n.cfg.GetCertificate(hello)
	}
	return &n.cfg.Certificate, nil
}
