package identity_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
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
	cfg := identity.DefaultConfig()
	cfg.PublicURL, cfg.AdminURL = kr.PublicURL, kr.AdminURL
	k, err := identity.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
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
	cfg := identity.DefaultConfig()
	cfg.PublicURL, cfg.AdminURL = kr.PublicURL, kr.AdminURL
	k, err := identity.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
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
