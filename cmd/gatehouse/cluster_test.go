package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// apiServer is the real API over TLS on an embedded store, with an admin's
// API token; conn are the CLI flags that reach it.
func apiServer(t *testing.T) (*store.Store, []string, string, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	cfg := store.DefaultConfig()
	cfg.DSN = filepath.Join(dir, "gatehouse.db")
	st, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	org := &store.Org{Name: "acme"}
	st.CreateOrg(ctx, org)
	st.CreateProject(ctx, &store.Project{OrgID: org.ID, Name: "default"})
	admin := &store.User{OrgID: org.ID, Email: "admin@acme.test"}
	st.CreateUser(ctx, admin)
	if err := st.CreateBinding(ctx, &store.Binding{OrgID: org.ID, SubjectKind: store.SubjectUser, SubjectID: admin.ID, Role: "ADMIN"}); err != nil {
		t.Fatal(err)
	}
	token, err := st.CreateAPIToken(ctx, &store.APIToken{UserID: admin.ID, Name: "cli", Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	engine, _ := policy.New(st)
	acfg := api.DefaultConfig()
	acfg.Store, acfg.Policy, acfg.Audit = st, engine, &audit.Memory{}
	acfg.GatewayURL, acfg.GatewayCA = "https://gw.acme.test:8443", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	a, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(a)
	t.Cleanup(srv.Close)
	caFile, tokenFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "token")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	conn := []string{"--server", srv.URL, "--token-file", tokenFile, "--ca-file", caFile}

	return st, conn, tokenFile, token
}

func runCLI(ctx context.Context, args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	err := run(ctx, args, &out, &errb)
	return out.String(), errb.String(), err
}

// TestClusterCommands runs `gatehouse cluster ...` against the real API
// over TLS on an embedded store.
func TestClusterCommands(t *testing.T) {
	ctx := context.Background()
	st, conn, tokenFile, token := apiServer(t)
	cli := func(args ...string) (string, string, error) { return runCLI(ctx, args...) }

	manifest, notes, err := cli(append([]string{"cluster", "create", "prod-eu", "--project", "default"}, conn...)...)
	if err != nil {
		t.Fatalf("create: %v %s", err, notes)
	}
	if !strings.Contains(manifest, "kind: Deployment") || !strings.Contains(manifest, "gh1.") || !strings.Contains(notes, "works once") {
		t.Fatalf("create printed:\n%s\n%s", notes, manifest)
	}
	var tok string
	for _, line := range strings.Split(manifest, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "bootstrap-token: "); ok {
			tok = strings.Trim(v, `"`)
		}
	}
	if name, err := st.Redeem(ctx, tok, "uid-1"); err != nil || name != "prod-eu" {
		t.Fatalf("the manifest's token does not register: %q %v", name, err)
	}

	out, _, err := cli(append([]string{"cluster", "list", "--project", "default", "-o", "json"}, conn...)...)
	var listed []api.Cluster
	if err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 || !listed[0].Registered {
		t.Fatalf("list: %v %s", err, out)
	}
	out, _, err = cli(append([]string{"cluster", "get", "prod-eu"}, conn...)...)
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "prod-eu") {
		t.Fatalf("get: %v %s", err, out)
	}
	if _, _, err := cli(append([]string{"cluster", "create", "Bad_Name", "--project", "default"}, conn...)...); err == nil || !strings.Contains(err.Error(), "field name") {
		t.Fatalf("bad name: %v", err)
	}
	if _, _, err := cli(append([]string{"cluster", "create", "x"}, conn...)...); err == nil || !strings.Contains(err.Error(), "--project") {
		t.Fatalf("no project: %v", err)
	}
	os.WriteFile(tokenFile, []byte("gha1.aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"), 0o600)
	if _, _, err := cli(append([]string{"cluster", "get", "prod-eu"}, conn...)...); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("bad token: %v", err)
	}
	os.WriteFile(tokenFile, []byte(token), 0o600)
	if out, _, err := cli(append([]string{"cluster", "delete", "prod-eu"}, conn...)...); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %v %s", err, out)
	}
	if _, _, err := cli("cluster"); err == nil {
		t.Fatal("bare cluster accepted")
	}
}
