package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
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

func TestAuditTailFollows(t *testing.T) {
	st, conn, _, _ := apiServer(t)
	ctx := context.Background()
	orgs, _, _ := st.ListOrgs(ctx, store.Page{})
	org := orgs[0].ID
	event := func(id string, at time.Time) *store.AuditEvent {
		return &store.AuditEvent{ID: id, At: at, OrgID: org, Kind: "kube", User: "john", Cluster: "staging", Verb: "get", Resource: "pods", Status: 200,
			Body: []byte(fmt.Sprintf(`{"id":%q,"time":%q,"user":"john","cluster":"staging","verb":"get","resource":"pods","status":200}`, id, at.Format(time.RFC3339Nano)))}
	}
	now := time.Now()
	var evs []*store.AuditEvent
	for i := range 5 {
		evs = append(evs, event(fmt.Sprintf("old-%d", i), now.Add(time.Duration(i-10)*time.Second)))
	}
	if err := st.InsertAuditEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithCancel(ctx)
	var out, errOut testenv.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(tctx, append([]string{"audit", "tail", "-f", "-n", "3", "-o", "json", "--interval", "100ms"}, conn...), &out, &errOut)
	}()
	testenv.Eventually(t, 10*time.Second, testenv.Cond("the latest 3 events", func() bool { return strings.Count(out.String(), "\n") == 3 }))
	// A new event, and one indexed late with an older time (another
	// node's partition): both are shown, once.
	if err := st.InsertAuditEvents(ctx, []*store.AuditEvent{event("new-1", time.Now()), event("late-1", now.Add(-20*time.Second))}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if strings.Count(out.String(), "\n") == 5 {
			return nil
		}
		return fmt.Errorf("tail wrote %s%s", out.String(), errOut.String())
	})
	time.Sleep(300 * time.Millisecond) // more polls: nothing shown twice
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tail: %v %s", err, errOut.String())
	}
	var ids []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e struct{ ID string }
		json.Unmarshal([]byte(l), &e)
		ids = append(ids, e.ID)
	}
	if got := strings.Join(ids, " "); got != "old-2 old-3 old-4 late-1 new-1" && got != "old-2 old-3 old-4 new-1 late-1" {
		t.Fatalf("tail showed %s", got)
	}
}

func TestAuditPlayAndClusterRecordingPolicy(t *testing.T) {
	st, conn, _, _ := apiServer(t)
	ctx := context.Background()
	cli := func(args ...string) (string, string, error) { return runCLI(ctx, append(args, conn...)...) }
	if _, errOut, err := cli("cluster", "create", "web-1", "--project", "default", "--record-sessions", "cluster-admin,edit"); err != nil {
		t.Fatalf("%v %s", err, errOut)
	}
	out, _, err := cli("cluster", "get", "web-1")
	if err != nil || !strings.Contains(out, "cluster-admin,edit") {
		t.Fatalf("get: %v\n%s", err, out)
	}
	if out, errOut, err := cli("cluster", "update", "web-1", "--record-sessions", "*"); err != nil || !strings.Contains(out, "*") {
		t.Fatalf("update: %v %s\n%s", err, errOut, out)
	}
	if _, _, err := cli("cluster", "update", "web-1", "--record-sessions", "Bad Role"); err == nil {
		t.Fatal("a bad role was accepted")
	}
	if out, _, err := cli("cluster", "update", "web-1", "--record-sessions", "none"); err != nil || !strings.Contains(out, "none") {
		t.Fatalf("recording off: %v\n%s", err, out)
	}

	cl, err := st.GetCluster(ctx, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	cast := "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1700000000,\"title\":\"ada on web-1: exec\"}\n" +
		"[0.5,\"o\",\"$ \"]\n[1.0,\"i\",\"ls\\r\"]\n[1.1,\"o\",\"ls\\r\\nfile\\r\\n\"]\n[1.2,\"m\",\"a note\"]\n"
	if err := st.InsertRecordingChunks(ctx, []*store.RecordingChunk{{OrgID: cl.OrgID, ProjectID: cl.ProjectID, Recording: "rec-9", Seq: 0,
		At: time.Now(), Cluster: "web-1", Data: cast, Final: true}}); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := cli("audit", "play", "rec-9", "--speed", "100")
	if err != nil || out != "$ ls\r\nfile\r\n" || !strings.Contains(errOut, "a note") || !strings.Contains(errOut, "ada on web-1") {
		t.Fatalf("play: %v %q %q", err, out, errOut)
	}
	if out, _, err := cli("audit", "play", "rec-9", "--cast"); err != nil || out != cast {
		t.Fatalf("play --cast: %v %q", err, out)
	}
	if _, _, err := cli("audit", "play", "nope"); err == nil || !strings.Contains(err.Error(), "404") && !strings.Contains(strings.ToLower(err.Error()), "not found") {
		t.Fatalf("an unknown recording: %v", err)
	}
}

// Anyone may put control characters in an audited request's name (the
// path is theirs; denied requests are audited too), and an identity
// provider in a user's email: a table on the auditor's terminal shows them
// escaped, so that no escape sequence runs there, no newline forges a row
// and no bidirectional override reorders the text.
func TestAuditTableEscapesHostileText(t *testing.T) {
	st, conn, _, _ := apiServer(t)
	ctx := context.Background()
	orgs, _, err := st.ListOrgs(ctx, store.Page{})
	if err != nil || len(orgs) == 0 {
		t.Fatal(orgs, err)
	}
	name := "x\x1b[1A\x1b[2K\n2026-01-01T00:00:00Z  alice  prod  forged"
	user := "mallory\u202egnp.exe"
	body, _ := json.Marshal(map[string]any{"id": "hostile", "time": time.Now().Add(-time.Minute), "user": user, "cluster": "staging",
		"namespace": "default", "verb": "get", "resource": "pods", "name": name, "status": 403})
	if err := st.InsertAuditEvents(ctx, []*store.AuditEvent{{ID: "hostile", At: time.Now().Add(-time.Minute), OrgID: orgs[0].ID, Kind: "kube",
		User: user, Cluster: "staging", Namespace: "default", Verb: "get", Resource: "pods", Name: name, Status: 403, Body: body}}); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runCLI(ctx, append([]string{"audit", "search", "--since", "1h"}, conn...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if strings.ContainsAny(out, "\x1b\u202e") || !utf8.ValidString(out) {
		t.Fatalf("the table passed control text through:\n%q", out)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 {
		t.Fatalf("want the header and one row, got %d lines:\n%s", len(lines), out)
	}
	if !strings.Contains(out, strconv.QuoteToGraphic(name)) || !strings.Contains(out, `"mallory\u202egnp.exe"`) {
		t.Fatalf("the hostile fields are not shown quoted:\n%s", out)
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"":                   "",
		"default":            "default",
		"héllo wörld €":      "héllo wörld €",
		"a b":                "a b",
		"tab\there":          `"tab\there"`,
		"esc\x1b[2J":         `"esc\x1b[2J"`,
		"\xff":               `"\xff"`,
		"rtl\u202e":          `"rtl\u202e"`,
		"zero\u200bwidth":    `"zero\u200bwidth"`,
		`"already quoted"`:   `"\"already quoted\""`,
		"c1\u009bcontrolled": `"c1\u009bcontrolled"`,
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %s, want %s", in, got, want)
		}
	}
}
