package audit_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/internal/auditschema"
)

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	s, err := auditschema.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Every kind of event the spooled sink writes validates against the
// documented schema; an event that breaks it does not.
func TestEventsMatchTheDocumentedSchema(t *testing.T) {
	schema := compileSchema(t)
	cfg := spool.DefaultConfig()
	cfg.Dir = t.TempDir()
	sp, err := spool.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"node-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sink := &audit.SpoolSink{Spool: sp, Node: "node-1"}
	sink.SetKey(func() *tls.Certificate { return &cert })
	now := time.Now()
	for _, ev := range []*audit.Event{
		{Kind: audit.KindKube, Time: now, Phase: audit.PhaseComplete, RequestID: "r1", Node: "node-1", User: "u1", Groups: []string{"sre"},
			Cluster: "prod", Namespace: "default", Verb: "list", Resource: "pods", Path: "/k8s/prod/api/v1/namespaces/default/pods",
			Status: 200, Duration: time.Millisecond, BytesOut: 1234, ClientAddr: "10.0.0.1:5000", UserAgent: "kubectl/v1.37.2"},
		{Kind: audit.KindKube, Time: now, Phase: audit.PhaseOpen, RequestID: "r2", Node: "node-1", User: "u1", Cluster: "prod", Verb: "create",
			Resource: "pods", Subresource: "exec", Name: "web-0", Path: "/k8s/prod/api/v1/namespaces/default/pods/web-0/exec", ClientAddr: "10.0.0.1:5001"},
		{Kind: audit.KindSession, Action: audit.ActionSessionData, Time: now, Phase: audit.PhaseComplete, RequestID: "r2", Node: "node-1", User: "u1",
			Cluster: "prod", Verb: "create", Resource: "pods", Subresource: "exec", Name: "web-0", Path: "/k8s/prod/api/v1/namespaces/default/pods/web-0/exec",
			ClientAddr: "10.0.0.1:5001", Status: 200, Recording: "0193b3a4-1111-7000-8000-000000000001",
			Chunk: &audit.Chunk{Seq: 0, Data: "{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"hi\"]\n", Final: true}},
		{Kind: audit.KindKube, Time: now, Phase: audit.PhaseClose, RequestID: "r2", Node: "node-1", User: "u1", Cluster: "prod", Verb: "create",
			Path: "/k8s/prod/api/v1/namespaces/default/pods/web-0/exec", Status: 101, BytesIn: 10, BytesOut: 99, ClientAddr: "10.0.0.1:5001",
			Recording: "0193b3a4-1111-7000-8000-000000000001"},
		{Kind: audit.KindSystem, Action: "ca.rotation.active", Object: "ca/generation/2", Time: now, Phase: audit.PhaseComplete, Node: "node-2",
			Status: 200, Detail: "rotation of the intermediates"},
		{Kind: audit.KindSystem, Action: "node.enrol", Object: "node/node-4", Time: now, Phase: audit.PhaseComplete, Node: "node-2",
			Status: 403, Error: "bad MAC", ClientAddr: "10.0.0.4:3333"},
		{Kind: audit.KindSystem, Action: audit.ActionChainStart, Object: "chain/x", Time: now, Phase: audit.PhaseComplete, Node: "node-1",
			Status: 200, Link: &audit.ChainLink{Chain: "0193b3a4-1111-7000-8000-000000000002", Seq: 1001, Hash: strings.Repeat("ab", 32)}},
	} {
		if err := sink.Write(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	recs, err := sp.Read(0, 100, 1<<20)
	if err != nil || len(recs) != 8 {
		t.Fatal(len(recs), err)
	}
	for _, r := range recs {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.Payload))
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.Validate(v); err != nil {
			t.Fatalf("event %d does not match the schema: %v\n%s", r.Seq, err, r.Payload)
		}
	}
	// The schema refuses what breaks it.
	var ev map[string]any
	json.Unmarshal(recs[0].Payload, &ev)
	for field, bad := range map[string]any{"schema": 2, "id": "not-a-uuid", "phase": "halfway", "kind": "other", "status": -1} {
		broken := map[string]any{}
		for k, v := range ev {
			broken[k] = v
		}
		broken[field] = bad
		b, _ := json.Marshal(broken)
		v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if schema.Validate(v) == nil {
			t.Errorf("an event with %s %v validates", field, bad)
		}
	}
	// A session event needs its chunk.
	ev = map[string]any{}
	json.Unmarshal(recs[2].Payload, &ev)
	if ev["kind"] != "session" {
		t.Fatalf("record 2 is %v", ev["kind"])
	}
	delete(ev, "chunk")
	b, _ := json.Marshal(ev)
	v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if schema.Validate(v) == nil {
		t.Error("a session event without its chunk validates")
	}
}
