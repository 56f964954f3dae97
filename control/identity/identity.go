// Package identity is Gatehouse's side of Ory Kratos: it validates session
// tokens (toSession, cached briefly), creates people's identities through
// the admin API, and logs people in and out through the native (API) flows
// that the CLI uses. Kratos keeps passwords and runs SSO; Gatehouse keeps
// who may do what (control/store, control/policy) and links a person to
// their Kratos identity at their first login.
package identity

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	ory "github.com/ory/client-go"
)

// Errors returned by Kratos calls.
var (
	// ErrNoSession: the token is unknown, expired or revoked.
	ErrNoSession = errors.New("identity: no active session")
	// ErrBadCredentials: login refused (wrong email or password).
	ErrBadCredentials = errors.New("identity: wrong email or password")
)

// Config configures a Kratos client.
type Config struct {
	// PublicURL is Kratos's public API (self-service flows, sessions).
	PublicURL string
	// AdminURL is Kratos's admin API (identities). Empty disables the
	// admin calls.
	AdminURL string
	// SessionCacheTTL is how long a validated session is trusted without
	// asking Kratos again. Ten seconds takes most of the load off Kratos
	// and bounds how long a logged-out session keeps working; revoking a
	// person in Gatehouse takes effect at once regardless (the store is
	// read on every request).
	SessionCacheTTL time.Duration
	// SchemaID is the identity schema of people.
	SchemaID string
	// HTTPClient calls Kratos; nil means one with a 30 s timeout.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns a 10 s session cache and the "person" schema.
func DefaultConfig() Config { return Config{SessionCacheTTL: 10 * time.Second, SchemaID: "person"} }

// Validate checks the configuration.
func (c Config) Validate() error {
	if !strings.HasPrefix(c.PublicURL, "http") {
		return fmt.Errorf("identity: PublicURL %q must be an http(s) URL", c.PublicURL)
	}
	if c.SessionCacheTTL < 0 || c.SchemaID == "" {
		return errors.New("identity: SessionCacheTTL must not be negative and SchemaID is required")
	}
	return nil
}

// Session is a validated Kratos session.
type Session struct {
	IdentityID string
	Email      string
	Name       string
	// Groups are the identity provider's groups of an SSO login (from the
	// identity's metadata_public.groups, which the OIDC mapper fills);
	// empty for local people.
	Groups []string
	// Provider is the OIDC provider of an SSO login; empty for a password
	// login.
	Provider string
	Expires  time.Time
}

// Kratos talks to one Kratos deployment. It is safe for concurrent use.
type Kratos struct {
	cfg    Config
	public *ory.APIClient
	admin  *ory.APIClient

	mu    sync.Mutex // guards cache
	cache map[[32]byte]cachedSession
}

type cachedSession struct {
	s       *Session
	checked time.Time
}

// New returns a client for cfg.
func New(cfg Config) (*Kratos, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := func(url string) *ory.APIClient {
		c := ory.NewConfiguration()
		c.Servers = ory.ServerConfigurations{{URL: url}}
		c.HTTPClient = cfg.HTTPClient
		return ory.NewAPIClient(c)
	}
	k := &Kratos{cfg: cfg, public: client(cfg.PublicURL), cache: map[[32]byte]cachedSession{}}
	if cfg.AdminURL != "" {
		k.admin = client(cfg.AdminURL)
	}
	return k, nil
}

// Session validates a session token. Tokens are cached by their SHA-256,
// never in the clear.
func (k *Kratos) Session(ctx context.Context, token string) (*Session, error) {
	if token == "" {
		return nil, ErrNoSession
	}
	key := sha256.Sum256([]byte(token))
	now := k.cfg.Now()
	k.mu.Lock()
	c, ok := k.cache[key]
	k.mu.Unlock()
	if ok && now.Sub(c.checked) < k.cfg.SessionCacheTTL && now.Before(c.s.Expires) {
		return c.s, nil
	}
	sess, resp, err := k.public.FrontendAPI.ToSession(ctx).XSessionToken(token).Execute()
	closeBody(resp)
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			k.forget(key)
			return nil, ErrNoSession
		}
		return nil, fmt.Errorf("identity: toSession: %w", err)
	}
	if sess.Active == nil || !*sess.Active || sess.Identity == nil {
		k.forget(key)
		return nil, ErrNoSession
	}
	s := &Session{IdentityID: sess.Identity.Id, Expires: now.Add(time.Hour)}
	if sess.ExpiresAt != nil {
		s.Expires = *sess.ExpiresAt
	}
	if traits, ok := sess.Identity.Traits.(map[string]any); ok {
		s.Email, _ = traits["email"].(string)
		s.Name, _ = traits["name"].(string)
	}
	for _, m := range sess.AuthenticationMethods {
		if m.GetMethod() == "oidc" {
			s.Provider = m.GetProvider()
		}
	}
	if md := sess.Identity.MetadataPublic; md != nil {
		if gs, ok := md["groups"].([]any); ok {
			for _, g := range gs {
				if name, ok := g.(string); ok {
					s.Groups = append(s.Groups, name)
				}
			}
		}
	}
	k.mu.Lock()
	// Bound the cache: expired entries go when it grows.
	if len(k.cache) > 10000 {
		for kk, v := range k.cache {
			if now.Sub(v.checked) >= k.cfg.SessionCacheTTL {
				delete(k.cache, kk)
			}
		}
	}
	k.cache[key] = cachedSession{s: s, checked: now}
	k.mu.Unlock()
	return s, nil
}

func (k *Kratos) forget(key [32]byte) {
	k.mu.Lock()
	delete(k.cache, key)
	k.mu.Unlock()
}

// Login runs the native password login flow and returns a session token.
func (k *Kratos) Login(ctx context.Context, email, password string) (string, error) {
	flow, resp, err := k.public.FrontendAPI.CreateNativeLoginFlow(ctx).Execute()
	closeBody(resp)
	if err != nil {
		return "", fmt.Errorf("identity: login flow: %w", err)
	}
	ok, resp, err := k.public.FrontendAPI.UpdateLoginFlow(ctx).Flow(flow.Id).UpdateLoginFlowBody(
		ory.UpdateLoginFlowWithPasswordMethodAsUpdateLoginFlowBody(&ory.UpdateLoginFlowWithPasswordMethod{
			Method: "password", Identifier: email, Password: password,
		})).Execute()
	closeBody(resp)
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusBadRequest {
			return "", ErrBadCredentials
		}
		return "", fmt.Errorf("identity: login: %w", err)
	}
	if ok.SessionToken == nil || *ok.SessionToken == "" {
		return "", errors.New("identity: login returned no session token")
	}
	return *ok.SessionToken, nil
}

// Logout revokes a session token.
func (k *Kratos) Logout(ctx context.Context, token string) error {
	k.forget(sha256.Sum256([]byte(token)))
	resp, err := k.public.FrontendAPI.PerformNativeLogout(ctx).PerformNativeLogoutBody(ory.PerformNativeLogoutBody{SessionToken: token}).Execute()
	closeBody(resp)
	if err != nil && (resp == nil || resp.StatusCode != http.StatusBadRequest) {
		return fmt.Errorf("identity: logout: %w", err)
	}
	return nil
}

// CreatePerson creates a Kratos identity with a password (the admin sets a
// first password; the person changes it in the self-service settings).
func (k *Kratos) CreatePerson(ctx context.Context, email, name, password string) (string, error) {
	if k.admin == nil {
		return "", errors.New("identity: no admin URL configured")
	}
	body := ory.CreateIdentityBody{SchemaId: k.cfg.SchemaID, Traits: map[string]any{"email": email, "name": name}}
	if password != "" {
		body.Credentials = &ory.IdentityWithCredentials{Password: &ory.IdentityWithCredentialsPassword{
			Config: &ory.IdentityWithCredentialsPasswordConfig{Password: &password},
		}}
	}
	id, resp, err := k.admin.IdentityAPI.CreateIdentity(ctx).CreateIdentityBody(body).Execute()
	closeBody(resp)
	if err != nil {
		return "", fmt.Errorf("identity: create %s: %w", email, err)
	}
	return id.Id, nil
}

// RevokeSessions ends every Kratos session of an identity (a person
// revoked in Gatehouse is logged out everywhere).
func (k *Kratos) RevokeSessions(ctx context.Context, identityID string) error {
	if k.admin == nil {
		return errors.New("identity: no admin URL configured")
	}
	resp, err := k.admin.IdentityAPI.DeleteIdentitySessions(ctx, identityID).Execute()
	closeBody(resp)
	if err != nil && (resp == nil || resp.StatusCode != http.StatusNotFound) {
		return fmt.Errorf("identity: revoke sessions: %w", err)
	}
	k.mu.Lock()
	for kk, v := range k.cache {
		if v.s.IdentityID == identityID {
			delete(k.cache, kk)
		}
	}
	k.mu.Unlock()
	return nil
}

// ChangePassword sets a new password for the session's identity (Kratos's
// settings flow for API clients). Kratos asks for a recent login
// (privileged_session_max_age, 15 minutes by default): log in first.
func (k *Kratos) ChangePassword(ctx context.Context, token, password string) error {
	flow, resp, err := k.public.FrontendAPI.CreateNativeSettingsFlow(ctx).XSessionToken(token).Execute()
	closeBody(resp)
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return ErrNoSession
		}
		return fmt.Errorf("identity: settings flow: %w", err)
	}
	_, resp, err = k.public.FrontendAPI.UpdateSettingsFlow(ctx).Flow(flow.Id).XSessionToken(token).UpdateSettingsFlowBody(
		ory.UpdateSettingsFlowWithPasswordMethodAsUpdateSettingsFlowBody(&ory.UpdateSettingsFlowWithPasswordMethod{Method: "password", Password: password})).Execute()
	closeBody(resp)
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusForbidden {
			return errors.New("identity: log in again first (a password change needs a recent login)")
		}
		return fmt.Errorf("identity: new password refused (too short or too common?): %w", err)
	}
	return nil
}

// closeBody closes a Kratos client response's body, if there is one.
func closeBody(resp *http.Response) {
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
}

// kratosDetail adds Kratos's error body (its reason) to a client error.
func kratosDetail(err error) error {
	var apiErr *ory.GenericOpenAPIError
	if err != nil && errors.As(err, &apiErr) && len(apiErr.Body()) > 0 {
		body := strings.TrimSpace(string(apiErr.Body()))
		if len(body) > 500 {
			body = body[:500]
		}
		return fmt.Errorf("%w: %s", err, body)
	}
	return err
}
