package tunnel

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// yamux frame header layout (hashicorp/yamux v0.1.x): version, type,
// flags (2), stream id (4), length (4).
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	// coalesceMax: bodies up to this size are sent in one write with their
	// header; larger ones are two writes, where the header's own record
	// costs nothing that matters.
	coalesceMax = 16 << 10
	// coalesceFlush bounds how long a held header waits for its body: yamux
	// writes the body at once, in the same goroutine; only a body dropped
	// by a send timeout leaves a header waiting.
	coalesceFlush = time.Millisecond
)

// CoalesceWrites returns conn with yamux's writes coalesced: yamux's send
// loop writes a data frame's 12-byte header and its body as two writes,
// which over TLS are two records and two system calls. The header of a
// data frame with a body is held and sent with the body's write. Every
// other write goes straight through. Give it the connection yamux runs on.
func CoalesceWrites(conn net.Conn) net.Conn {
	c := &coalescingConn{Conn: conn}
	c.timer = time.AfterFunc(time.Hour, c.flush)
	c.timer.Stop()
	return c
}

type coalescingConn struct {
	net.Conn
	mu    sync.Mutex // guards held, buf, timer; serializes writes
	held  bool
	hdr   [yamuxHeaderSize]byte
	buf   []byte
	timer *time.Timer
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held {
		c.held = false
		c.timer.Stop()
		if len(p) <= coalesceMax {
			c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
			n, err := c.Conn.Write(c.buf)
			return max(n-yamuxHeaderSize, 0), err
		}
		if _, err := c.Conn.Write(c.hdr[:]); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(c.hdr[:], p)
		c.held = true
		c.timer.Reset(coalesceFlush)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// flush sends a header whose body did not come.
func (c *coalescingConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held {
		c.held = false
		c.Conn.Write(c.hdr[:])
	}
}

// Close stops the flush timer and closes the connection. It does not wait
// for a write in progress: closing is what ends a blocked one.
func (c *coalescingConn) Close() error {
	c.timer.Stop()
	return c.Conn.Close()
}
