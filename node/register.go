package node

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
)

// Registrar redeems bootstrap tokens. *store.Store implements it.
type Registrar interface {
	// Redeem consumes token for the cluster with this fingerprint and
	// returns the cluster's name, or an error if the token is unknown,
	// expired or used.
	Redeem(ctx context.Context, token, fingerprint string) (cluster string, err error)
}

// AgentIssuer signs agent certificates. *ca.Authority implements it.
type AgentIssuer interface {
	// IssueAgent signs; an error for which ca.Retryable is true (not the
	// leader, an election) means try again shortly.
	IssueAgent(ctx context.Context, cluster string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error)
}

// RegisterRequest is what an agent sends to /v1/agents/register.
type RegisterRequest struct {
	// Token is the one-time bootstrap token from the cluster's manifest.
	Token string `json:"token"`
	// CSR is a PEM certificate request for a key the agent generated; the
	// private key never leaves the cluster.
	CSR string `json:"csr"`
	// Fingerprint identifies the cluster: its kube-system namespace UID.
	Fingerprint string `json:"fingerprint"`
}

// RegisterResponse carries the agent's certificate chain.
type RegisterResponse struct {
	Cluster     string `json:"cluster"`
	Certificate string `json:"certificate"`
}

// maxRegisterBody bounds a registration request: a CSR is ~1 KiB.
const maxRegisterBody = 64 << 10

// registerHandler serves POST /v1/agents/register.
//
// It needs no client certificate: the caller is a new agent that has none
// yet. The one-time bootstrap token authenticates it instead, and the
// certificate it gets names only the cluster the token was made for.
func (n *Node) registerHandler(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"error": msg})
	}
	if n.cfg.Registrar == nil || n.cfg.AgentIssuer == nil {
		fail(http.StatusNotFound, "this node does not register agents")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		fail(http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	// Nothing has authenticated the caller yet: the body must come
	// promptly, or the connection goes.
	if err := http.NewResponseController(w).SetReadDeadline(n.cfg.Now().Add(n.cfg.UnauthenticatedReadTimeout)); err != nil {
		n.log.Warn("register: cannot set a read deadline", "err", err)
		fail(http.StatusInternalServerError, "cannot read the request")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRegisterBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		fail(http.StatusRequestEntityTooLarge, "request too large")
		return
	case err != nil:
		w.Header().Set("Connection", "close")
		fail(http.StatusRequestTimeout, "request body not received in time")
		return
	}
	var req RegisterRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(http.StatusBadRequest, "malformed request: "+err.Error())
		return
	}
	csr, err := pki.ParseCSR([]byte(req.CSR))
	if err != nil {
		fail(http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Fingerprint) == 0 || len(req.Fingerprint) > 128 {
		fail(http.StatusBadRequest, "fingerprint must be 1..128 bytes")
		return
	}
	cluster, err := n.cfg.Registrar.Redeem(r.Context(), req.Token, req.Fingerprint)
	if err != nil {
		// One answer for unknown, expired and used tokens and for a
		// fingerprint that is not the cluster's: nothing for a guesser or
		// an impostor to learn. The log and the audit event say which.
		n.log.Warn("agent registration refused", "remote", r.RemoteAddr, "cluster", cluster, "fingerprint", req.Fingerprint, "err", err)
		n.auditAgent(r, "agent.register", cluster, req.Fingerprint, http.StatusUnauthorized, err.Error())
		fail(http.StatusUnauthorized, "bootstrap token invalid, expired or already used, or the cluster is registered elsewhere")
		return
	}
	chain, err := n.cfg.AgentIssuer.IssueAgent(r.Context(), cluster, csr.PublicKey, n.cfg.AgentCertTTL)
	if err != nil {
		// The token is spent: the agent must register again with a new
		// one, unless the CA asked for a retry (which the agent does with
		// backoff) - the redemption is then on the next attempt's token.
		n.log.Error("agent certificate", "cluster", cluster, "err", err)
		n.auditAgent(r, "agent.register", cluster, req.Fingerprint, http.StatusInternalServerError, err.Error())
		if ca.Retryable(err) {
			w.Header().Set("Retry-After", "2")
			fail(http.StatusServiceUnavailable, "the certificate authority is not available right now; retry")
			return
		}
		fail(http.StatusInternalServerError, "cannot issue certificate")
		return
	}
	n.log.Info("agent registered", "cluster", cluster, "fingerprint", req.Fingerprint, "remote", r.RemoteAddr)
	n.auditAgent(r, "agent.register", cluster, req.Fingerprint, http.StatusOK, "")
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(RegisterResponse{Cluster: cluster, Certificate: string(chain)})
}

// renewAgent signs a new certificate for an agent whose tunnel is up. The
// cluster is the one its current certificate names: a CSR cannot ask for
// another.
func (n *Node) renewAgent(ctx context.Context, cluster string, csrPEM []byte) ([]byte, time.Time, error) {
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		return nil, time.Time{}, err
	}
	chain, err := n.cfg.AgentIssuer.IssueAgent(ctx, cluster, csr.PublicKey, n.cfg.AgentCertTTL)
	ev := &audit.Event{Kind: audit.KindSystem, Action: "agent.renew", Object: "cluster/" + cluster, Cluster: cluster, Time: n.cfg.Now(),
		Phase: audit.PhaseComplete, Node: n.cfg.Name, Status: http.StatusOK}
	if err != nil {
		ev.Status, ev.Error = http.StatusInternalServerError, err.Error()
	}
	n.writeAudit(ctx, ev)
	if err != nil {
		n.log.Error("agent certificate renewal", "cluster", cluster, "err", err)
		return nil, time.Time{}, errors.New("cannot issue certificate")
	}
	block, _ := pem.Decode(chain)
	if block == nil {
		return nil, time.Time{}, errors.New("issuer returned no certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, time.Time{}, err
	}
	return chain, leaf.NotAfter, nil
}

// auditAgent writes a system event about an agent's registration.
func (n *Node) auditAgent(r *http.Request, action, cluster, fingerprint string, status int, errMsg string) {
	n.writeAudit(r.Context(), &audit.Event{
		Kind: audit.KindSystem, Action: action, Object: "fingerprint/" + fingerprint, Cluster: cluster,
		Time: n.cfg.Now(), Phase: audit.PhaseComplete, Node: n.cfg.Name, Verb: r.Method, Path: r.URL.Path,
		Status: status, Error: errMsg, ClientAddr: r.RemoteAddr, UserAgent: r.UserAgent(),
	})
}
