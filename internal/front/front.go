// Package front is a TCP front: an L4 load balancer that hands each
// connection it accepts to the next backend that takes one, round robin.
// It stands for the anycast address or load balancer people and agents
// have in front of a gateway cluster, in `gatehouse dev --gateways N` and
// in the multi-node tests. A backend that refuses (a node that stopped)
// is skipped, as a load balancer's health check would.
package front

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DialTimeout bounds the dial of one backend before the next is tried.
const DialTimeout = time.Second

// Front spreads the connections of one listener over backends.
type Front struct {
	l        net.Listener
	backends func() []string
	next     atomic.Uint64

	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
	once   sync.Once
}

// Serve starts a front on l. backends is asked at every connection, so
// that nodes may come and go.
func Serve(l net.Listener, backends func() []string) *Front {
	f := &Front{l: l, backends: backends, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.accept()
	return f
}

// Listen listens on addr (host:port) and serves a front there.
func Listen(addr string, backends func() []string) (*Front, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return Serve(l, backends), nil
}

// Addr is the front's address.
func (f *Front) Addr() string { return f.l.Addr().String() }

func (f *Front) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		if !f.track(c, true) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() {
				f.track(c, false)
				c.Close()
			}()
			bs := f.backends()
			start := f.next.Add(1)
			for i := range len(bs) {
				b, err := net.DialTimeout("tcp", bs[(int(start)+i)%len(bs)], DialTimeout)
				if err != nil {
					continue // a node that is down: the next one
				}
				if !f.track(b, true) {
					b.Close()
					return
				}
				pipe(c, b)
				f.track(b, false)
				return
			}
		}()
	}
}

// track adds or removes a connection; adding fails once the front is
// closed.
func (f *Front) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !add {
		delete(f.conns, c)
		return true
	}
	if f.closed {
		return false
	}
	f.conns[c] = true
	return true
}

// Close stops accepting, closes every connection and waits for the
// front's goroutines. It is idempotent.
func (f *Front) Close() error {
	f.once.Do(func() {
		f.l.Close()
		f.mu.Lock()
		f.closed = true
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return nil
}

// pipe copies both ways until either side ends, passing on half-closes.
func pipe(a, b net.Conn) {
	defer b.Close()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}
