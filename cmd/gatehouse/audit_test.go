package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// gatehouse audit verify passes an untouched export and fails an edited
// one, naming the node, the chain and the events.
func TestAuditVerifyExport(t *testing.T) {
	dir := t.TempDir()
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"node-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	os.WriteFile(caFile, auth.RootPEM(), 0o600)
	cfg := spool.DefaultConfig()
	cfg.Dir = filepath.Join(dir, "spool")
	sp, err := spool.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sink := &audit.SpoolSink{Spool: sp, Node: "node-1", CheckpointEvery: 5}
	sink.SetKey(func() *tls.Certificate { return &cert })
	for range 12 {
		if err := sink.Write(context.Background(), &audit.Event{Kind: audit.KindKube, Node: "node-1", Verb: "get", Cluster: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	sink.Checkpoint()
	recs, _ := sp.Read(0, 100, 1<<20)
	sp.Close()
	var export bytes.Buffer
	for _, r := range recs {
		export.Write(r.Payload)
		export.WriteByte('\n')
	}
	good := filepath.Join(dir, "good.jsonl")
	os.WriteFile(good, export.Bytes(), 0o600)
	var out, errOut bytes.Buffer
	if err := runAudit(context.Background(), []string{"verify", "--ca-file", caFile, "--file", good}, &out, &errOut); err != nil {
		t.Fatalf("untouched: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "3 checkpoints verified") {
		t.Fatalf("untouched:\n%s", out.String())
	}
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, bytes.Replace(export.Bytes(), []byte(`"verb":"get"`), []byte(`"verb":"delete"`), 1), 0o600)
	out.Reset()
	if err := runAudit(context.Background(), []string{"verify", "--ca-file", caFile, "--file", bad}, &out, &errOut); err == nil || !strings.Contains(out.String(), "altered: node node-1") {
		t.Fatalf("edited: %v\n%s", err, out.String())
	}
	if err := runAudit(context.Background(), []string{"verify", "--file", bad}, &out, &errOut); err != errUsage {
		t.Fatalf("without --ca-file: %v", err)
	}
}

// gatehouse audit search pages through the API's search, newest first, up
// to --limit, with filters, as a table or JSON lines.
func TestAuditSearchCommand(t *testing.T) {
	st, conn, _, _ := apiServer(t)
	ctx := context.Background()
	orgs, _, err := st.ListOrgs(ctx, store.Page{})
	if err != nil || len(orgs) == 0 {
		t.Fatal(orgs, err)
	}
	base := time.Now().Add(-time.Hour)
	var evs []*store.AuditEvent
	for i := range 25 {
		evs = append(evs, &store.AuditEvent{ID: fmt.Sprintf("e%02d", i), At: base.Add(time.Duration(i) * time.Second), OrgID: orgs[0].ID,
			Kind: "kube", User: "john", Cluster: []string{"staging", "prod"}[i%2], Namespace: "default", Verb: "list", Resource: "pods", Status: 200,
			Body: []byte(fmt.Sprintf(`{"id":"e%02d","time":%q,"user":"john","cluster":%q,"verb":"list","resource":"pods","status":200}`,
				i, base.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano), []string{"staging", "prod"}[i%2]))})
	}
	if err := st.InsertAuditEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runCLI(ctx, append([]string{"audit", "search", "--cluster", "staging", "--since", "2h", "--limit", "5"}, conn...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[1], "staging") || strings.Contains(out, "prod") {
		t.Fatalf("table:\n%s", out)
	}
	out, _, err = runCLI(ctx, append([]string{"audit", "search", "-o", "json", "--limit", "100"}, conn...)...)
	if err != nil || strings.Count(out, "\n") != 25 || !strings.HasPrefix(out, `{"id":"e24"`) {
		t.Fatalf("json (%v):\n%s", err, out)
	}
}
