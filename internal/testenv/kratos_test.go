package testenv_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	ory "github.com/ory/client-go"

	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func oryClient(url string) *ory.APIClient {
	cfg := ory.NewConfiguration()
	cfg.Servers = ory.ServerConfigurations{{URL: url}}
	cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	return ory.NewAPIClient(cfg)
}

func TestKratosPasswordLogin(t *testing.T) {
	kr := testenv.KratosT(t)
	ctx := context.Background()
	admin, public := oryClient(kr.AdminURL), oryClient(kr.PublicURL)
	email, password := "ada@example.com", "correct horse "+rand.Text()

	created, _, err := admin.IdentityAPI.CreateIdentity(ctx).CreateIdentityBody(ory.CreateIdentityBody{
		SchemaId: "person",
		Traits:   map[string]any{"email": email, "name": "Ada"},
		Credentials: &ory.IdentityWithCredentials{Password: &ory.IdentityWithCredentialsPassword{
			Config: &ory.IdentityWithCredentialsPasswordConfig{Password: &password},
		}},
	}).Execute()
	if err != nil {
		t.Fatalf("create identity: %v", err)
	}

	login := func(pw string) (*ory.SuccessfulNativeLogin, *http.Response, error) {
		flow, _, err := public.FrontendAPI.CreateNativeLoginFlow(ctx).Execute()
		if err != nil {
			t.Fatalf("create login flow: %v", err)
		}
		return public.FrontendAPI.UpdateLoginFlow(ctx).Flow(flow.Id).UpdateLoginFlowBody(
			ory.UpdateLoginFlowWithPasswordMethodAsUpdateLoginFlowBody(&ory.UpdateLoginFlowWithPasswordMethod{
				Method: "password", Identifier: email, Password: pw,
			})).Execute()
	}

	if _, resp, err := login("wrong password"); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("wrong password: want 400, got %v (%v)", resp, err)
	}
	ok, _, err := login(password)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	if ok.SessionToken == nil || *ok.SessionToken == "" {
		t.Fatal("login returned no session token")
	}
	if ok.Session.Identity == nil || ok.Session.Identity.Id != created.Id {
		t.Fatalf("session identity %+v, want %s", ok.Session.Identity, created.Id)
	}
	// The token is a live session.
	sess, _, err := public.FrontendAPI.ToSession(ctx).XSessionToken(*ok.SessionToken).Execute()
	if err != nil {
		t.Fatalf("toSession: %v", err)
	}
	if sess.Active == nil || !*sess.Active {
		t.Fatal("session not active")
	}
}

// TestKratosSSORegistrationOnly: with an OIDC provider configured,
// registration opens for SSO, but a password self-registration is refused
// before an identity is stored (Gatehouse links people by email, so an
// account made up by anyone must not exist).
func TestKratosSSORegistrationOnly(t *testing.T) {
	ctx := context.Background()
	cfg := testenv.DefaultKratosConfig()
	// Kratos discovers the provider only when a flow uses it.
	cfg.OIDC = []map[string]any{identity.SSOProvider{ID: "corp", IssuerURL: "http://127.0.0.1:1", ClientID: "c", ClientSecret: "s"}.KratosConfig()}
	kr, err := testenv.StartKratos(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	public, admin := oryClient(kr.PublicURL), oryClient(kr.AdminURL)
	flow, _, err := public.FrontendAPI.CreateNativeRegistrationFlow(ctx).Execute()
	if err != nil {
		t.Fatalf("registration flow (registration should be on for SSO): %v", err)
	}
	_, resp, err := public.FrontendAPI.UpdateRegistrationFlow(ctx).Flow(flow.Id).UpdateRegistrationFlowBody(
		ory.UpdateRegistrationFlowWithPasswordMethodAsUpdateRegistrationFlowBody(&ory.UpdateRegistrationFlowWithPasswordMethod{
			Method: "password", Password: "correct horse " + rand.Text(), Traits: map[string]any{"email": "mallory@example.com"},
		})).Execute()
	var apiErr *ory.GenericOpenAPIError
	if err == nil || !errors.As(err, &apiErr) || !strings.Contains(string(apiErr.Body()), "password self-registration is disabled") {
		t.Fatalf("password self-registration: %v, want it refused by the hook", err)
	}
	t.Logf("refused with %d", resp.StatusCode)
	ids, _, err := admin.IdentityAPI.ListIdentities(ctx).Execute()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 0 {
		t.Fatalf("%d identities stored after a refused registration", len(ids))
	}
}
