// Package node is the Gatehouse gateway node: the process that accepts
// people's kubectl requests and agents' tunnels on one public port,
// authenticates and authorizes each request, audits it and sends it down the
// tunnel of the cluster it names (or to the node that holds that tunnel).
//
// For now a node serves only its liveness and readiness endpoints; the
// request path arrives with the tunnel (docs/design/0001-architecture.md).
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Config configures a Node.
type Config struct {
	// Addr is the address the node listens on, host:port. Port 0 picks a
	// free port (see Node.Addr).
	Addr string

	// ShutdownTimeout bounds how long Run waits for in-flight requests after
	// its context ends. Kubernetes gives a pod 30 s by default before it is
	// killed; 20 s leaves room for the rest of the shutdown.
	ShutdownTimeout time.Duration

	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns a configuration that listens on 127.0.0.1:8443.
func DefaultConfig() Config {
	return Config{Addr: "127.0.0.1:8443", ShutdownTimeout: 20 * time.Second}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("node: Addr %q: %w", c.Addr, err)
	}
	if c.ShutdownTimeout <= 0 {
		return errors.New("node: ShutdownTimeout must be positive")
	}
	return nil
}

// Errors returned by Node.
var (
	// ErrRunning is returned by Run when the node is already running.
	ErrRunning = errors.New("node: already running")
)

// Node is one gateway node.
type Node struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // guards running and addr
	running bool
	addr    net.Addr
	ready   chan struct{} // closed once the listener is bound
}

// New returns a node for cfg. It does not listen until Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Node{cfg: cfg, log: log, ready: make(chan struct{})}, nil
}

// Handler returns the node's HTTP handler.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	// Unauthenticated by design: load balancers and the kubelet probe these
	// without credentials, and they reveal nothing but "up".
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	return mux
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

// Run serves until ctx ends, then shuts down gracefully within
// ShutdownTimeout. It returns nil after a clean shutdown.
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

	srv := &http.Server{
		Handler:           n.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	n.log.Info("node listening", "addr", l.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("node: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-errc // Serve has returned ErrServerClosed
	if err != nil {
		return fmt.Errorf("node: shutdown: %w", err)
	}
	n.log.Info("node stopped")
	return nil
}
