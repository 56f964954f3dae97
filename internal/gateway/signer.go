package gateway

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// SignALPN is the TLS application protocol, on the peer port, of signing
// requests that a node forwards to the Raft leader (design 0006). Only
// nodes reach it: the peer port demands a node certificate.
const SignALPN = "gatehouse-sign/1"

// Frames of the signing protocol (tunnel frame encoding).
const (
	frameSign   tunnel.FrameType = 1 // a JSON signRequest
	frameSigned tunnel.FrameType = 2 // a JSON signResponse
)

// DefaultSignWait bounds how long a signing request waits for a leader
// (an election takes about a second) before it fails with a retryable
// error: the API then answers 503 with Retry-After.
const DefaultSignWait = 5 * time.Second

type signRequest struct {
	// Kind is "user", "agent" or "node".
	Kind    string   `json:"kind"`
	Subject string   `json:"subject,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	// Hosts are a node certificate's names and addresses.
	Hosts []string `json:"hosts,omitempty"`
	// PublicKey is the certificate's key, PKIX DER.
	PublicKey []byte        `json:"publicKey"`
	TTL       time.Duration `json:"ttl"`
}

type signResponse struct {
	Chain     string `json:"chain,omitempty"`
	Error     string `json:"error,omitempty"`
	NotLeader bool   `json:"notLeader,omitempty"`
}

// signer signs people's and agents' certificates on whichever node can:
// this one while its authority is unsealed (it leads), else the Raft
// leader, over the peer port. It implements api.CertIssuer and
// node.AgentIssuer.
type signer struct {
	g    *Gateway
	wait time.Duration
}

// Signer returns the node's signer: this node's authority while it leads
// (or is alone), else the leader's (api.CertIssuer, node.AgentIssuer).
func (g *Gateway) Signer() api.CertIssuer { return signer{g: g} }

func (s signer) IssueUser(ctx context.Context, user string, groups []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	return s.issue(ctx, signRequest{Kind: "user", Subject: user, Groups: groups, TTL: ttl}, pub)
}

func (s signer) IssueAgent(ctx context.Context, cluster string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	return s.issue(ctx, signRequest{Kind: "agent", Subject: cluster, TTL: ttl}, pub)
}

// IssueNode signs a node certificate for hosts and pub (this node's
// serving certificate, renewed).
func (s signer) IssueNode(ctx context.Context, hosts []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	return s.issue(ctx, signRequest{Kind: "node", Hosts: hosts, TTL: ttl}, pub)
}

// signMetrics time signing and count its failures.
type signMetrics struct {
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

func newSignMetrics() *signMetrics {
	return &signMetrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "gatehouse_sign_seconds",
			Help: "Time to sign a certificate asked of this node, by kind (user, agent, node) and where it was signed (local, leader).",
			// From a tenth of a millisecond (local ECDSA) to the 5 s wait
			// for a leader.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 13),
		}, []string{"kind", "where"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_sign_errors_total",
			Help: "Certificates asked of this node and not signed, by kind and reason (unavailable: no leader in time, or the store; refused).",
		}, []string{"kind", "reason"}),
	}
}

func (m *signMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.latency, m.errors}
}

func (s signer) issue(ctx context.Context, req signRequest, pub crypto.PublicKey) ([]byte, error) {
	start := time.Now()
	chain, where, err := s.sign(ctx, req, pub)
	if m := s.g.signMetrics; m != nil {
		switch {
		case err == nil:
			m.latency.WithLabelValues(req.Kind, where).Observe(time.Since(start).Seconds())
		case ca.Retryable(err):
			m.errors.WithLabelValues(req.Kind, "unavailable").Inc()
		default:
			m.errors.WithLabelValues(req.Kind, "refused").Inc()
		}
	}
	return chain, err
}

// sign signs locally or on the leader, and says where.
func (s signer) sign(ctx context.Context, req signRequest, pub crypto.PublicKey) ([]byte, string, error) {
	chain, err := s.g.signLocal(ctx, req, pub)
	if !errors.Is(err, ca.ErrNotLeader) || s.g.cons == nil {
		return chain, "local", err
	}
	if req.PublicKey, err = x509.MarshalPKIXPublicKey(pub); err != nil {
		return nil, "", fmt.Errorf("gateway: public key: %w", err)
	}
	wait := s.wait
	if wait <= 0 {
		wait = DefaultSignWait
	}
	where, err := s.g.onLeader(ctx, wait, func() bool { return !s.g.CA.Sealed() },
		func() (err error) { chain, err = s.g.signLocal(ctx, req, pub); return err },
		func(ctx context.Context, addr string) (err error) { chain, err = s.remote(ctx, addr, req); return err })
	if err != nil {
		return nil, "", err
	}
	return chain, where, nil
}

// remoteErr is the leader's refusal: not retryable unless it says it no
// longer leads.
type remoteErr struct {
	msg       string
	notLeader bool
}

func (e remoteErr) Error() string   { return "gateway: the leader refused to sign: " + e.msg }
func (e remoteErr) Retryable() bool { return e.notLeader }

// retryableErr marks a failure to reach the leader as worth a retry.
type retryableErr struct{ error }

func (e retryableErr) Retryable() bool { return true }
func (e retryableErr) Unwrap() error   { return e.error }

// remote asks the leader at addr to sign.
func (s signer) remote(ctx context.Context, addr string, req signRequest) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := s.g.peers.DialProtocol(ctx, addr, SignALPN)
	if err != nil {
		return nil, retryableErr{err}
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if err := tunnel.WriteJSON(c, frameSign, &req); err != nil {
		return nil, retryableErr{err}
	}
	var res signResponse
	if err := tunnel.ReadJSON(c, frameSigned, &res); err != nil {
		return nil, retryableErr{err}
	}
	if res.Error != "" {
		return nil, remoteErr{msg: res.Error, notLeader: res.NotLeader}
	}
	return []byte(res.Chain), nil
}

// serveSign answers one node's signing request (Peers.Protocols): the
// peer port has verified that it is a node.
func (g *Gateway) serveSign(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var req signRequest
	if err := tunnel.ReadJSON(c, frameSign, &req); err != nil {
		g.log.Warn("signing: bad request from a node", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	var res signResponse
	pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var chain []byte
		chain, err = g.signLocal(ctx, req, pub)
		cancel()
		res.Chain = string(chain)
	}
	if err != nil {
		// NotLeader: worth asking again, here or of a new leader.
		res.Error, res.NotLeader = err.Error(), ca.Retryable(err)
	}
	tunnel.WriteJSON(c, frameSigned, &res)
}

// signLocal signs with this node's authority (ca.ErrNotLeader while it is
// sealed) and records the serial in the store, under its unique key: a
// serial met before (never yet seen: 64 random bits beside the time)
// means signing again under another.
func (g *Gateway) signLocal(ctx context.Context, req signRequest, pub crypto.PublicKey) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		chain, err := issueLocal(ctx, g.CA, req, pub)
		if err != nil {
			return nil, err
		}
		block, _ := pem.Decode(chain)
		if block == nil {
			return nil, errors.New("gateway: the authority returned no certificate")
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		subject := req.Subject
		if req.Kind == "node" && len(req.Hosts) > 0 {
			subject = req.Hosts[0]
		}
		err = g.cfg.Store.RecordIssued(ctx, store.IssuedCert{Serial: leaf.SerialNumber.Text(16), Kind: req.Kind, Subject: subject,
			Issued: leaf.NotBefore, NotAfter: leaf.NotAfter})
		switch {
		case err == nil:
			return chain, nil
		case errors.Is(err, store.ErrExists) && attempt < 3:
			g.log.Warn("signing: a serial issued before; signing again", "serial", leaf.SerialNumber.Text(16))
		default:
			// Not recorded, not handed out: the store decides, and it may
			// be back in a moment.
			return nil, retryableErr{fmt.Errorf("gateway: record the issued certificate: %w", err)}
		}
	}
}

func issueLocal(ctx context.Context, auth *ca.Authority, req signRequest, pub crypto.PublicKey) ([]byte, error) {
	switch req.Kind {
	case "user":
		return auth.IssueUser(ctx, req.Subject, req.Groups, pub, req.TTL)
	case "agent":
		return auth.IssueAgent(ctx, req.Subject, pub, req.TTL)
	case "node":
		return auth.IssueNode(ctx, req.Hosts, pub, req.TTL)
	}
	return nil, fmt.Errorf("gateway: unknown certificate kind %q", req.Kind)
}
