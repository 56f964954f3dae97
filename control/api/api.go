// Package api is Gatehouse's REST API under /api/v1: resource-oriented
// JSON, errors as application/problem+json (RFC 9457) naming the offending
// field, keyset pagination with a continue token, and an OpenAPI 3
// document at /api/v1/openapi.json that a test holds to the handlers.
//
// Every request but the OpenAPI document is authenticated (an API token
// for now; Kratos sessions next) and authorized by control/policy before
// the store is touched, and every change is written to the audit stream.
package api

import (
	"context"
	"crypto"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// Config configures the API.
type Config struct {
	Store  *store.Store
	Policy *policy.Engine
	// Audit receives one event per change (and per refused change).
	Audit audit.Sink
	// GatewayURL and GatewayCA go into bootstrap manifests: where agents
	// dial, and how they verify the gateway (PEM).
	GatewayURL string
	GatewayCA  []byte
	// TrustBundle, if set, returns the gateway's trust bundle now (it
	// changes through a root rotation); GatewayCA otherwise.
	TrustBundle func() []byte
	// AgentImage is the agent container image manifests run.
	AgentImage string
	// BootstrapTTL is how long a new cluster's token lasts.
	BootstrapTTL time.Duration
	// Node names the node in audit events.
	Node string
	// Identity validates Kratos session tokens; nil accepts API tokens only.
	Identity *identity.Kratos
	// SSO reads the current groups of people who log in through an SSO
	// provider; nil (or a provider it does not read) keeps the groups
	// Kratos recorded when the person registered.
	SSO *SSOConfig
	// Issuer signs people's client certificates; nil disables
	// /api/v1/credentials.
	Issuer CertIssuer
	// Revoker makes revocations take effect on the gateway; nil records
	// them in the store only.
	Revoker Revoker
	// Notify is told when a change of bindings or membership changes a
	// person's access; nil leaves it to their next request.
	Notify AccessNotifier
	// View is the gateway cluster, for GET /api/v1/status; nil shows no
	// members and no owners.
	View   ClusterView
	Logger *slog.Logger
}

// CertIssuer signs a person's client certificate. *ca.Authority implements
// it.
type CertIssuer interface {
	// IssueUser signs; an error for which ca.Retryable is true (not the
	// leader, an election) is answered 503 with Retry-After.
	IssueUser(ctx context.Context, user string, groups []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error)
}

// Revoker applies revocations on the gateway: refuses the certificates and
// ends the live sessions they opened.
type Revoker interface {
	// RevokeUser refuses every certificate of the person issued before
	// before, ends their sessions and removes their service accounts.
	RevokeUser(ctx context.Context, userID string, before time.Time) error
	// RevokeSerial refuses one certificate and ends its sessions.
	RevokeSerial(ctx context.Context, serial string) error
}

// AgentRevoker is an optional side interface of Revoker: it refuses a
// cluster's agent certificates issued before a moment and ends its tunnel.
type AgentRevoker interface {
	RevokeAgents(ctx context.Context, cluster string, before time.Time) error
}

// Certificate lifetimes when neither the person nor the organization sets
// one: eight hours is a working day; a day is the longest anyone gets.
const (
	DefaultCertTTL = 8 * time.Hour
	MaxCertTTL     = 24 * time.Hour
	// MaxAgentCertTTL bounds agent certificates (node.Config.AgentCertTTL
	// is refused above it): a re-homed cluster's old agent stays revoked
	// until its last certificate has expired.
	MaxAgentCertTTL = 7 * 24 * time.Hour
)

// DefaultConfig returns the defaults; Store, Policy, Audit, GatewayURL and
// GatewayCA must be set.
func DefaultConfig() Config {
	return Config{AgentImage: "ghcr.io/gatehouse-dev/gatehouse:latest", BootstrapTTL: store.DefaultBootstrapTTL}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Store == nil || c.Policy == nil || c.Audit == nil:
		return errors.New("api: Store, Policy and Audit are required")
	case !strings.HasPrefix(c.GatewayURL, "https://") || len(c.GatewayCA) == 0:
		return errors.New("api: GatewayURL (https://) and GatewayCA are required")
	case c.AgentImage == "" || c.BootstrapTTL <= 0:
		return errors.New("api: AgentImage and a positive BootstrapTTL are required")
	case c.SSO != nil && (c.SSO.Providers == nil || c.SSO.Sealer == nil || c.Identity == nil):
		return errors.New("api: SSO needs Providers, Sealer and Identity")
	}
	return nil
}

// maxBody bounds request bodies: every object of the API is far smaller.
const maxBody = 1 << 20

// API serves /api/v1.
type API struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
}

// New returns the API for cfg.
func New(cfg Config) (*API, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &API{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	// Unauthenticated by design: the document describes the API and holds
	// no data; clients and tooling fetch it before they have credentials.
	a.mux.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(openapiDoc)
	})
	for _, r := range a.routes() {
		a.mux.Handle(r.pattern, a.authenticated(r.handler))
	}
	a.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		problem(w, http.StatusNotFound, "no such endpoint", r.Method+" "+r.URL.Path, "")
	})
	return a, nil
}

type route struct {
	pattern string
	handler handlerFunc
}

func (a *API) routes() []route {
	return []route{
		{"GET /api/v1/whoami", a.whoami},
		{"GET /api/v1/projects", a.listProjects},
		{"POST /api/v1/projects", a.createProject},
		{"GET /api/v1/projects/{name}", a.getProject},
		{"DELETE /api/v1/projects/{name}", a.deleteProject},
		{"GET /api/v1/clusters", a.listClusters},
		{"POST /api/v1/clusters", a.createCluster},
		{"GET /api/v1/clusters/{name}", a.getCluster},
		{"PUT /api/v1/clusters/{name}", a.updateCluster},
		{"DELETE /api/v1/clusters/{name}", a.deleteCluster},
		{"POST /api/v1/clusters/{name}/bootstrap", a.bootstrapCluster},
		{"POST /api/v1/clusters/{name}/rehome", a.rehomeCluster},
		{"PUT /api/v1/projects/{name}", a.updateProject},
		{"GET /api/v1/users", a.listUsers},
		{"POST /api/v1/users", a.createUser},
		{"DELETE /api/v1/users/{id}", a.deleteUser},
		{"POST /api/v1/users/{id}/invitation", a.inviteUser},
		{"GET /api/v1/groups", a.listGroups},
		{"POST /api/v1/groups", a.createGroup},
		{"DELETE /api/v1/groups/{name}", a.deleteGroup},
		{"GET /api/v1/rolebindings", a.listBindings},
		{"POST /api/v1/rolebindings", a.createBinding},
		{"DELETE /api/v1/rolebindings/{id}", a.deleteBinding},
		{"GET /api/v1/roles", a.listRoles},
		{"POST /api/v1/roles", a.createRole},
		{"DELETE /api/v1/roles/{name}", a.deleteRole},
		{"GET /api/v1/tokens", a.listTokens},
		{"POST /api/v1/tokens", a.createToken},
		{"DELETE /api/v1/tokens/{id}", a.deleteToken},
		{"POST /api/v1/login", a.login},
		{"POST /api/v1/logout", a.logout},
		{"POST /api/v1/credentials", a.credentials},
		{"POST /api/v1/revocations", a.revoke},
		{"GET /api/v1/status", a.status},
		{"GET /api/v1/audit", a.searchAudit},
		{"GET /api/v1/audit/recordings/{id}", a.getRecording},
	}
}

// Routes returns the patterns of the authenticated endpoints, "METHOD
// PATH", for the test that holds them to the OpenAPI document.
func Routes() []string {
	var out []string
	for _, r := range (&API{}).routes() {
		out = append(out, r.pattern)
	}
	return out
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Owns reports whether r is one of the API's own endpoints (by path; a
// known path with another method is the API's too). The gateway answers a
// Kubernetes-shaped request that is not with a Status naming the fix.
func (a *API) Owns(r *http.Request) bool {
	_, pattern := a.mux.Handler(r)
	return pattern != "/api/"
}

// Caller is who an authenticated request comes from.
type Caller struct {
	User    *store.User
	Subject policy.Subject
	// Session is the Kratos session, when the caller used one (not an API
	// token); SessionToken is its token.
	Session      *identity.Session
	SessionToken string
	decider      *policy.Decider
	// provisioned: this login made the person's account (SSO).
	provisioned bool
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c *Caller) error

// apiError is an error with its HTTP status and, for bad input, the field.
type apiError struct {
	status int
	title  string
	detail string
	field  string
	// retryAfter, in seconds, is sent as Retry-After when positive.
	retryAfter int
}

func (e *apiError) Error() string { return e.detail }

func badField(field, format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, title: "invalid request", detail: fmt.Sprintf(format, args...), field: field}
}

func forbidden(act policy.Action) error {
	return &apiError{status: http.StatusForbidden, title: "forbidden", detail: fmt.Sprintf("you may not %s here", act)}
}

// authenticated checks the caller's credential, then runs h; errors from
// h become problem documents.
func (a *API) authenticated(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := a.authenticate(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gatehouse"`)
			problem(w, http.StatusUnauthorized, "unauthenticated", err.Error(), "")
			return
		}
		if err := h(w, r, c); err != nil {
			a.writeError(w, err)
		}
	})
}

func (a *API) writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		if ae.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
		}
		problem(w, ae.status, ae.title, ae.detail, ae.field)
	case errors.Is(err, store.ErrNotFound):
		problem(w, http.StatusNotFound, "not found", err.Error(), "")
	case errors.Is(err, store.ErrExists):
		problem(w, http.StatusConflict, "already exists", err.Error(), "name")
	case errors.Is(err, store.ErrConflict):
		problem(w, http.StatusConflict, "changed since read", err.Error(), "version")
	case errors.Is(err, store.ErrInvalid):
		problem(w, http.StatusBadRequest, "invalid request", err.Error(), "")
	case errors.Is(err, store.ErrBadContinue):
		problem(w, http.StatusBadRequest, "invalid request", err.Error(), "continue")
	default:
		a.log.Error("api: internal error", "err", err)
		problem(w, http.StatusInternalServerError, "internal error", "the request could not be completed", "")
	}
}

// authenticate reads "Authorization: Bearer TOKEN".
func (a *API) authenticate(r *http.Request) (*Caller, error) {
	h := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || token == "" {
		return nil, errors.New("no credential: send Authorization: Bearer TOKEN")
	}
	c := &Caller{}
	var u *store.User
	var limit []string
	if store.IsAPIToken(token) || a.cfg.Identity == nil {
		t, err := a.cfg.Store.VerifyAPIToken(r.Context(), token)
		if err != nil {
			return nil, errors.New("the token is invalid, expired or revoked")
		}
		if u, err = a.cfg.Store.GetUser(r.Context(), t.UserID); err != nil {
			return nil, errors.New("the token's owner no longer exists")
		}
		limit = t.Roles
	} else {
		s, err := a.cfg.Identity.Session(r.Context(), token)
		if err != nil {
			return nil, errors.New("the session is invalid or has ended: run gatehouse login")
		}
		u, err = a.cfg.Store.GetUserByKratosID(r.Context(), s.IdentityID)
		if errors.Is(err, store.ErrNotFound) && r.URL.Path == "/api/v1/login" {
			// The first login of a person provisioned by email: the login
			// handler links them.
			u, err = a.cfg.Store.GetUser(r.Context(), s.Email)
			if errors.Is(err, store.ErrNotFound) {
				u, err = a.provision(r.Context(), s)
				c.provisioned = err == nil
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					a.log.Error("api: SSO provisioning failed", "email", s.Email, "provider", s.Provider, "err", err)
				}
			}
		}
		if err != nil {
			return nil, errors.New("no Gatehouse account for this identity: ask an admin to add " + s.Email)
		}
		c.Session, c.SessionToken = s, token
	}
	groups, err := a.cfg.Store.UserGroups(r.Context(), u.ID)
	if err != nil {
		return nil, err
	}
	sub := policy.Subject{UserID: u.ID, Groups: groups}
	if len(limit) > 0 {
		sub.Limit = limit
	}
	d, err := a.cfg.Policy.For(r.Context(), sub)
	if err != nil {
		return nil, err
	}
	c.User, c.Subject, c.decider = u, sub, d
	return c, nil
}

// problem writes an RFC 9457 problem document.
func problem(w http.ResponseWriter, status int, title, detail, field string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	body := map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail}
	if field != "" {
		body["field"] = field
	}
	json.NewEncoder(w).Encode(body)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: one object, known fields only, of the
// right types, at most maxBody bytes. A mistake names the field.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return &apiError{status: http.StatusUnsupportedMediaType, title: "unsupported media type", detail: "Content-Type must be application/json"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return badField("", "request body larger than %d bytes", maxBody)
		}
		return badField("", "cannot read request body: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		switch {
		case errors.As(err, &typeErr):
			return badField(typeErr.Field, "field %q must be a %s", typeErr.Field, typeErr.Type.Kind())
		case errors.As(err, &syntaxErr):
			return badField("", "malformed JSON at byte %d", syntaxErr.Offset)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return badField(f, "unknown field %q", f)
		}
		return badField("", "malformed JSON: %v", err)
	}
	if dec.More() {
		return badField("", "trailing data after the JSON object")
	}
	return nil
}

func validName(field, name string) error {
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		return badField(field, "%s %q: %s", field, name, strings.Join(errs, "; "))
	}
	return nil
}

func page(r *http.Request) (store.Page, error) {
	p := store.Page{Continue: r.URL.Query().Get("continue")}
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > store.MaxLimit {
			return p, badField("limit", "limit must be 1..%d", store.MaxLimit)
		}
		p.Limit = n
	}
	return p, nil
}

// List is apitypes.List.
type List[T any] = apitypes.List[T]

// auditChange writes a system audit event for a change.
func (a *API) auditChange(ctx context.Context, r *http.Request, c *Caller, action, object string, status int, errMsg string) {
	a.auditGroups(ctx, r, c, action, object, status, errMsg, nil)
}

// auditGroups is auditChange with the groups the caller is in after the
// change (a login's: what the IdP's groups gave them).
func (a *API) auditGroups(ctx context.Context, r *http.Request, c *Caller, action, object string, status int, errMsg string, groups []string) {
	a.auditEvent(ctx, r, c, &audit.Event{Action: action, Object: object, Status: status, Error: errMsg, Groups: groups})
}

// auditEvent writes ev, a system event of the caller's request, filling
// in what the request says.
func (a *API) auditEvent(ctx context.Context, r *http.Request, c *Caller, ev *audit.Event) {
	ev.Kind, ev.Time, ev.Phase, ev.Node, ev.User, ev.Verb = audit.KindSystem, time.Now(), audit.PhaseComplete, a.cfg.Node, c.User.ID, r.Method
	ev.Path, ev.ClientAddr, ev.UserAgent = r.URL.Path, r.RemoteAddr, r.UserAgent()
	if err := a.cfg.Audit.Write(context.WithoutCancel(ctx), ev); err != nil {
		a.log.Error("api: audit write failed", "err", err)
	}
}

//go:embed openapi.json
var openapiDoc []byte

// trustBundle is the gateway's trust bundle now.
func (a *API) trustBundle() []byte {
	if a.cfg.TrustBundle != nil {
		return a.cfg.TrustBundle()
	}
	return a.cfg.GatewayCA
}
