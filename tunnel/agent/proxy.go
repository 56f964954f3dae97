// Package agent is the part of Gatehouse that runs inside a cluster: it
// serves the gateway's tunnel streams by calling the cluster's API server as
// each person's just-in-time service account.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/gatehouse-dev/gatehouse/internal/kubeapi"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Proxy serves tunnel streams: it strips every credential and impersonation
// header the client sent, and calls the API server with the person's
// service-account token over a connection pool that serves that person only.
type Proxy struct {
	target *url.URL
	tls    *tls.Config
	jit    *JIT
	log    *slog.Logger

	rp *httputil.ReverseProxy // one for every request: see call

	mu         sync.Mutex // guards transports, active and nextID
	transports map[string]*http.Transport
	active     map[string]map[uint64]context.CancelFunc // user -> requests in flight
	nextID     uint64
}

// NewProxy returns a proxy to the API server described by cfg (only its
// host and CA are used; never its credentials).
func NewProxy(cfg *rest.Config, jit *JIT, logger *slog.Logger) (*Proxy, error) {
	anon := rest.AnonymousClientConfig(cfg)
	tlsCfg, err := rest.TLSConfigFor(anon)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if tlsCfg == nil {
		tlsCfg = &tls.Config{}
	}
	// Upgrades (exec, attach, port-forward) need HTTP/1.1.
	tlsCfg.NextProtos = []string{"http/1.1"}
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("agent: API server URL: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{target: u, tls: tlsCfg, jit: jit, log: logger, transports: map[string]*http.Transport{}, active: map[string]map[uint64]context.CancelFunc{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			c := pr.In.Context().Value(callKey{}).(*call)
			pr.SetURL(p.target)
			pr.Out.Host = p.target.Host
			kubeapi.StripClientCredentials(pr.Out.Header)
			pr.Out.Header.Set("Authorization", "Bearer "+c.token)
		},
		Transport:     personTransport{p},
		FlushInterval: -1, // watch and logs -f stream as they come
		BufferPool:    kubeapi.CopyBuffers,
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			kubeapi.WriteStatus(w, http.StatusBadGateway, metav1.StatusReasonInternalError, "gatehouse agent cannot reach the API server: "+err.Error())
		},
	}
	return p, nil
}

// call is what the one reverse proxy needs to know of a request: whose it
// is, and the token it runs with. It travels in the request's context.
type call struct{ user, token string }

type callKey struct{}

// personTransport sends each request over its person's own pool.
type personTransport struct{ p *Proxy }

func (t personTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c, ok := r.Context().Value(callKey{}).(*call)
	if !ok {
		return nil, errors.New("agent: a request without its person")
	}
	return t.p.transportFor(c.user).RoundTrip(r)
}

// transportFor returns the person's own connection pool: a backend
// connection never carries two people's requests.
func (p *Proxy) transportFor(user string) *http.Transport {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.transports[user]
	if t == nil {
		t = &http.Transport{
			TLSClientConfig:     p.tls.Clone(),
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			// A person's client-go may run dozens of requests at once
			// (controllers, kubectl apply -f of a directory); fewer idle
			// connections than that means a new TLS handshake with the API
			// server for the rest - the largest CPU cost per request when
			// profiled at 32 concurrent requests.
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			// No HTTP/2: upgrades must stay on HTTP/1.1 (see NewProxy).
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
		}
		p.transports[user] = t
	}
	return t
}

// track registers a request of user's until the returned func is called.
func (p *Proxy) track(ctx context.Context, user string) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	p.mu.Lock()
	id := p.nextID
	p.nextID++
	if p.active[user] == nil {
		p.active[user] = map[uint64]context.CancelFunc{}
	}
	p.active[user][id] = cancel
	p.mu.Unlock()
	return ctx, func() {
		cancel()
		p.mu.Lock()
		delete(p.active[user], id)
		if len(p.active[user]) == 0 {
			delete(p.active, user)
		}
		p.mu.Unlock()
	}
}

// Active returns how many of user's requests are in flight.
func (p *Proxy) Active(user string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.active[user])
}

// Forget ends the person's requests in flight (watch, exec, port-forward
// included) and closes their pooled connections: their access is gone.
func (p *Proxy) Forget(user string) {
	p.mu.Lock()
	t := p.transports[user]
	delete(p.transports, user)
	cancels := p.active[user]
	delete(p.active, user)
	p.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
	if t != nil {
		t.CloseIdleConnections()
	}
}

// Close closes every pooled connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	ts := p.transports
	p.transports = map[string]*http.Transport{}
	p.mu.Unlock()
	for _, t := range ts {
		t.CloseIdleConnections()
	}
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, ok := tunnel.HeaderFromContext(r.Context())
	if !ok {
		http.Error(w, "no tunnel header", http.StatusBadRequest)
		return
	}
	if !kubeapi.AllowedUpgrade(r.Header) {
		kubeapi.WriteStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "upgrade protocol not allowed: only SPDY/3.1 and websocket")
		return
	}
	ctx, done := p.track(r.Context(), h.User)
	defer done()
	if !h.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, h.Deadline)
		defer cancel()
	}
	token, err := p.jit.Token(ctx, h)
	if err != nil {
		p.log.Error("agent: cannot prepare service account", "user", h.User, "err", err)
		kubeapi.WriteStatus(w, http.StatusBadGateway, metav1.StatusReasonInternalError, "gatehouse agent could not prepare your service account in the cluster")
		return
	}
	ctx = context.WithValue(ctx, callKey{}, &call{user: h.User, token: token})
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}
