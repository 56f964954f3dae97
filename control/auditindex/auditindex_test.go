package auditindex_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/auditindex"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Two indexers of one group read the topic into the store: every event
// once, with its cluster's organization and project; a message that is
// not an event is skipped, and one delivered twice is indexed once.
func TestIndexesTheTopic(t *testing.T) {
	ctx := context.Background()
	k := kafkatest.StartT(t, kafkatest.Config{Brokers: 1, Partitions: 3, Topics: []string{"gatehouse.audit"}})
	scfg := store.DefaultConfig()
	scfg.DSN = filepath.Join(t.TempDir(), "gatehouse.db")
	st, err := store.Open(ctx, scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	org := &store.Org{Name: "acme"}
	must(t, st.CreateOrg(ctx, org))
	proj := &store.Project{OrgID: org.ID, Name: "web"}
	must(t, st.CreateProject(ctx, proj))
	must(t, st.CreateCluster(ctx, &store.Cluster{Name: "staging", ProjectID: proj.ID}))

	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(k.Brokers...), Topic: "gatehouse.audit", Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, Transport: tr}
	defer w.Close()
	var msgs []kafka.Message
	for i := range 300 {
		ev := audit.Event{Schema: 1, ID: fmt.Sprintf("0192-%04d", i), Kind: audit.KindKube, Time: time.Now(), Node: "node-1", User: "john",
			Cluster: "staging", Namespace: "default", Verb: "list", Resource: "pods", Status: 200}
		b, _ := json.Marshal(ev)
		msgs = append(msgs, kafka.Message{Key: []byte("staging"), Value: b})
	}
	msgs = append(msgs, kafka.Message{Key: []byte("x"), Value: []byte("not an event")}, msgs[0])
	must(t, w.WriteMessages(ctx, msgs...))

	runCtx, stop := context.WithCancel(ctx)
	var done []chan error
	for range 2 {
		cfg := auditindex.DefaultConfig()
		cfg.Store, cfg.Brokers, cfg.Topic, cfg.MaxWait = st, k.Brokers, "gatehouse.audit", 50*time.Millisecond
		x, err := auditindex.New(cfg)
		must(t, err)
		d := make(chan error, 1)
		go func() { d <- x.Run(runCtx); x.Close() }()
		done = append(done, d)
	}
	deadline := time.Now().Add(30 * time.Second)
	var got []*store.AuditEvent
	for {
		got = nil
		q := store.AuditQuery{OrgID: org.ID, Limit: 1000}
		page, _, err := st.QueryAudit(ctx, q)
		must(t, err)
		got = page
		if len(got) == 300 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	for _, d := range done {
		must(t, <-d)
	}
	if len(got) != 300 {
		t.Fatalf("%d events indexed under the organization, want 300", len(got))
	}
	for _, e := range got {
		if e.ProjectID != proj.ID || e.User != "john" || e.Cluster != "staging" || len(e.Body) == 0 {
			t.Fatalf("indexed %+v", e)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
