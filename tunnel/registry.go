package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Errors returned by Registry.
var (
	// ErrNoTunnel means the cluster's agent is not connected to this node.
	ErrNoTunnel = errors.New("tunnel: cluster not connected")
	// ErrRegistryClosed is returned once Close has been called.
	ErrRegistryClosed = errors.New("tunnel: registry closed")
)

// Registry holds the tunnels of the agents connected to this gateway node,
// one per cluster. It is safe for concurrent use.
type Registry struct {
	log *slog.Logger

	mu       sync.Mutex // guards sessions and closed
	sessions map[string]*yamux.Session
	closed   bool
}

// NewRegistry returns an empty registry; logger may be nil.
func NewRegistry(logger *slog.Logger) *Registry {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{log: logger, sessions: map[string]*yamux.Session{}}
}

// Serve runs the tunnel of cluster's agent over conn, which the caller has
// already authenticated, until the tunnel ends or ctx is done. A newer
// connection from the same cluster replaces an older one (an agent that
// reconnects before its old connection is noticed dead).
func (r *Registry) Serve(ctx context.Context, cluster string, conn net.Conn) error {
	sess, err := yamux.Server(conn, yamuxConfig(r.log))
	if err != nil {
		conn.Close()
		return fmt.Errorf("tunnel: %w", err)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		sess.Close()
		return ErrRegistryClosed
	}
	old := r.sessions[cluster]
	r.sessions[cluster] = sess
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	r.log.Info("tunnel up", "cluster", cluster, "remote", conn.RemoteAddr().String())

	select {
	case <-sess.CloseChan():
	case <-ctx.Done():
		sess.Close()
	}
	r.mu.Lock()
	if r.sessions[cluster] == sess {
		delete(r.sessions, cluster)
	}
	r.mu.Unlock()
	r.log.Info("tunnel down", "cluster", cluster)
	return nil
}

// Open opens a stream to cluster's agent and writes h as its first frame.
// The returned connection then carries one HTTP/1.1 exchange.
func (r *Registry) Open(ctx context.Context, cluster string, h *Header) (net.Conn, error) {
	r.mu.Lock()
	sess := r.sessions[cluster]
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, ErrRegistryClosed
	}
	if sess == nil || sess.IsClosed() {
		return nil, fmt.Errorf("%w: %s", ErrNoTunnel, cluster)
	}
	// OpenStream does not wait for the agent: yamux sends the SYN and
	// returns; StreamOpenTimeout closes the stream if no ACK comes.
	st, err := sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoTunnel, cluster, err)
	}
	if d, ok := ctx.Deadline(); ok {
		st.SetWriteDeadline(d)
	}
	if err := WriteHeader(st, h); err != nil {
		st.Close()
		return nil, err
	}
	st.SetWriteDeadline(time.Time{})
	return &gatewayStream{Stream: st}, nil
}

// gatewayStream makes Close final. A yamux Close only half-closes (it sends
// FIN and keeps reading until the peer closes too), so a reader blocked on a
// stream whose client has gone would wait for the agent; when the gateway
// is done with a stream, both directions end at once (REFERENCE.md
// checklist, item 6).
type gatewayStream struct{ *yamux.Stream }

func (s *gatewayStream) Close() error {
	err := s.Stream.Close()
	s.Stream.SetReadDeadline(time.Now())
	return err
}

// Connected reports whether cluster's agent has a live tunnel here.
func (r *Registry) Connected(cluster string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[cluster]
	return s != nil && !s.IsClosed()
}

// Len returns the number of live tunnels.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// Close closes every tunnel and refuses new ones. Serve calls return as
// their sessions close. It is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	r.closed = true
	sessions := r.sessions
	r.sessions = map[string]*yamux.Session{}
	r.mu.Unlock()
	for _, s := range sessions {
		s.Close()
	}
	return nil
}
