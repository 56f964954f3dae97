// Package loadtest drives a gateway as a fleet of clusters and people
// would, against any gateway address: it creates clusters through the
// REST API, registers a simulated agent for each (the real tunnel client
// in front of a small in-process stand-in for an API server, with no
// Kubernetes behind it), and runs clients that send small GETs through
// the gateway to those clusters. It reports the time to connect the
// agents and the requests' rate, latency and failures.
//
// `gatehouse loadtest` is its command; the multi-node tests and
// benchmarks use it as a library while they add, drain, restart and kill
// nodes.
package loadtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apiclient"
	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Config configures a load test.
type Config struct {
	// Server is the gateway's public URL, https://HOST:PORT: where agents
	// register and dial, and where clients send requests.
	Server string
	// Token is an API token of an organization admin: it creates and
	// deletes the clusters, and mints the clients' certificate.
	Token string
	// CAPEM verifies the gateway (its root certificate).
	CAPEM []byte
	// Project is the project the clusters are made in; it is created if
	// it does not exist.
	Project string
	// Prefix starts every cluster's name; empty means "lt-" and six random
	// characters, so that runs do not collide.
	Prefix string
	// Agents is how many clusters (each with its agent) to simulate.
	Agents int
	// Parallel is how many agents are set up at a time (cluster creation,
	// registration and the tunnel's handshake).
	Parallel int
	// Clients is how many clients send requests, each on its own
	// connection (a load balancer in front spreads them over nodes).
	Clients int
	// Path is the request, under each cluster's /k8s/CLUSTER prefix.
	Path string
	// Keep leaves the clusters in place at Close (else they are deleted).
	Keep bool
	// Progress receives a line a second while agents connect and clients
	// run; nil is quiet.
	Progress io.Writer
	// Logger receives the tunnel clients' logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns 100 agents, 8 clients and a small GET of a
// ConfigMap.
func DefaultConfig() Config {
	return Config{Project: "loadtest", Agents: 100, Parallel: 32, Clients: 8, Path: "/api/v1/namespaces/default/configmaps/loadtest"}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	u, err := url.Parse(c.Server)
	switch {
	case err != nil || u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("loadtest: server %q must be https://HOST:PORT", c.Server)
	case c.Token == "":
		return errors.New("loadtest: an admin's API token is required")
	case len(c.CAPEM) == 0:
		return errors.New("loadtest: the gateway's CA certificate is required")
	case c.Project == "":
		return errors.New("loadtest: a project is required")
	case c.Agents < 1:
		return errors.New("loadtest: at least one agent")
	case c.Parallel < 1:
		return errors.New("loadtest: Parallel must be positive")
	case c.Clients < 0:
		return errors.New("loadtest: Clients must not be negative")
	case !strings.HasPrefix(c.Path, "/"):
		return fmt.Errorf("loadtest: path %q must start with /", c.Path)
	}
	return nil
}

// ErrClosed is returned by a Run that was closed.
var ErrClosed = errors.New("loadtest: closed")

// Run is one load test: its clusters, agents and clients.
type Run struct {
	cfg       Config
	api       *apiclient.Client
	regClient *http.Client // registrations
	pool      *x509.CertPool
	host      string // host:port of Server
	sname     string // the name checked in the gateway's certificate
	log       *slog.Logger

	mu       sync.Mutex // guards agents and created
	agents   []*agent
	created  []string // cluster names made by this run
	cert     *tls.Certificate
	closed   bool
	closeErr error
	wg       sync.WaitGroup // agents' tunnel loops
	once     sync.Once
	cancel   context.CancelFunc
	ctx      context.Context // the agents' lifetime
}

type agent struct {
	cluster string
	cert    tls.Certificate
	client  *tunnel.Client
}

// New returns a load test for cfg. Nothing happens until Setup.
func New(cfg Config) (*Run, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "lt-" + strings.ToLower(rand.Text()[:6]) + "-"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cfg.CAPEM) {
		return nil, errors.New("loadtest: the CA file holds no certificate")
	}
	host, sname, err := tunnel.GatewayAddr(cfg.Server)
	if err != nil {
		return nil, err
	}
	api, err := apiclient.New(apiclient.Config{Server: cfg.Server, Token: cfg.Token, CAPEM: cfg.CAPEM})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	// One pool of keep-alive connections for every registration: a new
	// connection each would leave tens of thousands of ports in TIME_WAIT
	// beside the tunnels, and run out.
	reg := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, ServerName: sname},
		MaxIdleConnsPerHost: cfg.Parallel,
	}}
	return &Run{cfg: cfg, api: api, regClient: reg, pool: pool, host: host, sname: sname, log: cfg.Logger, ctx: ctx, cancel: cancel}, nil
}

// Clusters returns the names of the clusters this run made.
func (r *Run) Clusters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.created)
}

// Connected returns how many agents have a tunnel up now.
func (r *Run) Connected() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, a := range r.agents {
		if a.client.Connected() {
			n++
		}
	}
	return n
}

// Holders returns, for each agent whose tunnel is up, the name of the node
// that holds it (from the node's welcome).
func (r *Run) Holders() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]string, len(r.agents))
	for _, a := range r.agents {
		if a.client.Connected() {
			m[a.cluster] = a.client.Node()
		}
	}
	return m
}

// Setup makes the project if needed, the client certificate, and every
// cluster with its agent, then waits until every agent's tunnel is up. It
// returns how long that took.
func (r *Run) Setup(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if err := r.ensureProject(ctx); err != nil {
		return 0, err
	}
	cert, err := r.credential(ctx)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	r.cert = cert
	r.mu.Unlock()

	names := make(chan string)
	errc := make(chan error, r.cfg.Parallel)
	var wg sync.WaitGroup
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range r.cfg.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				if err := r.addAgent(sctx, name); err != nil {
					errc <- err
					cancel()
					return
				}
			}
		}()
	}
	stopProgress := r.progress(func() string {
		r.mu.Lock()
		made := len(r.agents)
		r.mu.Unlock()
		return fmt.Sprintf("agents: %d registered, %d connected of %d", made, r.Connected(), r.cfg.Agents)
	})
	defer stopProgress()
feed:
	for i := range r.cfg.Agents {
		select {
		case names <- fmt.Sprintf("%s%d", r.cfg.Prefix, i):
		case <-sctx.Done():
			break feed
		}
	}
	close(names)
	wg.Wait()
	select {
	case err := <-errc:
		return 0, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for r.Connected() < r.cfg.Agents {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("loadtest: %d of %d agents connected: %w", r.Connected(), r.cfg.Agents, ctx.Err())
		case <-t.C:
		}
	}
	return time.Since(start), nil
}

// progress prints line() every second until the returned func is called.
func (r *Run) progress(line func() string) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(r.cfg.Progress, "%5.0fs  %s\n", time.Since(start).Seconds(), line())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (r *Run) ensureProject(ctx context.Context) error {
	err := r.api.Do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(r.cfg.Project), nil, nil)
	var p *apiclient.Problem
	if errors.As(err, &p) && p.Status == http.StatusNotFound {
		err = r.api.Do(ctx, http.MethodPost, "/api/v1/projects", apitypes.Project{Name: r.cfg.Project, Description: "made by gatehouse loadtest"}, nil)
	}
	if err != nil {
		return fmt.Errorf("loadtest: project %s: %w", r.cfg.Project, err)
	}
	return nil
}

// credential mints the clients' certificate (the token's person).
func (r *Run) credential(ctx context.Context) (*tls.Certificate, error) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.CSR(key)
	if err != nil {
		return nil, err
	}
	cred, err := r.api.Credential(ctx, csr, "")
	if err != nil {
		return nil, fmt.Errorf("loadtest: client certificate: %w", err)
	}
	cert, err := tls.X509KeyPair([]byte(cred.Certificate), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loadtest: client certificate: %w", err)
	}
	return &cert, nil
}

// addAgent creates cluster name, registers its agent and starts its
// tunnel.
func (r *Run) addAgent(ctx context.Context, name string) error {
	created, err := r.api.CreateCluster(ctx, apitypes.Cluster{Name: name, Project: r.cfg.Project, Description: "simulated by gatehouse loadtest"})
	if err != nil {
		return fmt.Errorf("loadtest: create cluster %s: %w", name, err)
	}
	r.mu.Lock()
	r.created = append(r.created, name)
	r.mu.Unlock()
	cert, err := r.register(ctx, created.Bootstrap.Token, name)
	if err != nil {
		return err
	}
	a := &agent{cluster: name, cert: cert}
	cfg := tunnel.DefaultClientConfig()
	cfg.GatewayAddr, cfg.ServerName, cfg.RootCAs, cfg.Proxy = r.host, r.sname, r.pool, nil
	cfg.GetCertificate = func() (*tls.Certificate, error) { return &a.cert, nil }
	cfg.Handler = fakeAPIServer{}
	cfg.Hello = func() tunnel.Hello { return tunnel.Hello{AgentVersion: "loadtest", KubeVersion: "v0.0.0-loadtest"} }
	cfg.Control = tunnel.ControlFunc(func(context.Context, *tunnel.Control) error { return nil })
	cfg.Logger = r.log.With("cluster", name)
	if a.client, err = tunnel.NewClient(cfg); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.agents = append(r.agents, a)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		a.client.Run(r.ctx)
	}()
	return nil
}

// register trades a bootstrap token for the agent's certificate, as the
// agent does (POST /v1/agents/register), waiting out 429s.
func (r *Run) register(ctx context.Context, token, name string) (tls.Certificate, error) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	csr, err := pki.CSR(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	body, _ := json.Marshal(map[string]string{"token": token, "csr": string(csr), "fingerprint": "loadtest-" + rand.Text()})
	hc := r.regClient
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(r.cfg.Server, "/")+"/v1/agents/register", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("loadtest: register %s: %w", name, err)
		}
		rb, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		// Too many at once, or no signer for a moment (an election):
		// wait as told, as an agent does.
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			select {
			case <-ctx.Done():
				return tls.Certificate{}, ctx.Err()
			case <-time.After(time.Duration(max(wait, 1)) * time.Second):
			}
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return tls.Certificate{}, fmt.Errorf("loadtest: register %s: %s: %s", name, resp.Status, bytes.TrimSpace(rb))
		}
		var out struct {
			Certificate string `json:"certificate"`
		}
		if err := json.Unmarshal(rb, &out); err != nil {
			return tls.Certificate{}, fmt.Errorf("loadtest: register %s: %w", name, err)
		}
		cert, err := tls.X509KeyPair([]byte(out.Certificate), keyPEM)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("loadtest: register %s: %w", name, err)
		}
		return cert, nil
	}
}

// fakeAPIServer answers every request as an API server would a GET of a
// small ConfigMap: the agent's side costs next to nothing, so that what
// is measured is the gateway.
type fakeAPIServer struct{}

var configMap = []byte(`{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"loadtest","namespace":"default","resourceVersion":"1"},"data":{"key":"value"}}` + "\n")

func (fakeAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(configMap)))
	w.Write(configMap)
}

// Close stops every agent and, unless Keep, deletes the clusters this run
// made. It is idempotent.
func (r *Run) Close() error {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cancel()
		r.wg.Wait()
		if !r.cfg.Keep {
			r.closeErr = r.deleteClusters()
		}
		r.api.Close()
		r.regClient.CloseIdleConnections()
	})
	return r.closeErr
}

func (r *Run) deleteClusters() error {
	names := r.Clusters()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ch := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var first atomic.Value
	for range r.cfg.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range ch {
				if err := r.api.DeleteCluster(ctx, name); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for _, n := range names {
		ch <- n
	}
	close(ch)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("loadtest: %d clusters not deleted (first: %v)", n, first.Load())
	}
	return nil
}
