// Package ship sends a node's audit spool to Kafka (issue 12), with
// segmentio/kafka-go: it reads a batch of records from the spool, writes
// them to the topic and waits for every in-sync replica to acknowledge
// them (RequiredAcks = all; kafka-go's default is none), and only then
// advances the spool's cursor. Delivery is therefore at least once: a
// batch that fails part-way is written again whole, and a node that dies
// between Kafka's acknowledgement and its cursor sends the batch again
// when it comes back. kafka-go has no idempotent producer, so consumers
// deduplicate by the event's id (docs/design/0007-audit-pipeline.md).
//
// Each event is keyed by its cluster (a node's own events by the node's
// name), so that one cluster's events go to one partition, in order.
package ship

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/gatehouse-dev/gatehouse/audit/spool"
)

// maxRecordBatch bounds one partition's record batch in a produce request:
// half of Kafka's default message.max.bytes. Events are bounded far below
// it (audit.MaxField).
const maxRecordBatch = 512 << 10

// Config configures a Shipper.
type Config struct {
	Spool *spool.Spool
	// Brokers are Kafka's bootstrap addresses, host:port; Topic is the
	// audit topic.
	Brokers []string
	Topic   string
	// Node names this node in each message's headers and keys its own
	// events.
	Node string
	// TLS and SASL, when set, secure the connections to Kafka.
	TLS  *tls.Config
	SASL sasl.Mechanism
	// BatchSize and BatchBytes bound one write; BatchTimeout is how long
	// kafka-go waits to fill a batch (its default, a second, would delay
	// every partial batch by a second).
	BatchSize    int
	BatchBytes   int
	BatchTimeout time.Duration
	// Poll is how often an idle shipper looks at the spool again.
	Poll time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed writes.
	MinBackoff, MaxBackoff time.Duration
	// WriteTimeout bounds one write, acknowledgements included.
	WriteTimeout time.Duration
	// AllowAutoTopicCreation lets the first write create the topic (a dev
	// setup, or a broker that allows it).
	AllowAutoTopicCreation bool
	Logger                 *slog.Logger
}

// DefaultConfig returns batches of up to 2,000 events or 1 MiB, a 2 ms
// batch timeout and a 20 ms poll: a quiet node gathers a few events a
// batch instead of sending each alone, which costs the request path CPU
// on a small machine (BenchmarkAuditCost); events reach Kafka at most
// that much later.
func DefaultConfig() Config {
	return Config{BatchSize: 2000, BatchBytes: 1 << 20, BatchTimeout: 2 * time.Millisecond, Poll: 20 * time.Millisecond,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, WriteTimeout: 10 * time.Second}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Spool == nil:
		return errors.New("ship: Spool is required")
	case len(c.Brokers) == 0 || c.Topic == "":
		return errors.New("ship: Brokers and Topic are required")
	case c.Node == "":
		return errors.New("ship: Node is required")
	case c.BatchSize < 1 || c.BatchBytes < 1024 || c.BatchTimeout <= 0 || c.Poll <= 0:
		return errors.New("ship: BatchSize, BatchBytes, BatchTimeout and Poll must be positive (BatchBytes at least 1 KiB)")
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff || c.WriteTimeout <= 0:
		return errors.New("ship: backoffs and WriteTimeout must be positive, MaxBackoff at least MinBackoff")
	}
	return nil
}

// Shipper sends the spool to Kafka.
type Shipper struct {
	cfg Config
	log *slog.Logger
	w   *kafka.Writer
	tr  *kafka.Transport

	shipped  prometheus.Counter
	failures prometheus.Counter
	batchDur prometheus.Histogram

	closeOnce sync.Once
}

// New returns a shipper for cfg; Run runs it.
func New(cfg Config) (*Shipper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tr := &kafka.Transport{TLS: cfg.TLS, SASL: cfg.SASL, DialTimeout: 5 * time.Second}
	w := &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Topic:        cfg.Topic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    cfg.BatchSize,
		// Below Kafka's default message.max.bytes (1 MiB) for one
		// partition's record batch: a backlog sent in full batches would
		// otherwise be refused as too large, again and again.
		BatchBytes:             maxRecordBatch,
		BatchTimeout:           cfg.BatchTimeout,
		WriteTimeout:           cfg.WriteTimeout,
		ReadTimeout:            cfg.WriteTimeout,
		MaxAttempts:            1, // the shipper retries, with its backoff
		AllowAutoTopicCreation: cfg.AllowAutoTopicCreation,
		Transport:              tr,
	}
	return &Shipper{cfg: cfg, log: cfg.Logger, w: w, tr: tr,
		shipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_audit_shipped_total", Help: "Audit events this node's shipper has had acknowledged by Kafka."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_audit_ship_failures_total",
			Help: "Writes of a batch of audit events to Kafka that failed (the batch is written again: consumers deduplicate by event id)."}),
		batchDur: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gatehouse_audit_ship_seconds",
			Help: "Time to write one batch of audit events to Kafka, acknowledgements included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12)}),
	}, nil
}

// Collectors returns the shipper's metrics, with the spool's lag and fill.
func (s *Shipper) Collectors() []prometheus.Collector {
	gauge := func(name, help string, fn func(spool.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return fn(s.cfg.Spool.Stats()) })
	}
	return []prometheus.Collector{s.shipped, s.failures, s.batchDur,
		gauge("gatehouse_audit_spool_lag_events", "Audit events in the spool not yet acknowledged by Kafka.", func(st spool.Stats) float64 { return float64(st.Last - st.Acked) }),
		gauge("gatehouse_audit_spool_bytes", "Bytes of the audit spool on disk.", func(st spool.Stats) float64 { return float64(st.Bytes) }),
		gauge("gatehouse_audit_spool_fill_ratio", "The audit spool's bytes over its cap: at 1 the node refuses requests (fail closed) or stops auditing them.",
			func(st spool.Stats) float64 { return float64(st.Bytes) / float64(st.MaxBytes) }),
		gauge("gatehouse_audit_spool_lost_events", "Audit events the spool skipped as corrupt on disk.", func(st spool.Stats) float64 { return float64(st.Lost) }),
	}
}

// keyOf returns an event's Kafka key: its cluster, or this node's name.
func (s *Shipper) keyOf(payload []byte) []byte {
	var ev struct {
		Cluster string `json:"cluster"`
	}
	if json.Unmarshal(payload, &ev) == nil && ev.Cluster != "" {
		return []byte(ev.Cluster)
	}
	return []byte("node/" + s.cfg.Node)
}

// Run ships until ctx ends: a batch at a time, the spool's cursor advanced
// after each batch Kafka acknowledged, failures retried with backoff.
func (s *Shipper) Run(ctx context.Context) error {
	after := s.cfg.Spool.Stats().Acked
	backoff := s.cfg.MinBackoff
	for ctx.Err() == nil {
		recs, err := s.cfg.Spool.Read(after, s.cfg.BatchSize, s.cfg.BatchBytes)
		if err != nil {
			if errors.Is(err, spool.ErrClosed) {
				return nil
			}
			return fmt.Errorf("ship: %w", err)
		}
		if len(recs) == 0 {
			sleep(ctx, s.cfg.Poll)
			continue
		}
		msgs := make([]kafka.Message, len(recs))
		for i, r := range recs {
			msgs[i] = kafka.Message{Key: s.keyOf(r.Payload), Value: r.Payload, Headers: []kafka.Header{
				{Key: "node", Value: []byte(s.cfg.Node)}, {Key: "seq", Value: []byte(strconv.FormatUint(r.Seq, 10))}}}
		}
		start := time.Now()
		if err := s.w.WriteMessages(ctx, msgs...); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.failures.Inc()
			s.log.Warn("audit: events not shipped to Kafka; the spool keeps them, trying again", "events", len(msgs), "retryIn", backoff, "err", summary(err))
			sleep(ctx, backoff)
			backoff = min(2*backoff, s.cfg.MaxBackoff)
			continue
		}
		s.batchDur.Observe(time.Since(start).Seconds())
		backoff = s.cfg.MinBackoff
		last := recs[len(recs)-1].Seq
		if err := s.cfg.Spool.Ack(last); err != nil {
			if errors.Is(err, spool.ErrClosed) {
				return nil
			}
			return fmt.Errorf("ship: %w", err)
		}
		s.shipped.Add(float64(len(recs)))
		after = last
	}
	return nil
}

// Close closes the Kafka writer and its connections. It is idempotent; Run
// must have returned.
func (s *Shipper) Close() error {
	var err error
	s.closeOnce.Do(func() {
		err = s.w.Close()
		// The writer leaves a transport it was given open.
		s.tr.CloseIdleConnections()
	})
	return err
}

// summary shortens kafka-go's error for a batch, which lists one error per
// message, to the count and the first.
func summary(err error) error {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil {
				return fmt.Errorf("%d of %d messages not written, the first: %w", we.Count(), len(we), e)
			}
		}
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
