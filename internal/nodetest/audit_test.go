package nodetest_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/segmentio/kafka-go"

	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
)

const auditTopic = "gatehouse.audit"

// auditOutage is issue 12's outage scenario with a node process: a person
// sends GETs, each to a path of its own, through a node that ships its
// audit events to Kafka (kfake, in this process); Kafka goes down for
// outage, and while it is down the node is killed (kill -9) with events
// in its spool; Kafka comes back and the node starts again. Every request
// that was answered has its event in Kafka; after deduplication by id the
// cluster's events are in the order the requests were made. The test reads
// the topic as a consumer that knows only the documented schema: every
// event validates against it.
func auditOutage(t testing.TB, outage time.Duration) {
	k := kafkatest.StartT(t, kafkatest.Config{Brokers: 1, Partitions: 3, Topics: []string{auditTopic}})
	c := nodetest.StartRingArgs(t, 1, "--audit-kafka-brokers", strings.Join(k.Brokers, ","), "--audit-kafka-topic", auditTopic)
	n := c.Nodes[0]
	agent := c.StartAgent("audited", n, fakeAPI())
	eventually(t, 10*time.Second, "the agent's tunnel", func() bool { return agent.Remote() != "" })
	_, token := c.Person("audited@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	cert := c.Credential(n, token)

	var mu sync.Mutex
	var answered []int // the requests answered 200, in order
	var i atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		hc := c.HTTPClient(&cert)
		hc.Timeout = 5 * time.Second
		defer hc.CloseIdleConnections()
		for ctx.Err() == nil {
			k := int(i.Add(1))
			resp, err := hc.Get(n.URL() + "/k8s/audited/api/v1/namespaces/req-" + strconv.Itoa(k))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNotFound {
					mu.Lock()
					answered = append(answered, k)
					mu.Unlock()
				}
			} else {
				time.Sleep(50 * time.Millisecond) // the node is down
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	k.SetDown(true)
	start := time.Now()
	time.Sleep(outage)
	lag := n.Metric("gatehouse_audit_spool_lag_events")
	n.Kill()
	t.Logf("Kafka down for %s; the node killed with %v events in its spool", time.Since(start).Round(time.Millisecond), lag)
	if lag == 0 {
		t.Fatal("nothing waited in the spool while Kafka was down")
	}
	k.SetDown(false)
	n.Start()
	time.Sleep(time.Second)
	stop()
	<-done
	eventually(t, 30*time.Second, "the spool shipped", func() bool { return n.Metric("gatehouse_audit_spool_lag_events") == 0 })

	mu.Lock()
	want := map[string]int{}
	for _, k := range answered {
		want["req-"+strconv.Itoa(k)] = k
	}
	mu.Unlock()
	got, dups, total := readAudit(t, k, "audited", want)
	var order []int
	for _, ev := range got {
		if k, ok := want[ev.name]; ok {
			order = append(order, k)
			delete(want, ev.name)
		}
	}
	if len(want) != 0 {
		sample := ""
		if len(got) > 0 {
			sample = fmt.Sprintf("%+v", got[len(got)-1])
		}
		t.Fatalf("%d answered requests have no event in Kafka (%d of the cluster's events read, %d in all; the last: %s)", len(want), len(got), total, sample)
	}
	for j := 1; j < len(order); j++ {
		if order[j] < order[j-1] {
			t.Fatalf("the cluster's events out of order: request %d after %d", order[j], order[j-1])
		}
	}
	t.Logf("%d requests answered, each with its event in Kafka, in order; %d events in the topic, %d delivered twice (deduplicated by id)",
		len(order), total, dups)
	// The node's hash chains, as gatehouse audit verify reads the topic,
	// once the node has stopped gracefully (it signs its chain's end and
	// ships it): whole and in order, the checkpoints verified; the chain
	// the kill cut has an unsigned tail, which is a warning.
	// The node's indexer writes the topic into the store for search: every
	// answered request is found there, under the cluster's organization.
	eventually(t, 30*time.Second, "the events indexed", func() bool {
		found := map[string]bool{}
		q := store.AuditQuery{OrgID: c.Org.ID, Cluster: "audited", Kind: "kube", Limit: store.MaxAuditPage}
		for {
			page, next, err := c.Store.QueryAudit(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				found[e.Name] = true
			}
			if next == nil {
				break
			}
			q.After = next
		}
		for _, k := range order {
			if !found["req-"+strconv.Itoa(k)] {
				return false
			}
		}
		return true
	})
	n.Stop()
	out := c.Gatehouse("audit", "verify", "--ca-file", filepath.Join(n.Dir, "ca.crt"), "--kafka-brokers", strings.Join(k.Brokers, ","), "--topic", auditTopic)
	t.Logf("gatehouse audit verify:\n%s", out)
	if !strings.Contains(out, "every chain is whole and in order") || !regexp.MustCompile(`[1-9][0-9]* checkpoints verified`).MatchString(out) {
		t.Fatal("the chains do not verify, or no checkpoint was verified")
	}
}

// consumedEvent is what the test's consumer takes from an event: it reads
// the topic as a consumer written against the documented schema alone
// would, validating every event and reading fields from the JSON.
type consumedEvent struct {
	id, kind, cluster, name string
}

// readAudit reads the audit topic until every name in want has a kube
// event of cluster (or 30 s pass), validating every event against the
// documented schema, and returns the cluster's kube events in the order
// their partition holds them (deduplicated by id), with the count of
// duplicates and of all events read. It waits for the names, not for a
// count: a request in flight when the node was killed has its event in the
// spool, and so in Kafka, though its client saw no answer, and counting
// would stop one event short.
func readAudit(t testing.TB, k *kafkatest.Cluster, cluster string, want map[string]int) ([]consumedEvent, int, int) {
	t.Helper()
	schema := nodetest.EventSchema(t)
	var mu sync.Mutex
	seen := map[string]bool{}
	var out []consumedEvent
	dups, total, missing := 0, 0, len(want)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kafkatest.Consume(ctx, k.Brokers, auditTopic, 3, func(_ int, m kafka.Message) bool {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(m.Value))
		if err == nil {
			err = schema.Validate(doc)
		}
		if err != nil {
			t.Errorf("an event that does not match the schema: %v\n%s", err, m.Value)
			return false
		}
		fields := doc.(map[string]any)
		str := func(k string) string { s, _ := fields[k].(string); return s }
		ev := consumedEvent{id: str("id"), kind: str("kind"), cluster: str("cluster"), name: str("name")}
		mu.Lock()
		defer mu.Unlock()
		total++
		if seen[ev.id] {
			dups++
		} else if seen[ev.id] = true; ev.cluster == cluster && ev.kind == "kube" {
			out = append(out, ev)
			if _, ok := want[ev.name]; ok {
				missing--
			}
		}
		return missing == 0
	})
	return out, dups, total
}

// Kafka down for 10 s under load, and the node killed meanwhile (issue
// 12): no answered request's event is lost. BenchmarkAuditOutage runs it
// with the 60 s.
func TestAuditThroughKafkaOutageAndKill(t *testing.T) { auditOutage(t, 10*time.Second) }

// BenchmarkAuditOutage is the 60 s outage of issue 12's acceptance.
//
//	go test -run '^$' -bench BenchmarkAuditOutage -benchtime 1x ./internal/nodetest/
func BenchmarkAuditOutage(b *testing.B) {
	outage := 60 * time.Second
	if testing.Short() {
		outage = 2 * time.Second // make test: the scenario runs, small
	}
	for range b.N {
		auditOutage(b, outage)
	}
}
