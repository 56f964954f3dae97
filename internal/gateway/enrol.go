package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// EnrolALPN is the TLS application protocol, on the peer port, of a new
// node asking the Raft leader for its first serving certificate (design
// 0006). The node has no certificate yet, so the peer port lets this one
// protocol in without one (ring.PeerConfig.Unauthenticated); the request
// proves instead that the node holds the key-encryption key: it carries
// an HMAC under the enrolment secret, which the store keeps sealed under
// the KEK.
const EnrolALPN = "gatehouse-enrol/1"

// Frames of the enrolment protocol (tunnel frame encoding).
const (
	frameEnrol    tunnel.FrameType = 5 // a JSON enrolRequest
	frameEnrolled tunnel.FrameType = 6 // a JSON signResponse
)

// enrolSecret names the shared secret of enrolment (ca.SharedSecret).
const enrolSecret = "enrolment"

// enrolSkew bounds how far an enrolment request's time may be from the
// leader's: with its nonce, it stops a replay.
const enrolSkew = 2 * time.Minute

// DefaultEnrolWait bounds how long a new node looks for a leader to enrol
// with before it signs its own certificate (the exception): five times an
// election. A cluster without a leader that long may need this very node
// to elect one (the second node of a two-voter group starting, or a group
// that lost its quorum), and this node cannot vote before it serves.
const DefaultEnrolWait = 5 * time.Second

// firstStartGrace is how long a new node waits to hear of other members
// before deciding that it is the first start of a cluster: no member has
// Raft state, so no leader can exist yet.
const firstStartGrace = time.Second

type enrolRequest struct {
	Name  string   `json:"name"`
	Hosts []string `json:"hosts"`
	// PublicKey is the certificate's key, PKIX DER.
	PublicKey []byte `json:"publicKey"`
	// Time is when the node asked, Unix milliseconds; Nonce is 16 random
	// bytes, hex.
	Time  int64  `json:"time"`
	Nonce string `json:"nonce"`
	// MAC is HMAC-SHA256 of the rest (enrolMAC) under the enrolment
	// secret, hex.
	MAC string `json:"mac"`
}

// mac computes the request's MAC under secret.
func (r *enrolRequest) mac(secret []byte) []byte {
	h := hmac.New(sha256.New, secret)
	// Length-prefixed fields: no two requests share an encoding.
	field := func(b []byte) {
		h.Write([]byte(strconv.Itoa(len(b)) + ":"))
		h.Write(b)
	}
	field([]byte(EnrolALPN))
	field([]byte(r.Name))
	field([]byte(strconv.Itoa(len(r.Hosts))))
	for _, host := range r.Hosts {
		field([]byte(host))
	}
	field(r.PublicKey)
	field([]byte(strconv.FormatInt(r.Time, 10)))
	field([]byte(r.Nonce))
	return h.Sum(nil)
}

// validate bounds what a caller without a certificate may send.
func (r *enrolRequest) validate() error {
	if r.Name == "" || len(r.Name) > 128 || len(r.Hosts) == 0 || len(r.Hosts) > 16 || len(r.PublicKey) > 1024 || len(r.Nonce) != 32 || len(r.MAC) != 64 {
		return errors.New("gateway: a malformed enrolment")
	}
	for _, h := range r.Hosts {
		if h == "" || len(h) > 253 || strings.ContainsFunc(h, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
			return errors.New("gateway: a malformed enrolment host")
		}
	}
	return nil
}

// enrolGuard refuses replayed enrolments and bounds their rate on the
// leader.
type enrolGuard struct {
	limit *rate.Limiter
	mu    sync.Mutex // guards seen
	seen  map[string]time.Time
}

func newEnrolGuard() *enrolGuard {
	// A burst of new nodes (a scale-out) at a few a second; a caller
	// without a secret gets no more.
	return &enrolGuard{limit: rate.NewLimiter(5, 20), seen: map[string]time.Time{}}
}

// fresh records nonce and reports whether it was not seen within the skew
// window.
func (e *enrolGuard) fresh(nonce string, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for n, at := range e.seen {
		if now.Sub(at) > 2*enrolSkew {
			delete(e.seen, n)
		}
	}
	if _, ok := e.seen[nonce]; ok {
		return false
	}
	e.seen[nonce] = now
	return true
}

// serveEnrol answers a new node's enrolment (Peers.Protocols, without a
// certificate: this endpoint is unauthenticated by TLS, and justified so
// because the node has no certificate yet; the request proves the KEK
// instead). Only the leader signs; every read has a deadline.
func (g *Gateway) serveEnrol(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	remote := c.RemoteAddr().String()
	var res signResponse
	defer func() { tunnel.WriteJSON(c, frameEnrolled, &res) }()
	if !g.enrol.limit.Allow() {
		res.Error, res.NotLeader = "too many enrolments; retry", true
		return
	}
	var req enrolRequest
	if err := tunnel.ReadJSON(c, frameEnrol, &req); err != nil {
		g.log.Warn("enrolment: unreadable request", "remote", remote, "err", err)
		res.Error = "unreadable request"
		return
	}
	refuse := func(why string) {
		g.log.Warn("enrolment refused", "remote", remote, "node", req.Name, "why", why)
		g.auditEnrol(req.Name, remote, 403, why)
		res.Error = "enrolment refused"
	}
	if err := req.validate(); err != nil {
		refuse(err.Error())
		return
	}
	secret, err := ca.SharedSecret(context.Background(), g.cfg.KEK, g.cfg.Store, enrolSecret)
	if err != nil {
		g.log.Error("enrolment: the secret does not open", "err", err)
		res.Error, res.NotLeader = "the leader cannot check enrolments now", true
		return
	}
	mac, err := hex.DecodeString(req.MAC)
	if err != nil || !hmac.Equal(mac, req.mac(secret)) {
		refuse("bad MAC: the node does not hold this cluster's key-encryption key")
		return
	}
	now := g.now()
	if d := now.Sub(time.UnixMilli(req.Time)); d > enrolSkew || d < -enrolSkew {
		refuse(fmt.Sprintf("its time is %s from the leader's", d.Round(time.Second)))
		return
	}
	if !g.enrol.fresh(req.Nonce, now) {
		refuse("a replayed request")
		return
	}
	pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		refuse("a bad public key")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	chain, err := g.signLocal(ctx, signRequest{Kind: "node", Hosts: req.Hosts, TTL: g.cfg.ServingCertTTL}, pub)
	if err != nil {
		res.Error, res.NotLeader = err.Error(), ca.Retryable(err)
		return
	}
	res.Chain = string(chain)
	g.log.Info("node enrolled", "node", req.Name, "remote", remote, "hosts", req.Hosts)
	g.auditEnrol(req.Name, remote, 200, "")
}

func (g *Gateway) auditEnrol(name, remote string, status int, why string) {
	ev := &audit.Event{Kind: audit.KindSystem, Action: "node.enrol", Object: "node/" + name, Time: g.now(), Phase: audit.PhaseComplete,
		Node: g.cfg.Node.Name, Status: status, Error: why, ClientAddr: remote}
	if err := g.cfg.Audit.Write(context.Background(), ev); err != nil {
		g.log.Error("audit: enrolment not written", "err", err)
	}
}

// enrolFirst gets this node's first serving certificate from the Raft
// leader, which it finds in gossip. If no member holds Raft state (a
// cluster's first start: no leader can exist yet), or no leader shows
// within DefaultEnrolWait, it signs its own (the exception of design 0006),
// with keys it unseals for that and seals at once.
func (g *Gateway) enrolFirst(ctx context.Context) error {
	key, _, err := pki.NewKey()
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	secret, err := ca.SharedSecret(ctx, g.cfg.KEK, g.cfg.Store, enrolSecret)
	if err != nil {
		return err
	}
	start := time.Now()
	wait := g.cfg.Ring.EnrolWait
	if wait <= 0 {
		wait = DefaultEnrolWait
	}
	for {
		leader, state := "", false
		for _, m := range g.ring.Members() {
			if m.Name == g.ring.Name() {
				continue
			}
			state = state || m.Meta.Consensus
			if m.Meta.Leads && m.Meta.PeerAddr != "" {
				leader = m.Meta.PeerAddr
			}
		}
		if leader != "" {
			chain, err := g.enrolWith(ctx, leader, secret, pubDER)
			if err == nil {
				c, err := ca.NodeCertificate(chain, key)
				if err != nil {
					return err
				}
				g.cert.Store(&c)
				if err := ca.SaveNodeCertificate(ctx, g.cfg.KEK, g.cfg.CertDir, g.cfg.Node.Name, c); err != nil {
					g.log.Warn("serving certificate not kept for the next start", "err", err)
				}
				g.log.Info("serving certificate from the leader (enrolled)", "leader", leader, "took", time.Since(start).Round(time.Millisecond))
				return nil
			}
			g.log.Warn("enrolment with the leader failed; trying again", "leader", leader, "err", err)
		}
		firstStart := !state && time.Since(start) >= firstStartGrace
		if firstStart || time.Since(start) >= wait {
			why := "no member holds Raft state: the first start of this gateway cluster"
			if !firstStart {
				why = fmt.Sprintf("no leader to enrol with within %s", wait)
			}
			g.log.Warn("this node signs its own serving certificate, unsealing the keys for that alone (design 0006)", "why", why)
			if err := g.CA.Unseal(ctx, g.cfg.KEK, g.cfg.Store); err != nil {
				return err
			}
			defer g.CA.Seal()
			return g.renewCert()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// enrolWith asks the leader at addr to sign a certificate for pubDER.
func (g *Gateway) enrolWith(ctx context.Context, addr string, secret, pubDER []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := g.peers.DialUnauthenticated(ctx, addr, EnrolALPN)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	nonce := make([]byte, 16)
	rand.Read(nonce)
	req := enrolRequest{Name: g.cfg.Node.Name, Hosts: g.cfg.Hosts, PublicKey: pubDER, Time: g.now().UnixMilli(), Nonce: hex.EncodeToString(nonce)}
	req.MAC = hex.EncodeToString(req.mac(secret))
	if err := tunnel.WriteJSON(c, frameEnrol, &req); err != nil {
		return nil, err
	}
	var res signResponse
	if err := tunnel.ReadJSON(c, frameEnrolled, &res); err != nil {
		return nil, err
	}
	if res.Error != "" {
		return nil, remoteErr{msg: res.Error, notLeader: res.NotLeader}
	}
	return []byte(res.Chain), nil
}
