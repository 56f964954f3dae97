package tunnel

import (
	"io"
	"log"
	"log/slog"
	"time"

	"github.com/hashicorp/yamux"
)

// Tunnel timing. Both ends use the same values.
const (
	// KeepAliveInterval is how often each side pings. Thirty seconds keeps
	// NAT and load-balancer state alive (most drop idle flows after 60 s+).
	KeepAliveInterval = 30 * time.Second

	// DeadAfter bounds how long an unanswered ping (or a blocked write) is
	// tolerated before the session is closed: a dead tunnel is noticed at
	// most KeepAliveInterval+DeadAfter = 60 s after it died.
	DeadAfter = 30 * time.Second

	// StreamWindow is the largest per-stream receive window. yamux's default
	// of 256 KiB caps one stream at ~26 MB/s at 10 ms RTT; 16 MiB allows
	// ~1.6 GB/s there and still bounds a stalled reader's buffer.
	StreamWindow = 16 << 20
)

func yamuxConfig(logger *slog.Logger, keepAlive bool) *yamux.Config {
	return yamuxConfigDead(logger, keepAlive, DeadAfter)
}

// yamuxConfigDead is yamuxConfig with deadAfter in place of DeadAfter
// (shorter in tests).
func yamuxConfigDead(logger *slog.Logger, keepAlive bool, deadAfter time.Duration) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = keepAlive
	c.KeepAliveInterval = KeepAliveInterval
	c.ConnectionWriteTimeout = deadAfter
	c.MaxStreamWindowSize = StreamWindow
	c.StreamOpenTimeout = deadAfter
	c.StreamCloseTimeout = 5 * time.Minute
	c.LogOutput = nil
	if logger != nil {
		c.Logger = slog.NewLogLogger(logger.Handler(), slog.LevelDebug)
	} else {
		c.Logger = log.New(io.Discard, "", 0)
	}
	return c
}
