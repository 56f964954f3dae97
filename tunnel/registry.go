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
	// ErrControlFailed means the agent answered a control message with an
	// error.
	ErrControlFailed = errors.New("tunnel: agent could not carry out control message")
)

// Registry holds the tunnels of the agents connected to this gateway node,
// one per cluster. It is safe for concurrent use.
type Registry struct {
	log *slog.Logger

	mu       sync.Mutex // guards sessions, issued and closed
	sessions map[string]*yamux.Session
	issued   map[*yamux.Session]time.Time // when the agent's certificate was issued
	retired  map[*yamux.Session]bool      // out of use, closing when their streams are done
	closed   bool

	drains sync.WaitGroup // the goroutines closing retired sessions

	serving sync.WaitGroup // Serve calls in progress; Close waits for them

	// pingEvery and deadAfter are KeepAliveInterval and DeadAfter
	// (shorter in tests).
	pingEvery, deadAfter time.Duration
	pinging              bool           // pingLoop runs (guarded by mu)
	pings                sync.WaitGroup // pingLoop
	stopPing             chan struct{}  // closed by Close
}

// NewRegistry returns an empty registry; logger may be nil.
func NewRegistry(logger *slog.Logger) *Registry {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{log: logger, sessions: map[string]*yamux.Session{}, issued: map[*yamux.Session]time.Time{}, retired: map[*yamux.Session]bool{},
		stopPing: make(chan struct{}), pingEvery: KeepAliveInterval, deadAfter: DeadAfter}
}

// ServeOptions are what Serve needs to know about an authenticated agent.
type ServeOptions struct {
	// NotAfter is when the agent's certificate expires; the tunnel is closed
	// then unless the agent has renewed it over the tunnel. Zero means no
	// expiry.
	NotAfter time.Time
	// Issued is when the agent's certificate was issued (zero: unknown);
	// DisconnectIssuedBefore compares it.
	Issued time.Time
	// OnUp and OnDown, if set, are called when the tunnel starts serving
	// and when it has ended (the gateway records where tunnels are).
	OnUp, OnDown func()
	// Renew signs a new certificate for the tunnel's cluster from a PEM CSR
	// and returns the chain (PEM) and its expiry. Nil refuses renewal.
	Renew func(ctx context.Context, csrPEM []byte) (chain []byte, notAfter time.Time, err error)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Serve runs the tunnel of cluster's agent over conn, which the caller has
// already authenticated, until the tunnel ends, its certificate expires
// unrenewed, or ctx is done. A newer connection from the same cluster
// replaces an older one (an agent that reconnects before its old connection
// is noticed dead). Serve returns once every stream the agent opened has
// been answered.
func (r *Registry) Serve(ctx context.Context, cluster string, conn net.Conn, opts ServeOptions) error {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	// No keep-alive goroutine per session: the registry pings them all
	// from one loop (pingLoop).
	ycfg := yamuxConfigDead(r.log, false, r.deadAfter)
	// An agent opens few streams (renewals): a short accept queue, not
	// yamux's 256 slots, saves 2 KiB in each of 20,000 tunnels.
	ycfg.AcceptBacklog = 16
	sess, err := yamux.Server(CoalesceWrites(conn), ycfg)
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
	r.serving.Add(1) // under mu, so that Close cannot be waiting yet
	defer r.serving.Done()
	if !r.pinging {
		r.pinging = true
		r.pings.Add(1)
		go r.pingLoop()
	}
	old := r.sessions[cluster]
	r.sessions[cluster] = sess
	r.issued[sess] = opts.Issued
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	r.log.Info("tunnel up", "cluster", cluster, "remote", conn.RemoteAddr().String())
	if opts.OnUp != nil {
		opts.OnUp()
	}
	if opts.OnDown != nil {
		defer opts.OnDown()
	}

	// The tunnel lives as long as the agent's certificate; a renewal
	// pushes the end out.
	var expiry *time.Timer
	if !opts.NotAfter.IsZero() {
		expiry = time.AfterFunc(opts.NotAfter.Sub(opts.Now()), func() {
			r.log.Warn("tunnel closed: agent certificate expired", "cluster", cluster)
			sess.Close()
		})
	}
	// The streams the agent opens are accepted in this goroutine, not one
	// more per tunnel: idle tunnels are most of a node's memory (20,000
	// of them per node), and each goroutine's stack counts.
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	var wg sync.WaitGroup
	r.acceptAgentStreams(ctx, cluster, sess, opts, expiry, &wg) // until the session closes
	stop()
	if expiry != nil {
		expiry.Stop()
	}
	wg.Wait()
	r.mu.Lock()
	if r.sessions[cluster] == sess {
		delete(r.sessions, cluster)
	}
	delete(r.issued, sess)
	delete(r.retired, sess)
	r.mu.Unlock()
	r.log.Info("tunnel down", "cluster", cluster)
	return nil
}

// acceptAgentStreams serves the streams an agent opens: only renewals.
func (r *Registry) acceptAgentStreams(ctx context.Context, cluster string, sess *yamux.Session, opts ServeOptions, expiry *time.Timer, wg *sync.WaitGroup) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			st.SetDeadline(time.Now().Add(30 * time.Second))
			var req Renew
			if err := ReadJSON(st, FrameRenew, &req); err != nil {
				r.log.Warn("tunnel: bad stream from agent", "cluster", cluster, "err", err)
				return
			}
			var res Result
			if opts.Renew == nil {
				res.Error = "this gateway does not renew certificates"
			} else if chain, notAfter, err := opts.Renew(ctx, []byte(req.CSR)); err != nil {
				r.log.Warn("tunnel: agent renewal refused", "cluster", cluster, "err", err)
				res.Error = "renewal refused: " + err.Error()
			} else {
				res.Certificate = string(chain)
				if expiry != nil {
					expiry.Reset(notAfter.Sub(opts.Now()))
				}
				r.mu.Lock()
				r.issued[sess] = opts.Now()
				r.mu.Unlock()
				r.log.Info("agent certificate renewed", "cluster", cluster, "notAfter", notAfter)
			}
			WriteJSON(st, FrameResult, &res)
		}()
	}
}

// Control sends c to cluster's agent and waits for its answer.
func (r *Registry) Control(ctx context.Context, cluster string, c *Control) error {
	if err := c.Validate(); err != nil {
		return err
	}
	st, err := r.openStream(cluster)
	if err != nil {
		return err
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	if err := WriteJSON(st, FrameControl, c); err != nil {
		return fmt.Errorf("tunnel: control %s: %w", cluster, err)
	}
	var res Result
	if err := ReadJSON(st, FrameResult, &res); err != nil {
		return fmt.Errorf("tunnel: control %s: %w", cluster, err)
	}
	if res.Error != "" {
		return fmt.Errorf("%w: %s: %s", ErrControlFailed, cluster, res.Error)
	}
	return nil
}

// Clusters returns the ids of the clusters with a tunnel here.
func (r *Registry) Clusters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.sessions))
	for c, s := range r.sessions {
		if !s.IsClosed() {
			out = append(out, c)
		}
	}
	return out
}

func (r *Registry) openStream(cluster string) (*yamux.Stream, error) {
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
	return st, nil
}

// Open opens a stream to cluster's agent and writes h as its first frame.
// The returned connection then carries one HTTP/1.1 exchange.
func (r *Registry) Open(ctx context.Context, cluster string, h *Header) (net.Conn, error) {
	st, err := r.openStream(cluster)
	if err != nil {
		return nil, err
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

// DisconnectIssuedBefore closes cluster's tunnel if this registry holds it
// and its agent's certificate was issued at or before before (that
// certificate was revoked): a newer agent's tunnel stays. It reports
// whether it closed one.
func (r *Registry) DisconnectIssuedBefore(cluster string, before time.Time) bool {
	r.mu.Lock()
	s := r.sessions[cluster]
	if s != nil && r.issued[s].After(before) {
		s = nil
	}
	r.mu.Unlock()
	if s != nil {
		s.Close()
	}
	return s != nil
}

// Retire takes cluster's tunnel out of use here (its agent has moved to
// another node): Open and Connected no longer see it, and it is closed once
// its streams are done, or after grace. It reports whether there was one.
func (r *Registry) Retire(cluster string, grace time.Duration) bool {
	r.mu.Lock()
	s := r.sessions[cluster]
	if s == nil || r.closed {
		r.mu.Unlock()
		return false
	}
	delete(r.sessions, cluster)
	r.retired[s] = true
	r.drains.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.drains.Done()
		deadline := time.Now().Add(grace)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for s.NumStreams() > 0 && time.Now().Before(deadline) {
			select {
			case <-s.CloseChan():
				return
			case <-t.C:
			}
		}
		r.log.Info("tunnel: retired tunnel closed", "cluster", cluster, "streamsLeft", s.NumStreams())
		s.Close()
	}()
	return true
}

// Close closes every tunnel, refuses new ones, and returns once every Serve
// call (and the goroutines each owns) has returned. It is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	r.closed = true
	var all []*yamux.Session
	for _, s := range r.sessions {
		all = append(all, s)
	}
	for s := range r.retired {
		all = append(all, s)
	}
	r.sessions = map[string]*yamux.Session{}
	r.mu.Unlock()
	for _, s := range all {
		s.Close()
	}
	r.serving.Wait()
	r.drains.Wait()
	select {
	case <-r.stopPing:
	default:
		close(r.stopPing)
	}
	r.pings.Wait()
	return nil
}

// pingConcurrency bounds the pings in flight: 20,000 tunnels at 100 ms of
// round trip are pinged in 2 s of each KeepAliveInterval.
const pingConcurrency = 1024

// pingLoop pings every tunnel (in use or retired) each KeepAliveInterval
// and closes one whose ping fails or goes unanswered for DeadAfter: what
// yamux's keep-alive does, from one goroutine for the whole registry
// rather than one per tunnel. It runs from the first Serve until Close.
func (r *Registry) pingLoop() {
	defer r.pings.Done()
	t := time.NewTicker(r.pingEvery)
	defer t.Stop()
	sem := make(chan struct{}, pingConcurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-r.stopPing:
			return
		case <-t.C:
		}
		r.mu.Lock()
		all := make([]*yamux.Session, 0, len(r.sessions)+len(r.retired))
		for _, s := range r.sessions {
			all = append(all, s)
		}
		for s := range r.retired {
			all = append(all, s)
		}
		r.mu.Unlock()
		for _, s := range all {
			select {
			case sem <- struct{}{}:
			case <-r.stopPing:
				return
			}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				if _, err := s.Ping(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
					r.log.Warn("tunnel: keep-alive unanswered; closing the tunnel", "remote", s.RemoteAddr().String(), "err", err)
					s.Close()
				}
			}()
		}
	}
}
