package identity

import (
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	ory "github.com/ory/client-go"
	"golang.org/x/oauth2"
)

// SSO errors.
var (
	// ErrNoOIDCLink: the identity has no OIDC credential at that provider.
	ErrNoOIDCLink = errors.New("identity: the identity is not linked to that provider")
	// ErrNoRefreshToken: Kratos kept no refresh token for the identity (the
	// provider was not asked for offline_access, or issues none).
	ErrNoRefreshToken = errors.New("identity: no refresh token for the identity at that provider")
	// ErrUnknownProvider: the provider is not configured here.
	ErrUnknownProvider = errors.New("identity: unknown SSO provider")
)

// DefaultSSOCallbackAddr is where `gatehouse login --sso` waits for the
// browser. Kratos matches return URLs with their port, so the port is
// fixed (an unassigned one) and Kratos's selfservice.allowed_return_urls
// must list http://127.0.0.1:53682/callback.
const DefaultSSOCallbackAddr = "127.0.0.1:53682"

// SSOFlow is a native (API) SSO login that waits for the person's browser.
type SSOFlow struct {
	// BrowserURL is where the person signs in: the provider's login page,
	// which ends with a redirect to the flow's return URL carrying a code.
	BrowserURL string
	// initCode is the first half of the session token exchange; the code
	// the browser brings back is the second. It never leaves this process.
	initCode string
}

// StartSSO starts a native login through an OIDC provider of Kratos. When
// the person has signed in, Kratos sends their browser to returnTo with a
// `code` query parameter; FinishSSO trades it for a session token. Kratos
// must allow returnTo (selfservice.allowed_return_urls).
func (k *Kratos) StartSSO(ctx context.Context, provider, returnTo string) (*SSOFlow, error) {
	flow, resp, err := k.public.FrontendAPI.CreateNativeLoginFlow(ctx).ReturnSessionTokenExchangeCode(true).ReturnTo(returnTo).Execute()
	closeBody(resp)
	if err != nil {
		return nil, fmt.Errorf("identity: SSO login flow: %w", kratosDetail(err))
	}
	if flow.GetSessionTokenExchangeCode() == "" {
		return nil, errors.New("identity: Kratos returned no session token exchange code (Kratos v1.1 or later is needed)")
	}
	_, resp, err = k.public.FrontendAPI.UpdateLoginFlow(ctx).Flow(flow.Id).UpdateLoginFlowBody(
		ory.UpdateLoginFlowWithOidcMethodAsUpdateLoginFlowBody(ory.NewUpdateLoginFlowWithOidcMethod("oidc", provider))).Execute()
	closeBody(resp)
	// The API flow answers 422 with the browser's next stop.
	var apiErr *ory.GenericOpenAPIError
	switch {
	case err == nil:
		return nil, fmt.Errorf("identity: SSO through %q: Kratos completed the flow without a browser", provider)
	case !errors.As(err, &apiErr) || resp == nil || resp.StatusCode != http.StatusUnprocessableEntity:
		return nil, fmt.Errorf("identity: SSO through %q: %w", provider, kratosDetail(err))
	}
	var body struct {
		RedirectBrowserTo string `json:"redirect_browser_to"`
	}
	if err := json.Unmarshal(apiErr.Body(), &body); err != nil || body.RedirectBrowserTo == "" {
		return nil, fmt.Errorf("identity: SSO through %q: Kratos named no page for the browser", provider)
	}
	return &SSOFlow{BrowserURL: body.RedirectBrowserTo, initCode: flow.GetSessionTokenExchangeCode()}, nil
}

// FinishSSO trades the code the browser brought back for a session token.
func (k *Kratos) FinishSSO(ctx context.Context, f *SSOFlow, returnToCode string) (string, error) {
	if returnToCode == "" {
		return "", errors.New("identity: the browser brought back no code")
	}
	ok, resp, err := k.public.FrontendAPI.ExchangeSessionToken(ctx).InitCode(f.initCode).ReturnToCode(returnToCode).Execute()
	closeBody(resp)
	if err != nil {
		return "", fmt.Errorf("identity: session token exchange: %w", kratosDetail(err))
	}
	if ok.SessionToken == nil || *ok.SessionToken == "" {
		return "", errors.New("identity: the exchange returned no session token")
	}
	return *ok.SessionToken, nil
}

// FlowMessages returns what Kratos says about a flow that sent the browser
// back without a code (a refused registration, an account that exists):
// the UI messages of the login or registration flow of that id.
func (k *Kratos) FlowMessages(ctx context.Context, flowID string) string {
	var ui *ory.UiContainer
	lf, resp, err := k.public.FrontendAPI.GetLoginFlow(ctx).Id(flowID).Execute()
	closeBody(resp)
	if err == nil {
		ui = &lf.Ui
	} else {
		rf, resp, err := k.public.FrontendAPI.GetRegistrationFlow(ctx).Id(flowID).Execute()
		closeBody(resp)
		if err == nil {
			ui = &rf.Ui
		}
	}
	if ui == nil {
		return "Kratos ended the flow without a session"
	}
	var msgs []string
	for _, m := range ui.Messages {
		msgs = append(msgs, m.Text)
	}
	for _, n := range ui.Nodes {
		for _, m := range n.Messages {
			msgs = append(msgs, m.Text)
		}
	}
	if len(msgs) == 0 {
		return "Kratos ended the flow without a session"
	}
	return strings.Join(msgs, "; ")
}

// OIDCCredential returns the subject of an identity at an OIDC provider and
// the refresh token Kratos kept when the identity was registered or linked
// there (Kratos v1.3 stores the provider's tokens only then, encrypted).
func (k *Kratos) OIDCCredential(ctx context.Context, identityID, provider string) (subject, refreshToken string, err error) {
	if k.admin == nil {
		return "", "", errors.New("identity: no admin URL configured")
	}
	id, resp, err := k.admin.IdentityAPI.GetIdentity(ctx, identityID).IncludeCredential([]string{"oidc"}).Execute()
	closeBody(resp)
	if err != nil {
		return "", "", fmt.Errorf("identity: get identity: %w", err)
	}
	cred, ok := id.GetCredentials()["oidc"]
	if !ok {
		return "", "", ErrNoOIDCLink
	}
	raw, err := json.Marshal(cred.Config)
	if err != nil {
		return "", "", err
	}
	var conf struct {
		Providers []struct {
			Subject             string `json:"subject"`
			Provider            string `json:"provider"`
			InitialRefreshToken string `json:"initial_refresh_token"`
		} `json:"providers"`
	}
	if err := json.Unmarshal(raw, &conf); err != nil {
		return "", "", fmt.Errorf("identity: OIDC credential: %w", err)
	}
	for _, p := range conf.Providers {
		if p.Provider == provider {
			if p.InitialRefreshToken == "" {
				return p.Subject, "", ErrNoRefreshToken
			}
			return p.Subject, p.InitialRefreshToken, nil
		}
	}
	return "", "", ErrNoOIDCLink
}

// Presets of SSOProvider.Preset: the providers whose Kratos
// configuration and group claims Gatehouse knows.
const (
	// PresetGeneric is any OpenID Connect provider with discovery (Azure
	// AD / Entra ID, Keycloak, Dex, Auth0, ...); groups from the userinfo
	// claim GroupsClaim.
	PresetGeneric = "generic"
	// PresetOkta is Okta's OpenID Connect (an authorization server such as
	// https://ORG.okta.com/oauth2/default with a "groups" claim for the
	// "groups" scope).
	PresetOkta = "okta"
	// PresetGitLab is gitlab.com or a self-managed GitLab (IssuerURL); its
	// userinfo lists the person's groups in "groups".
	PresetGitLab = "gitlab"
	// PresetGoogle is Google; it has no groups claim, so people's access
	// comes from direct grants and Gatehouse's own groups.
	PresetGoogle = "google"
	// PresetGitHub is GitHub's OAuth (not OpenID Connect); it has no
	// groups claim either.
	PresetGitHub = "github"
)

// SSOProvider is an OpenID Connect provider that Kratos signs people in
// with, as Gatehouse sees it. KratosConfig renders Kratos's side; with
// the same client, Gatehouse refreshes the person's tokens at each login
// and reads their groups from userinfo. Kratos v1.3 runs its claims mapper
// only at registration, so this is how a change of groups at the provider
// reaches Gatehouse at the next login.
type SSOProvider struct {
	// ID is Kratos's id of the provider (in its callback URL).
	ID string `json:"id"`
	// Preset is one of the Preset constants; empty means generic.
	Preset string `json:"preset,omitempty"`
	// IssuerURL is the provider's issuer (discovery at
	// IssuerURL/.well-known/openid-configuration); the gitlab and google
	// presets default to gitlab.com and accounts.google.com.
	IssuerURL string `json:"issuer,omitempty"`
	// ClientID and ClientSecret are the client Kratos uses.
	ClientID     string `json:"clientID"`
	ClientSecret string `json:"clientSecret"`
	// GroupsClaim names the userinfo claim with the groups; empty means
	// "groups".
	GroupsClaim string `json:"groupsClaim,omitempty"`
	// ProvisionOrg, when set, lets people who sign in through this provider
	// without a Gatehouse account join that organization (by name) at
	// their first login, with no access but what their mapped IdP groups
	// give. Empty: an admin adds people first.
	ProvisionOrg string `json:"provisionOrg,omitempty"`
}

// withDefaults fills in what the preset implies.
func (p SSOProvider) withDefaults() SSOProvider {
	if p.Preset == "" {
		p.Preset = PresetGeneric
	}
	if p.IssuerURL == "" {
		switch p.Preset {
		case PresetGitLab:
			p.IssuerURL = "https://gitlab.com"
		case PresetGoogle:
			p.IssuerURL = "https://accounts.google.com"
		case PresetGitHub:
			p.IssuerURL = "https://github.com"
		}
	}
	if p.GroupsClaim == "" {
		p.GroupsClaim = "groups"
	}
	return p
}

// Validate checks one provider.
func (p SSOProvider) Validate() error {
	p = p.withDefaults()
	u, err := url.Parse(p.IssuerURL)
	switch {
	case p.ID == "" || p.ClientID == "" || p.ClientSecret == "":
		return fmt.Errorf("identity: SSO provider %q: id, clientID and clientSecret are required", p.ID)
	case !slices.Contains([]string{PresetGeneric, PresetOkta, PresetGitLab, PresetGoogle, PresetGitHub}, p.Preset):
		return fmt.Errorf("identity: SSO provider %q: unknown preset %q (generic, okta, gitlab, google, github)", p.ID, p.Preset)
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return fmt.Errorf("identity: SSO provider %q: issuer %q must be an http(s) URL", p.ID, p.IssuerURL)
	}
	return nil
}

// SyncsGroups reports whether the provider has a groups claim that
// Gatehouse reads at every login.
func (p SSOProvider) SyncsGroups() bool {
	switch p.withDefaults().Preset {
	case PresetGoogle, PresetGitHub:
		return false
	}
	return true
}

//go:embed oidc.mapper.jsonnet
var oidcMapper []byte

// KratosConfig returns the provider's entry for Kratos's
// selfservice.methods.oidc.config.providers. Group-syncing providers ask
// for offline_access, so that Kratos keeps a refresh token for Gatehouse.
// The claims mapper (oidc.mapper.jsonnet) accepts only a verified email.
func (p SSOProvider) KratosConfig() map[string]any {
	p = p.withDefaults()
	c := map[string]any{
		"id": p.ID, "client_id": p.ClientID, "client_secret": p.ClientSecret,
		"mapper_url": "base64://" + base64.StdEncoding.EncodeToString(oidcMapper),
	}
	switch p.Preset {
	case PresetGeneric, PresetOkta:
		c["provider"], c["issuer_url"] = "generic", p.IssuerURL
		c["scope"] = []string{"openid", "email", "profile", "groups", "offline_access"}
		c["claims_source"] = "userinfo"
	case PresetGitLab:
		// GitLab issues refresh tokens without offline_access.
		c["provider"], c["issuer_url"] = "gitlab", p.IssuerURL
		c["scope"] = []string{"openid", "email", "profile"}
	case PresetGoogle:
		c["provider"] = "google"
		c["scope"] = []string{"openid", "email", "profile"}
	case PresetGitHub:
		c["provider"] = "github"
		c["scope"] = []string{"user:email"}
	}
	return c
}

// SSOProviders are the SSO providers Gatehouse knows: it reads people's
// current groups from them and says whom they provision.
// It is safe for concurrent use.
type SSOProviders struct {
	client    *http.Client
	providers map[string]SSOProvider

	mu         sync.Mutex // guards discovered
	discovered map[string]*oidc.Provider
}

// NewSSOProviders returns a reader for providers; client nil means one with
// a 30 s timeout. Providers are discovered at first use, so a provider that
// is down does not stop a node from starting.
func NewSSOProviders(providers []SSOProvider, client *http.Client) (*SSOProviders, error) {
	g := &SSOProviders{client: client, providers: map[string]SSOProvider{}, discovered: map[string]*oidc.Provider{}}
	if g.client == nil {
		g.client = &http.Client{Timeout: 30 * time.Second}
	}
	for _, p := range providers {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		if _, dup := g.providers[p.ID]; dup {
			return nil, fmt.Errorf("identity: SSO provider %q configured twice", p.ID)
		}
		g.providers[p.ID] = p.withDefaults()
	}
	return g, nil
}

// SyncsGroups reports whether provider is one whose groups are read at
// every login.
func (g *SSOProviders) SyncsGroups(provider string) bool {
	p, ok := g.providers[provider]
	return ok && p.SyncsGroups()
}

// ProvisionOrg returns the organization that people new to Gatehouse join
// when they sign in through provider; empty when none.
func (g *SSOProviders) ProvisionOrg(provider string) string {
	return g.providers[provider].ProvisionOrg
}

// Groups uses refreshToken at the provider for a new access token, asks
// userinfo for the person's claims, checks that they are subject's and
// returns their groups and the refresh token to keep (the provider may
// have rotated it; the old one is then spent).
func (g *SSOProviders) Groups(ctx context.Context, provider, subject, refreshToken string) (groups []string, next string, err error) {
	p, ok := g.providers[provider]
	if !ok || !p.SyncsGroups() {
		return nil, "", ErrUnknownProvider
	}
	ctx = oidc.ClientContext(ctx, g.client)
	op, err := g.discover(ctx, p)
	if err != nil {
		return nil, "", err
	}
	conf := oauth2.Config{ClientID: p.ClientID, ClientSecret: p.ClientSecret, Endpoint: op.Endpoint()}
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		return nil, "", fmt.Errorf("identity: refresh at %s: %w", provider, err)
	}
	info, err := op.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return nil, "", fmt.Errorf("identity: userinfo at %s: %w", provider, err)
	}
	if info.Subject != subject {
		return nil, "", fmt.Errorf("identity: userinfo at %s names another subject", provider)
	}
	var claims map[string]any
	if err := info.Claims(&claims); err != nil {
		return nil, "", err
	}
	groups, err = stringList(claims[p.GroupsClaim])
	if err != nil {
		return nil, "", fmt.Errorf("identity: claim %q at %s: %w", p.GroupsClaim, provider, err)
	}
	next = tok.RefreshToken
	if next == "" {
		next = refreshToken
	}
	return groups, next, nil
}

// discover returns the provider's discovered endpoints, fetching them at
// first use. The lock is not held over the network, so a slow provider
// does not hold up logins through the others; two first uses may both
// fetch, and either result is kept.
func (g *SSOProviders) discover(ctx context.Context, p SSOProvider) (*oidc.Provider, error) {
	g.mu.Lock()
	op, ok := g.discovered[p.ID]
	g.mu.Unlock()
	if ok {
		return op, nil
	}
	op, err := oidc.NewProvider(ctx, p.IssuerURL)
	if err != nil {
		return nil, fmt.Errorf("identity: discover %s: %w", p.ID, err)
	}
	g.mu.Lock()
	g.discovered[p.ID] = op
	g.mu.Unlock()
	return op, nil
}

// stringList reads a claim that lists names; a missing claim is no groups.
func stringList(v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("not a list but %T", v)
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("an element is %T, not a string", e)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
