package node

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// addrLimiter bounds how often one client address may call the node's
// unauthenticated endpoints (agent registration, the API document): a token
// bucket per address, forgotten after a minute of silence. Authenticated
// requests are bounded by who makes them, not here.
type addrLimiter struct {
	rate  rate.Limit
	burst int
	now   func() time.Time

	mu      sync.Mutex // guards clients
	clients map[string]*addrBucket
}

type addrBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// maxLimitedAddrs bounds the limiter's memory: past it, idle addresses are
// forgotten, and if none is idle the table starts afresh (a flood from that
// many addresses is the load balancer's to stop).
const maxLimitedAddrs = 65536

func newAddrLimiter(r rate.Limit, burst int, now func() time.Time) *addrLimiter {
	return &addrLimiter{rate: r, burst: burst, now: now, clients: map[string]*addrBucket{}}
}

// allow reports whether the client at remoteAddr (host:port) may go on.
func (l *addrLimiter) allow(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.clients[host]
	if b == nil {
		if len(l.clients) >= maxLimitedAddrs {
			for k, v := range l.clients {
				if now.Sub(v.seen) > time.Minute {
					delete(l.clients, k)
				}
			}
			if len(l.clients) >= maxLimitedAddrs {
				l.clients = map[string]*addrBucket{}
			}
		}
		b = &addrBucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.clients[host] = b
	}
	b.seen = now
	return b.lim.AllowN(now, 1)
}

// wrap answers 429 with Retry-After to a client over its rate.
func (l *addrLimiter) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !l.allow(r.RemoteAddr) {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(1/float64(l.rate)))))
			http.Error(w, "too many requests from this address", http.StatusTooManyRequests)
			return
		}
		h(w, r)
	}
}
