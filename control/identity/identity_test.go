package identity_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/internal/testenv/idp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}

// TestSessionsAgainstKratos runs against a real Kratos: create a person,
// log in, validate the session (then from the cache), log out, and end all
// sessions of an identity.
func TestSessionsAgainstKratos(t *testing.T) {
	kr := testenv.KratosT(t)
	ctx := context.Background()
	now := time.Now()
	cfg := identity.DefaultConfig()
	cfg.PublicURL, cfg.AdminURL = kr.PublicURL, kr.AdminURL
	cfg.Now = func() time.Time { return now }
	k, err := identity.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	password := "pw-" + rand.Text()
	id, err := k.CreatePerson(ctx, "ada@example.com", "Ada", password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Login(ctx, "ada@example.com", "wrong"); !errors.Is(err, identity.ErrBadCredentials) {
		t.Fatalf("wrong password: %v", err)
	}
	token, err := k.Login(ctx, "ada@example.com", password)
	if err != nil {
		t.Fatal(err)
	}
	s, err := k.Session(ctx, token)
	if err != nil || s.IdentityID != id || s.Email != "ada@example.com" || s.Name != "Ada" || !s.Expires.After(now) {
		t.Fatalf("session: %+v %v", s, err)
	}
	if _, err := k.Session(ctx, "not-a-token"); !errors.Is(err, identity.ErrNoSession) {
		t.Fatalf("bad token: %v", err)
	}
	// Logout ends it at once (the cache forgets it too).
	if err := k.Logout(ctx, token); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Session(ctx, token); !errors.Is(err, identity.ErrNoSession) {
		t.Fatalf("after logout: %v", err)
	}
	// Revoking an identity's sessions ends every one of them, cached or not.
	t1, _ := k.Login(ctx, "ada@example.com", password)
	t2, _ := k.Login(ctx, "ada@example.com", password)
	if _, err := k.Session(ctx, t1); err != nil {
		t.Fatal(err)
	}
	if err := k.RevokeSessions(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{t1, t2} {
		if _, err := k.Session(ctx, tok); !errors.Is(err, identity.ErrNoSession) {
			t.Fatalf("after revoking sessions: %v", err)
		}
	}
	if err := (identity.Config{}).Validate(); err == nil {
		t.Fatal("empty config accepted")
	}
}

func TestChangePassword(t *testing.T) {
	kr := testenv.KratosT(t)
	ctx := context.Background()
	k := kratosClient(t, kr)
	first, next := "first-"+rand.Text(), "next-"+rand.Text()
	if _, err := k.CreatePerson(ctx, "cy@example.com", "Cy", first); err != nil {
		t.Fatal(err)
	}
	token, err := k.Login(ctx, "cy@example.com", first)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.ChangePassword(ctx, token, "short"); err == nil {
		t.Fatal("a too-short password was accepted")
	}
	if err := k.ChangePassword(ctx, token, next); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Login(ctx, "cy@example.com", first); !errors.Is(err, identity.ErrBadCredentials) {
		t.Fatalf("old password: %v", err)
	}
	if _, err := k.Login(ctx, "cy@example.com", next); err != nil {
		t.Fatalf("new password: %v", err)
	}
	if err := k.ChangePassword(ctx, "not-a-session", next); !errors.Is(err, identity.ErrNoSession) {
		t.Fatalf("without a session: %v", err)
	}
}

// TestInvitation: an admin-issued invitation lets a person with no
// password set their first one, once; a wrong code gets nowhere.
func TestInvitation(t *testing.T) {
	kr := testenv.KratosT(t)
	ctx := context.Background()
	k := kratosClient(t, kr)
	id, err := k.CreatePerson(ctx, "dee@example.com", "Dee", "")
	if err != nil {
		t.Fatal(err)
	}
	inv, err := k.Invite(ctx, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if until := time.Until(inv.Expires); until < 50*time.Minute || until > 61*time.Minute {
		t.Fatalf("invitation expires in %s, want an hour", until)
	}
	flow, _, _ := strings.Cut(inv.Code, ".")
	for _, bad := range []string{"no-dot", flow + ".000000", "."} {
		if _, err := k.AcceptInvitation(ctx, bad, "irrelevant-"+rand.Text()); !errors.Is(err, identity.ErrBadInvitation) {
			t.Fatalf("invitation %q: %v", bad, err)
		}
	}
	password := "dee-" + rand.Text()
	if _, err := k.AcceptInvitation(ctx, inv.Code, "short"); err == nil {
		t.Fatal("a too-short first password was accepted")
	}
	// The failed attempt above spent the code: a new invitation.
	if inv, err = k.Invite(ctx, id, time.Hour); err != nil {
		t.Fatal(err)
	}
	token, err := k.AcceptInvitation(ctx, inv.Code, password)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := k.Session(ctx, token); err != nil || s.IdentityID != id {
		t.Fatalf("session after the invitation: %+v %v", s, err)
	}
	if _, err := k.Login(ctx, "dee@example.com", password); err != nil {
		t.Fatalf("login with the password the invitation set: %v", err)
	}
	if _, err := k.AcceptInvitation(ctx, inv.Code, "again-"+rand.Text()); !errors.Is(err, identity.ErrBadInvitation) {
		t.Fatalf("an invitation used twice: %v", err)
	}
}

// TestSSOAgainstKratos drives Kratos's native OIDC flow against a real OP
// and reads the person's groups as the login does: from the refresh token
// Kratos kept, which the provider rotates.
func TestSSOAgainstKratos(t *testing.T) {
	ctx := context.Background()
	op, err := idp.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	op.AddPerson("kim", "kim-pw", "kim@example.com", "Kim", "ops", "dev")
	corp := identity.SSOProvider{ID: "corp", IssuerURL: op.Issuer, ClientID: "gatehouse", ClientSecret: rand.Text()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	returnTo := "http://" + ln.Addr().String() + "/callback"
	kcfg := testenv.DefaultKratosConfig()
	kcfg.OIDC, kcfg.ReturnURLs = []map[string]any{corp.KratosConfig()}, []string{returnTo}
	kr, err := testenv.StartKratos(ctx, kcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	op.AddClient(corp.ClientID, corp.ClientSecret, kr.CallbackURL("corp"))
	k := kratosClient(t, kr)

	if _, err := k.StartSSO(ctx, "nope", returnTo); err == nil {
		t.Fatal("an unknown provider started a flow")
	}
	if _, err := k.StartSSO(ctx, "corp", "http://127.0.0.1:1/elsewhere"); err == nil {
		t.Fatal("a return URL Kratos does not allow started a flow")
	}
	flow, err := k.StartSSO(ctx, "corp", returnTo)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(flow.BrowserURL, op.Issuer) {
		t.Fatalf("browser sent to %s, not the provider", flow.BrowserURL)
	}
	codes := make(chan string, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		codes <- r.URL.Query().Get("code")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	if _, _, err := op.SignIn(ctx, flow.BrowserURL, "kim", "kim-pw"); err != nil {
		t.Fatal(err)
	}
	code := <-codes
	if _, err := k.FinishSSO(ctx, flow, "wrong-"+code); err == nil {
		t.Fatal("a wrong code made a session")
	}
	token, err := k.FinishSSO(ctx, flow, code)
	if err != nil {
		t.Fatal(err)
	}
	s, err := k.Session(ctx, token)
	if err != nil || s.Email != "kim@example.com" || s.Provider != "corp" || !slices.Equal(s.Groups, []string{"ops", "dev"}) {
		t.Fatalf("session: %+v %v", s, err)
	}

	subject, refresh, err := k.OIDCCredential(ctx, s.IdentityID, "corp")
	if err != nil || subject != idp.Subject("kim") || refresh == "" {
		t.Fatalf("OIDC credential: %q %v", subject, err)
	}
	if _, _, err := k.OIDCCredential(ctx, s.IdentityID, "other"); !errors.Is(err, identity.ErrNoOIDCLink) {
		t.Fatalf("credential at another provider: %v", err)
	}
	providers, err := identity.NewSSOProviders([]identity.SSOProvider{corp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	op.SetGroups("kim", "ops")
	groups, next, err := providers.Groups(ctx, "corp", subject, refresh)
	if err != nil || !slices.Equal(groups, []string{"ops"}) || next == refresh {
		t.Fatalf("groups: %v %v (rotated: %v)", groups, err, next != refresh)
	}
	// The provider rotated the token: the old one is spent, the new works.
	if _, _, err := providers.Groups(ctx, "corp", subject, refresh); err == nil {
		t.Fatal("a spent refresh token worked")
	}
	if _, _, err := providers.Groups(ctx, "corp", "sub-someone-else", next); err == nil {
		t.Fatal("groups read for another subject")
	}
}

// kratosClient returns a client of kr with the default configuration.
func kratosClient(t *testing.T, kr *testenv.Kratos) *identity.Kratos {
	t.Helper()
	cfg := identity.DefaultConfig()
	cfg.PublicURL, cfg.AdminURL = kr.PublicURL, kr.AdminURL
	k, err := identity.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestPresetsKratosAccepts: Kratos starts with every preset's provider
// entry (its configuration schema accepts them), and GitHub's, which needs
// no discovery, sends the browser to GitHub with the client.
func TestPresetsKratosAccepts(t *testing.T) {
	ctx := context.Background()
	returnTo := "http://127.0.0.1:53682/callback"
	kcfg := testenv.DefaultKratosConfig()
	kcfg.ReturnURLs = []string{returnTo}
	for _, p := range []identity.SSOProvider{
		{ID: "corp", IssuerURL: "https://idp.example.com"},
		{ID: "okta", Preset: identity.PresetOkta, IssuerURL: "https://acme.okta.com/oauth2/default"},
		{ID: "gitlab", Preset: identity.PresetGitLab},
		{ID: "google", Preset: identity.PresetGoogle},
		{ID: "github", Preset: identity.PresetGitHub},
	} {
		p.ClientID, p.ClientSecret = "client-"+p.ID, "secret"
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		kcfg.OIDC = append(kcfg.OIDC, p.KratosConfig())
	}
	kr, err := testenv.StartKratos(ctx, kcfg)
	if err != nil {
		t.Fatalf("Kratos refused the presets: %v", err)
	}
	defer kr.Close()
	flow, err := kratosClient(t, kr).StartSSO(ctx, "github", returnTo)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(flow.BrowserURL)
	if err != nil || u.Host != "github.com" || u.Query().Get("client_id") != "client-github" {
		t.Fatalf("GitHub sign-in at %s", flow.BrowserURL)
	}
}
