// Package apiclient is the Go client of Gatehouse's REST API
// (control/api), used by the CLI and by automation.
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
)

// Problem is an error answered by the API (application/problem+json).
type Problem struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	// Field names the request field at fault, when there is one.
	Field string `json:"field,omitempty"`
}

func (p *Problem) Error() string {
	s := fmt.Sprintf("%s (%d)", p.Title, p.Status)
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	if p.Field != "" {
		s += " [field " + p.Field + "]"
	}
	return s
}

// Config configures a Client.
type Config struct {
	// Server is the gateway's URL, https://HOST[:PORT].
	Server string
	// Token is an API token (or, later, a session token).
	Token string
	// CAPEM verifies the server; nil uses the system roots.
	CAPEM []byte
	// Timeout bounds each call. Thirty seconds is long for any call of this
	// API and short enough that a dead server is noticed.
	Timeout time.Duration
}

// Client calls the API.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("apiclient: server %q must be https://HOST[:PORT]", cfg.Server)
	}
	if cfg.Token == "" {
		return nil, errors.New("apiclient: no token (set --token-file or GATEHOUSE_TOKEN)")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(cfg.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("apiclient: the CA file holds no certificate")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &Client{base: u, token: cfg.Token, hc: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	b, _, err := c.send(ctx, method, path, in, "application/json", 16<<20)
	if err != nil {
		return err
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("gatehouse API: bad answer: %w", err)
		}
	}
	return nil
}

// send makes a request and returns the body of a successful answer (at
// most limit bytes) and its header; an unsuccessful one is a *Problem.
func (c *Client) send(ctx context.Context, method, path string, in any, accept string, limit int64) ([]byte, http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.base.String(), "/")+path, body)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", accept)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("gatehouse API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, nil, fmt.Errorf("gatehouse API: %w", err)
	}
	if resp.StatusCode >= 300 {
		p := &Problem{Status: resp.StatusCode, Title: resp.Status}
		json.Unmarshal(b, p)
		return nil, nil, p
	}
	return b, resp.Header, nil
}

// UpdateCluster changes a cluster's description and session recording
// policy; cl.Version must be the version read.
func (c *Client) UpdateCluster(ctx context.Context, cl apitypes.Cluster) (*apitypes.Cluster, error) {
	var out apitypes.Cluster
	return &out, c.call(ctx, http.MethodPut, "/api/v1/clusters/"+url.PathEscape(cl.Name), cl, &out)
}

// MaxRecording bounds a recording the client reads.
const MaxRecording = 1 << 30

// Recording returns a recorded session (asciicast v2), and whether it is
// complete.
func (c *Client) Recording(ctx context.Context, id string) ([]byte, bool, error) {
	b, h, err := c.send(ctx, http.MethodGet, "/api/v1/audit/recordings/"+url.PathEscape(id), nil, "application/x-asciicast", MaxRecording)
	if err != nil {
		return nil, false, err
	}
	return b, h.Get("X-Recording-Complete") == "true", nil
}

// CreateCluster creates a cluster and returns it with its bootstrap.
func (c *Client) CreateCluster(ctx context.Context, cl apitypes.Cluster) (*apitypes.ClusterCreated, error) {
	var out apitypes.ClusterCreated
	return &out, c.call(ctx, http.MethodPost, "/api/v1/clusters", cl, &out)
}

// GetCluster reads a cluster.
func (c *Client) GetCluster(ctx context.Context, name string) (*apitypes.Cluster, error) {
	var out apitypes.Cluster
	return &out, c.call(ctx, http.MethodGet, "/api/v1/clusters/"+url.PathEscape(name), nil, &out)
}

// ListClusters lists all of a project's clusters, following continue
// tokens.
func (c *Client) ListClusters(ctx context.Context, project string) ([]apitypes.Cluster, error) {
	var all []apitypes.Cluster
	cont := ""
	for {
		var l apitypes.List[apitypes.Cluster]
		q := url.Values{"project": {project}}
		if cont != "" {
			q.Set("continue", cont)
		}
		if err := c.call(ctx, http.MethodGet, "/api/v1/clusters?"+q.Encode(), nil, &l); err != nil {
			return nil, err
		}
		all = append(all, l.Items...)
		if cont = l.Continue; cont == "" {
			return all, nil
		}
	}
}

// DeleteCluster deletes a cluster.
func (c *Client) DeleteCluster(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/api/v1/clusters/"+url.PathEscape(name), nil, nil)
}

// Rehome moves a registered cluster to a new fingerprint (a rebuilt
// cluster): the old agent is revoked, and the new bootstrap token and
// manifest register the new one.
func (c *Client) Rehome(ctx context.Context, name string) (*apitypes.Bootstrap, error) {
	var out apitypes.Bootstrap
	return &out, c.call(ctx, http.MethodPost, "/api/v1/clusters/"+url.PathEscape(name)+"/rehome", nil, &out)
}

// Bootstrap issues a new bootstrap token and manifest for a cluster.
func (c *Client) Bootstrap(ctx context.Context, name string) (*apitypes.Bootstrap, error) {
	var out apitypes.Bootstrap
	return &out, c.call(ctx, http.MethodPost, "/api/v1/clusters/"+url.PathEscape(name)+"/bootstrap", nil, &out)
}

// Whoami returns the caller.
func (c *Client) Whoami(ctx context.Context) (*apitypes.Whoami, error) {
	var out apitypes.Whoami
	return &out, c.call(ctx, http.MethodGet, "/api/v1/whoami", nil, &out)
}

// AuditPage is a page of an audit search: the events as written, and
// where the next page starts ("" on the last).
type AuditPage struct {
	Items    []json.RawMessage `json:"items"`
	Continue string            `json:"continue,omitempty"`
}

// SearchAudit asks for one page of the organization's audit events that
// the query's parameters select (GET /api/v1/audit).
func (c *Client) SearchAudit(ctx context.Context, query url.Values) (*AuditPage, error) {
	var out AuditPage
	return &out, c.call(ctx, http.MethodGet, "/api/v1/audit?"+query.Encode(), nil, &out)
}

// Status returns the gateway cluster's members and the health of the
// organization's clusters.
func (c *Client) Status(ctx context.Context) (*apitypes.Status, error) {
	var out apitypes.Status
	return &out, c.call(ctx, http.MethodGet, "/api/v1/status", nil, &out)
}

// Login records a Kratos login with Gatehouse (links the identity, syncs
// IdP groups). The client's token must be the session token.
func (c *Client) Login(ctx context.Context) (*apitypes.LoginResult, error) {
	var out apitypes.LoginResult
	return &out, c.call(ctx, http.MethodPost, "/api/v1/login", nil, &out)
}

// Invite issues an invitation to a person (id or email); ttl "" means the
// server's default.
func (c *Client) Invite(ctx context.Context, user, ttl string) (*apitypes.InvitationResult, error) {
	var out apitypes.InvitationResult
	return &out, c.call(ctx, http.MethodPost, "/api/v1/users/"+url.PathEscape(user)+"/invitation", apitypes.InvitationRequest{TTL: ttl}, &out)
}

// Logout ends the client's session.
func (c *Client) Logout(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "/api/v1/logout", nil, nil)
}

// Credential asks for a client certificate for the key of csrPEM.
func (c *Client) Credential(ctx context.Context, csrPEM []byte, ttl string) (*apitypes.Credential, error) {
	var out apitypes.Credential
	return &out, c.call(ctx, http.MethodPost, "/api/v1/credentials", apitypes.CredentialRequest{CSR: string(csrPEM), TTL: ttl}, &out)
}

// Revoke revokes a certificate or a person.
func (c *Client) Revoke(ctx context.Context, req apitypes.RevocationRequest) error {
	return c.call(ctx, http.MethodPost, "/api/v1/revocations", req, nil)
}

// Do calls any endpoint: in is sent as JSON (nil for none) and the answer
// decoded into out (nil to discard).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	return c.call(ctx, method, path, in, out)
}

// List reads every page of a list endpoint into items (a pointer to a
// slice of the item type).
func (c *Client) List(ctx context.Context, path string, items any) error {
	var all struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := c.listAll(ctx, path, &all); err != nil {
		return err
	}
	b, err := json.Marshal(all.Items)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, items)
}
