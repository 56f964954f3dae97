// Package auditindex writes the audit topic into the store for search (issue
// 12): every gateway node runs an Indexer, a member of one Kafka consumer
// group, so that each partition is indexed by one node at a time. An
// event's organization and project come from its cluster, looked up in the
// store (cached briefly). Offsets are committed only after the events are
// in the store; indexing is idempotent (the event's id is the key), so a
// batch read twice after a crash does no harm.
package auditindex

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// Config configures an Indexer.
type Config struct {
	Store   *store.Store
	Brokers []string
	Topic   string
	// Group is the consumer group every node's indexer joins.
	Group string
	TLS   *tls.Config
	SASL  sasl.Mechanism
	// Batch bounds the events written in one transaction; MaxWait is how
	// long a partial batch waits for more.
	Batch   int
	MaxWait time.Duration
	Logger  *slog.Logger
}

// DefaultConfig returns the group gatehouse-audit-index, batches of 500
// and a 200 ms wait.
func DefaultConfig() Config {
	return Config{Group: "gatehouse-audit-index", Batch: 500, MaxWait: 200 * time.Millisecond}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("auditindex: Store is required")
	case len(c.Brokers) == 0 || c.Topic == "" || c.Group == "":
		return errors.New("auditindex: Brokers, Topic and Group are required")
	case c.Batch < 1 || c.MaxWait <= 0:
		return errors.New("auditindex: Batch and MaxWait must be positive")
	}
	return nil
}

// Indexer reads the audit topic into the store.
type Indexer struct {
	cfg Config
	log *slog.Logger
	r   *kafka.Reader

	indexed prometheus.Counter
	skipped prometheus.Counter

	mu       sync.Mutex // guards clusters
	clusters map[string]clusterInfo

	closeOnce sync.Once
}

type clusterInfo struct {
	org, project string
	at           time.Time
}

// clusterTTL is how long a cluster's organization and project are cached.
const clusterTTL = time.Minute

// New returns an indexer; Run runs it.
func New(cfg Config) (*Indexer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: cfg.Brokers, Topic: cfg.Topic, GroupID: cfg.Group, MaxWait: cfg.MaxWait,
		StartOffset: kafka.FirstOffset, CommitInterval: 0, // commits are explicit, after the store
		Dialer: &kafka.Dialer{Timeout: 5 * time.Second, TLS: cfg.TLS, SASLMechanism: cfg.SASL},
	})
	return &Indexer{cfg: cfg, log: cfg.Logger, r: r, clusters: map[string]clusterInfo{},
		indexed: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_audit_indexed_total", Help: "Audit events this node indexed into the store for search."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_audit_index_skipped_total", Help: "Messages of the audit topic that are not events (not indexed)."}),
	}, nil
}

// Collectors returns the indexer's metrics.
func (x *Indexer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{x.indexed, x.skipped}
}

// Run indexes until ctx ends: it fetches up to Batch messages (or what
// came within MaxWait), writes them to the store, then commits their
// offsets.
func (x *Indexer) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		var msgs []kafka.Message
		var evs []*store.AuditEvent
		var chunks []*store.RecordingChunk
		deadline := time.Now().Add(x.cfg.MaxWait)
		for len(msgs) < x.cfg.Batch {
			wait := time.Until(deadline)
			if len(msgs) == 0 {
				wait = time.Minute // the first message of a batch: wait for it
			}
			fctx, cancel := context.WithTimeout(ctx, wait)
			m, err := x.r.FetchMessage(fctx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(err, context.DeadlineExceeded) {
					break
				}
				x.log.Warn("audit index: fetch failed; trying again", "err", err)
				time.Sleep(time.Second)
				break
			}
			msgs = append(msgs, m)
			switch e, c := x.event(ctx, m.Value); {
			case e != nil:
				evs = append(evs, e)
			case c != nil:
				chunks = append(chunks, c)
			}
		}
		if len(msgs) == 0 {
			continue
		}
		for {
			err := x.cfg.Store.InsertAuditEvents(ctx, evs)
			if err == nil {
				err = x.cfg.Store.InsertRecordingChunks(ctx, chunks)
			}
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			x.log.Warn("audit index: events not written to the store; trying again", "events", len(evs), "err", err)
			time.Sleep(time.Second)
		}
		x.indexed.Add(float64(len(evs)))
		if err := x.r.CommitMessages(ctx, msgs...); err != nil && ctx.Err() == nil {
			// Read again later: indexing is idempotent.
			x.log.Warn("audit index: offsets not committed", "err", err)
		}
	}
	return nil
}

// event maps a message to the store's row: an event, or a chunk of a
// session's recording (kept apart: searches do not wade through
// recordings); neither if it is not an event.
func (x *Indexer) event(ctx context.Context, raw []byte) (*store.AuditEvent, *store.RecordingChunk) {
	var ev audit.Event
	if err := json.Unmarshal(raw, &ev); err != nil || ev.ID == "" {
		x.skipped.Inc()
		return nil, nil
	}
	if ev.Kind == audit.KindSession {
		if ev.Chunk == nil || ev.Recording == "" || ev.Chunk.Seq < 0 {
			x.skipped.Inc()
			return nil, nil
		}
		c := &store.RecordingChunk{Recording: ev.Recording, Seq: ev.Chunk.Seq, At: ev.Time, Cluster: ev.Cluster, Final: ev.Chunk.Final, Data: ev.Chunk.Data}
		c.OrgID, c.ProjectID = x.cluster(ctx, ev.Cluster)
		return nil, c
	}
	kind := ev.Kind
	if kind == "" {
		kind = audit.KindKube
	}
	e := &store.AuditEvent{ID: ev.ID, At: ev.Time, Kind: kind, Node: ev.Node, User: ev.User, Groups: ev.Groups, Cluster: ev.Cluster,
		Namespace: ev.Namespace, Verb: ev.Verb, Resource: ev.Resource, Name: ev.Name, Status: ev.Status, Body: raw}
	if ev.Cluster != "" {
		e.OrgID, e.ProjectID = x.cluster(ctx, ev.Cluster)
	}
	return e, nil
}

// cluster returns a cluster's organization and project ("" for a cluster
// the store does not know, or no longer).
func (x *Indexer) cluster(ctx context.Context, name string) (string, string) {
	x.mu.Lock()
	c, ok := x.clusters[name]
	x.mu.Unlock()
	if ok && time.Since(c.at) < clusterTTL {
		return c.org, c.project
	}
	cl, err := x.cfg.Store.GetCluster(ctx, name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		x.log.Warn("audit index: cluster lookup", "cluster", name, "err", err)
		return c.org, c.project
	}
	c = clusterInfo{at: time.Now()}
	if cl != nil {
		c.org, c.project = cl.OrgID, cl.ProjectID
	}
	x.mu.Lock()
	x.clusters[name] = c
	x.mu.Unlock()
	return c.org, c.project
}

// Close leaves the consumer group. It is idempotent; Run must have
// returned.
func (x *Indexer) Close() error {
	var err error
	x.closeOnce.Do(func() {
		if err = x.r.Close(); err != nil {
			err = fmt.Errorf("auditindex: %w", err)
		}
	})
	return err
}
