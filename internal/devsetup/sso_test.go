package devsetup_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/internal/devsetup"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/internal/testenv/idp"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
)

// TestSSOLoginSyncsGroupsAtEveryLogin signs a person in through a real
// OpenID provider with the real CLI (`gatehouse login --sso`), Kratos's
// native OIDC flow and the browser played by an HTTP client; their access
// comes from an IdP group mapped to a Gatehouse group, and a change of
// their groups at the provider shows at their next login (Paralus synced
// groups at the first login only).
func TestSSOLoginSyncsGroupsAtEveryLogin(t *testing.T) {
	dir := t.TempDir()
	bin := buildCLI(t, dir)
	ctx := context.Background()
	provider, err := idp.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer provider.Close()
	provider.AddPerson("sam", "sam-idp-pw", "sam@example.com", "Sam Ops", "platform")
	provider.AddPerson("pat", "pat-idp-pw", "pat@example.com", "Pat New", "platform")
	// An IdP account that claims the dev admin's address.
	provider.AddPerson("mallory", "mallory-idp-pw", devsetup.DefaultConfig().Admin, "Mallory", "platform")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	callback := ln.Addr().String()
	ln.Close()

	secret := rand.Text()
	cfg := devsetup.DefaultConfig()
	cfg.StateDir, cfg.Addr, cfg.Out, cfg.KratosPort = filepath.Join(dir, "state"), "127.0.0.1:0", io.Discard, 0
	cfg.SSO = []identity.SSOProvider{
		{ID: "corp", IssuerURL: provider.Issuer, ClientID: "gatehouse", ClientSecret: secret},
		// The same provider through another client, which adds people who
		// sign in without an account to the organization.
		{ID: "corp-jit", Preset: identity.PresetOkta, IssuerURL: provider.Issuer, ClientID: "gatehouse-jit", ClientSecret: secret, ProvisionOrg: "default"},
	}
	cfg.SSOCallbackAddr = callback
	env, err := devsetup.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	provider.AddClient("gatehouse", secret, env.IdentityURL+"/self-service/methods/oidc/callback/corp")
	provider.AddClient("gatehouse-jit", secret, env.IdentityURL+"/self-service/methods/oidc/callback/corp-jit")
	kubectl, err := testenv.Tool("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	runAs := func(who, stdin, name string, args ...string) (string, error) {
		return runPerson(dir, who, stdin, name, args...)
	}
	loginFlags := []string{"login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile}

	// ssoLoginAs runs `gatehouse login --sso PROVIDER` as who and signs
	// in at the provider with the URL it prints.
	ssoLoginAs := func(providerID, who, password string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, append(loginFlags, "--sso", providerID, "--callback-addr", callback, "--no-browser")...)
		cmd.Env = personEnv(dir, who)
		var stdout, stderr bytes.Buffer
		cmd.Stdout = &stdout
		pipe, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(pipe)
		var authURL string
		for sc.Scan() {
			stderr.WriteString(sc.Text() + "\n")
			if u, ok := strings.CutPrefix(sc.Text(), "  http"); ok {
				authURL = "http" + u
				break
			}
		}
		if authURL == "" {
			cmd.Wait()
			t.Fatalf("no sign-in URL printed:\n%s", stderr.String())
		}
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		resp, body, err := provider.SignIn(sctx, authURL, who, password)
		if err != nil || !strings.Contains(string(body), "Gatehouse") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("browser: %v at %v\n%s\nCLI:\n%s", err, landed(resp), body, stderr.String())
		}
		rest, _ := io.ReadAll(pipe)
		stderr.Write(rest)
		err = cmd.Wait()
		return stdout.String() + stderr.String(), err
	}
	ssoLogin := func() (string, error) { t.Helper(); return ssoLoginAs("corp", "sam", "sam-idp-pw") }

	// Nobody has provisioned sam yet: Kratos registers the identity at
	// this first SSO login, but Gatehouse lets no one in by it alone.
	if out, err := ssoLogin(); err == nil || !strings.Contains(out, "no Gatehouse account") {
		t.Fatalf("SSO login of an unprovisioned person: %v\n%s", err, out)
	}

	// The admin provisions sam and maps the IdP group "platform" to a
	// group with NAMESPACE_READ_ONLY in demo.
	if out, err := runAs("admin", env.AdminPassword+"\n", bin, append(loginFlags, "--email", cfg.Admin, "--password-stdin")...); err != nil {
		t.Fatalf("admin login: %v %s", err, out)
	}
	access := filepath.Join(dir, "access.yaml")
	os.WriteFile(access, []byte(`kind: User
email: sam@example.com
---
kind: Group
name: platform-team
idpGroups: [platform]
---
kind: RoleBinding
subject: {kind: group, name: platform-team}
role: NAMESPACE_READ_ONLY
project: default
namespace: demo
`), 0o600)
	if out, err := runAs("admin", "", bin, "apply", "-f", access); err != nil {
		t.Fatalf("apply: %v %s", err, out)
	}

	if out, err := ssoLogin(); err != nil || !strings.Contains(out, "logged in as sam@example.com") {
		t.Fatalf("sam's SSO login: %v\n%s", err, out)
	}
	kc := filepath.Join(dir, "sam.kubeconfig")
	if out, err := runAs("sam", "", bin, "kubeconfig", "--cluster", "dev", "--file", kc); err != nil {
		t.Fatalf("kubeconfig: %v %s", err, out)
	}
	// eventually waits for kubectl's answer to change (the gateway caches
	// access decisions for a second).
	eventuallyAs := func(who, kc, what string, allowed bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := runAs(who, "", kubectl, "--kubeconfig", kc, "get", "pods", "-n", "demo", "-o", "name")
			if allowed && err == nil && strings.Contains(out, "pod/web-") {
				return
			}
			if !allowed && err != nil && strings.Contains(strings.ToLower(out), "forbidden") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v %s", what, err, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	eventually := func(what string, allowed bool) { t.Helper(); eventuallyAs("sam", kc, what, allowed) }
	eventually("sam lists pods through the platform group", true)

	// Sam's request made their service account's binding in demo.
	who, err := runAs("sam", "", bin, "whoami", "-o", "json")
	var me struct{ ID string }
	if err != nil || json.Unmarshal([]byte(who), &me) != nil || me.ID == "" {
		t.Fatalf("whoami: %v %s", err, who)
	}
	hash := strings.TrimPrefix(agent.ServiceAccountName(me.ID), "gatehouse-")
	clusterKC := filepath.Join(cfg.StateDir, "cluster", "admin.kubeconfig")
	samBindings := func() (string, error) {
		return runAs("admin", "", kubectl, "--kubeconfig", clusterKC, "get", "rolebindings", "-n", "demo", "-l", agent.LabelUser+"="+hash, "-o", "name")
	}
	if out, err := samBindings(); err != nil || !strings.Contains(out, "rolebinding") {
		t.Fatalf("sam's binding in demo: %v %q", err, out)
	}

	// Sam leaves the group at the provider: their next login drops it.
	if err := provider.SetGroups("sam"); err != nil {
		t.Fatal(err)
	}
	if out, err := ssoLogin(); err != nil || !strings.Contains(out, "logged in as sam@example.com") || strings.Contains(out, "warning") {
		t.Fatalf("second SSO login: %v\n%s", err, out)
	}
	// The login itself takes sam's bindings out of the cluster (before
	// any request of theirs).
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := samBindings()
		if err == nil && strings.TrimSpace(out) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sam's bindings are still in the cluster after the login that dropped the group: %v %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	eventually("sam without the group", false)

	// And rejoins: the third login (a refresh token rotated twice by now)
	// brings the access back.
	if err := provider.SetGroups("sam", "platform", "unmapped"); err != nil {
		t.Fatal(err)
	}
	if out, err := ssoLogin(); err != nil || strings.Contains(out, "warning") {
		t.Fatalf("third SSO login: %v\n%s", err, out)
	}
	eventually("sam back in the group", true)

	// Pat has no account, but signs in through the provider that
	// provisions: the login adds them, and the IdP group gives access.
	if out, err := ssoLoginAs("corp-jit", "pat", "pat-idp-pw"); err != nil || !strings.Contains(out, "logged in as pat@example.com") {
		t.Fatalf("pat's first SSO login: %v\n%s", err, out)
	}
	patKC := filepath.Join(dir, "pat.kubeconfig")
	if out, err := runAs("pat", "", bin, "kubeconfig", "--cluster", "dev", "--file", patKC); err != nil {
		t.Fatalf("pat's kubeconfig: %v %s", err, out)
	}
	eventuallyAs("pat", patKC, "pat, provisioned at login, lists pods through the platform group", true)

	// An identity from the provider with the admin's email does not take
	// over the admin: Kratos refuses to register a second identity with
	// the address, and the CLI says why instead of waiting.
	if out, err := ssoLoginAs("corp-jit", "mallory", "mallory-idp-pw"); err == nil || !strings.Contains(out, "did not complete") {
		t.Fatalf("SSO login with the admin's email: %v\n%s", err, out)
	} else {
		t.Logf("refused: %s", out[strings.Index(out, "did not complete"):])
	}

	auditLog := string(mustReadFile(t, filepath.Join(cfg.StateDir, "audit.jsonl")))
	if !strings.Contains(auditLog, `"action":"user.provision"`) {
		t.Fatal("provisioning not audited")
	}
	// Each of sam's logins records the groups it gave: one, none, one.
	var samGroups []int
	for _, line := range strings.Split(auditLog, "\n") {
		var ev struct {
			Action, User string
			Groups       []string
		}
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Action == "login" && ev.User == me.ID {
			samGroups = append(samGroups, len(ev.Groups))
		}
	}
	if fmt.Sprint(samGroups) != "[1 0 1]" {
		t.Fatalf("groups of sam's audited logins: %v, want [1 0 1]", samGroups)
	}
	if n := strings.Count(auditLog, `"action":"login"`); n < 4 {
		t.Fatalf("%d logins audited, want at least 4 (admin and sam's three)", n)
	}
}

func landed(resp *http.Response) string {
	if resp == nil {
		return "nowhere"
	}
	return resp.Request.URL.String()
}
