package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/ca"
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
