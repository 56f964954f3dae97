package ring

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// DefaultTunnelWait is how long a request waits for its cluster's tunnel
// while an owner changes (an agent reconnecting to the new owner) before it
// is refused with 503 and Retry-After: a reconnect with backoff takes a
// second or two.
const DefaultTunnelWait = 5 * time.Second

// errMoving: no node holds the cluster's tunnel after the wait. It is
// tunnel.ErrNoTunnel, and Retryable: in a gateway cluster a tunnel is
// often between two nodes.
type errMoving struct{ cluster string }

func (e errMoving) Error() string {
	return "ring: no node holds the tunnel of " + e.cluster + " (its agent is away, or moving between nodes)"
}
func (errMoving) Unwrap() error   { return tunnel.ErrNoTunnel }
func (errMoving) Retryable() bool { return true }

// Tunnels opens streams to agents wherever their tunnel is: on this node,
// or on the owner, through Peers. It implements node.Tunnels.
type Tunnels struct {
	Ring  *Ring
	Local LocalTunnels
	Peers *Peers
	// Wait bounds the wait for a tunnel during a change of owner; zero
	// means DefaultTunnelWait.
	Wait time.Duration
	// Metrics, if set, counts forwards and times their hop.
	Metrics *Metrics
}

// Open opens a stream to cluster's agent. A tunnel on this node is used
// first, whoever the owner is (during a hand-over the old owner still
// serves); else the request goes to the owner, one hop. Until the tunnel
// shows up somewhere it tries again every 100 ms, up to Wait, then fails
// with tunnel.ErrNoTunnel.
func (t *Tunnels) Open(ctx context.Context, cluster string, h *tunnel.Header) (net.Conn, error) {
	wait := t.Wait
	if wait <= 0 {
		wait = DefaultTunnelWait
	}
	deadline := time.Now().Add(wait)
	for {
		if t.Local.Connected(cluster) {
			c, err := t.Local.Open(ctx, cluster, h)
			if !errors.Is(err, tunnel.ErrNoTunnel) {
				return c, err
			}
		}
		if owner, ok := t.Ring.Owner(cluster); ok && owner.Name != t.Ring.Name() && owner.Meta.PeerAddr != "" {
			start := time.Now()
			c, err := t.Peers.Open(ctx, owner.Meta.PeerAddr, cluster, h)
			switch {
			case err == nil:
				t.Metrics.forwarded("ok", time.Since(start))
				return c, nil
			case errors.Is(err, tunnel.ErrNoTunnel):
				t.Metrics.forwarded("no_tunnel", 0)
			default:
				t.Metrics.forwarded("error", 0)
				if !errors.Is(err, ErrPeer) {
					return nil, err
				}
			}
		}
		if !time.Now().Before(deadline) {
			return nil, errMoving{cluster}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
