package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/pipeline"
	"github.com/gatehouse-dev/gatehouse/audit/ship"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/auditindex"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// auditConfig is the node's audit pipeline as its flags say: a JSON-lines
// file alone (no Kafka), or the durable spool shipped to Kafka.
type auditConfig struct {
	stateDir                       *string
	brokers, topic, spoolDir       *string
	spoolMax                       *int64
	tlsOn                          *bool
	caFile, saslMech, user, passwd *string
	autoCreate                     *bool
	index                          *bool
	retention                      *time.Duration
}

func auditFlags(fs *flag.FlagSet, stateDir *string) *auditConfig {
	return &auditConfig{
		stateDir:   stateDir,
		brokers:    fs.String("audit-kafka-brokers", "", "Kafka bootstrap brokers for the audit stream, host:port, comma-separated; empty: events go to STATE_DIR/audit.jsonl only"),
		topic:      fs.String("audit-kafka-topic", "gatehouse.audit", "the audit topic"),
		spoolDir:   fs.String("audit-spool-dir", "", "the durable audit spool, from which events are shipped to Kafka (default STATE_DIR/audit-spool)"),
		spoolMax:   fs.Int64("audit-spool-max-bytes", spool.DefaultConfig().MaxBytes, "the spool's cap: past it the node refuses requests (or, with --audit-fail-open, serves them unaudited)"),
		tlsOn:      fs.Bool("audit-kafka-tls", false, "connect to Kafka over TLS"),
		caFile:     fs.String("audit-kafka-ca-file", "", "with --audit-kafka-tls: the CA certificates that verify the brokers (default: the system's)"),
		saslMech:   fs.String("audit-kafka-sasl", "", "SASL mechanism: plain, scram-sha-256 or scram-sha-512 (empty: none)"),
		user:       fs.String("audit-kafka-username", "", "SASL user name"),
		passwd:     fs.String("audit-kafka-password-file", "", "a file holding the SASL password"),
		autoCreate: fs.Bool("audit-kafka-create-topic", false, "let the first write create the topic (brokers that allow it)"),
		index:      fs.Bool("audit-index", true, "with --audit-kafka-brokers: index the topic into the store for search (every node joins one consumer group)"),
		retention:  fs.Duration("audit-retention", 90*24*time.Hour, "how long the store keeps indexed audit events (the topic's own retention is Kafka's)"),
	}
}

// auditPipeline is the node's sink: a local file, or the pipeline to
// Kafka.
type auditPipeline struct {
	sink  audit.Sink
	file  *audit.FileSink
	kafka *pipeline.Pipeline
	// The indexer and the retention of what it indexed; stop ends them.
	indexer   *auditindex.Indexer
	st        *store.Store
	retention time.Duration
	log       *slog.Logger
	stop      context.CancelFunc
	done      chan struct{}
}

func (c *auditConfig) open(node string, st *store.Store, log *slog.Logger) (*auditPipeline, error) {
	if *c.brokers == "" {
		log.Warn("audit: no Kafka brokers (--audit-kafka-brokers): events go to a local file only")
		f, err := audit.OpenFile(filepath.Join(*c.stateDir, "audit.jsonl"))
		if err != nil {
			return nil, err
		}
		return &auditPipeline{sink: f, file: f}, nil
	}
	scfg := spool.DefaultConfig()
	scfg.Dir, scfg.MaxBytes, scfg.Logger = *c.spoolDir, *c.spoolMax, log
	if scfg.Dir == "" {
		scfg.Dir = filepath.Join(*c.stateDir, "audit-spool")
	}
	if scfg.MaxBytes < scfg.SegmentSize {
		scfg.SegmentSize = max(4096, scfg.MaxBytes/4)
	}
	kcfg := ship.DefaultConfig()
	kcfg.Topic, kcfg.Node, kcfg.AllowAutoTopicCreation = *c.topic, node, *c.autoCreate
	for _, b := range strings.Split(*c.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			kcfg.Brokers = append(kcfg.Brokers, b)
		}
	}
	var err error
	if kcfg.TLS, err = c.tls(); err != nil {
		return nil, err
	}
	if kcfg.SASL, err = c.sasl(); err != nil {
		return nil, err
	}
	p, err := pipeline.Open(node, scfg, kcfg, log)
	if err != nil {
		return nil, err
	}
	ap := &auditPipeline{sink: p.Sink, kafka: p, st: st, retention: *c.retention, log: log}
	if *c.index {
		icfg := auditindex.DefaultConfig()
		icfg.Store, icfg.Brokers, icfg.Topic, icfg.TLS, icfg.SASL, icfg.Logger = st, kcfg.Brokers, kcfg.Topic, kcfg.TLS, kcfg.SASL, log
		if ap.indexer, err = auditindex.New(icfg); err != nil {
			p.Close(0)
			return nil, err
		}
	}
	return ap, nil
}

func (c *auditConfig) tls() (*tls.Config, error) {
	if !*c.tlsOn {
		if *c.caFile != "" {
			return nil, errors.New("--audit-kafka-ca-file needs --audit-kafka-tls")
		}
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *c.caFile != "" {
		b, err := os.ReadFile(*c.caFile)
		if err != nil {
			return nil, fmt.Errorf("--audit-kafka-ca-file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--audit-kafka-ca-file %s: no certificate", *c.caFile)
		}
	}
	return cfg, nil
}

func (c *auditConfig) sasl() (sasl.Mechanism, error) {
	if *c.saslMech == "" {
		return nil, nil
	}
	if *c.user == "" || *c.passwd == "" {
		return nil, errors.New("--audit-kafka-sasl needs --audit-kafka-username and --audit-kafka-password-file")
	}
	b, err := os.ReadFile(*c.passwd)
	if err != nil {
		return nil, fmt.Errorf("--audit-kafka-password-file: %w", err)
	}
	pw := strings.TrimSpace(string(b))
	switch *c.saslMech {
	case "plain":
		return plain.Mechanism{Username: *c.user, Password: pw}, nil
	case "scram-sha-256":
		return scram.Mechanism(scram.SHA256, *c.user, pw)
	case "scram-sha-512":
		return scram.Mechanism(scram.SHA512, *c.user, pw)
	}
	return nil, fmt.Errorf("--audit-kafka-sasl %q: plain, scram-sha-256 or scram-sha-512", *c.saslMech)
}

func (p *auditPipeline) collectors() []prometheus.Collector {
	if p.kafka == nil {
		return nil
	}
	cs := p.kafka.Collectors()
	if p.indexer != nil {
		cs = append(cs, p.indexer.Collectors()...)
	}
	return cs
}

// start ships, and indexes, until Close.
func (p *auditPipeline) start() {
	if p.kafka == nil {
		return
	}
	p.kafka.Start()
	if p.indexer == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		retained := make(chan struct{})
		go func() {
			defer close(retained)
			// Retention: every node deletes what is older than it (the
			// deletes are idempotent).
			t := time.NewTicker(time.Hour)
			defer t.Stop()
			for {
				if n, err := p.st.DeleteAuditBefore(ctx, time.Now().Add(-p.retention), 1000); err != nil && ctx.Err() == nil {
					p.log.Warn("audit: retention of indexed events", "err", err)
				} else if n > 0 {
					p.log.Info("audit: indexed events past retention deleted", "count", n)
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
		if err := p.indexer.Run(ctx); err != nil {
			p.log.Error("audit: the indexer stopped", "err", err)
		}
		<-retained
	}()
}

// setKey gives the chain the node's certificate to sign checkpoints with.
func (p *auditPipeline) setKey(fn func() *tls.Certificate) {
	if p.kafka != nil {
		p.kafka.SetKey(fn)
	}
}

// Close closes the file, or signs the chain's end, ships what the spool
// holds if Kafka takes it within a few seconds (else the next start ships
// it), and closes the spool.
func (p *auditPipeline) Close() error {
	if p.file != nil {
		return p.file.Close()
	}
	if p.stop != nil {
		p.stop()
		<-p.done
		p.indexer.Close()
	}
	return p.kafka.Close(5 * time.Second)
}
