// Package pipeline assembles a node's audit pipeline (issue 12): the
// durable spool, the spooled sink that chains and signs the node's events,
// and the shipper that sends them to Kafka, with the loop that signs the
// chain every CheckpointInterval. `gatehouse node` and `gatehouse dev`
// both run one.
package pipeline

import (
	"context"
	"crypto/tls"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/ship"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
)

// CheckpointInterval is how often a node signs its audit chain when it
// has written events since the last checkpoint: the longest tail of
// events a deletion could take unseen.
const CheckpointInterval = 10 * time.Second

// Pipeline is a node's spool, spooled sink and shipper.
type Pipeline struct {
	Sink  *audit.SpoolSink
	spool *spool.Spool
	ship  *ship.Shipper
	log   *slog.Logger

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// Open opens the spool (scfg) and makes the shipper (kcfg, whose Spool it
// sets); Start runs them.
func Open(node string, scfg spool.Config, kcfg ship.Config, log *slog.Logger) (*Pipeline, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sp, err := spool.Open(scfg)
	if err != nil {
		return nil, err
	}
	kcfg.Spool, kcfg.Node = sp, node
	if kcfg.Logger == nil {
		kcfg.Logger = log
	}
	sh, err := ship.New(kcfg)
	if err != nil {
		sp.Close()
		return nil, err
	}
	// The chain's head lives beside the spool: a restart links its new
	// chain to the last one.
	sink := &audit.SpoolSink{Spool: sp, Node: node, HeadFile: filepath.Join(scfg.Dir, "chain.head")}
	return &Pipeline{Sink: sink, spool: sp, ship: sh, log: log}, nil
}

// Collectors returns the shipper's and the spool's metrics.
func (p *Pipeline) Collectors() []prometheus.Collector { return p.ship.Collectors() }

// SetKey gives the chain the node's certificate to sign checkpoints with.
func (p *Pipeline) SetKey(fn func() *tls.Certificate) { p.Sink.SetKey(fn) }

// Start ships, and signs the chain every CheckpointInterval, until Close.
func (p *Pipeline) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(CheckpointInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					p.Checkpoint()
				}
			}
		}()
		if err := p.ship.Run(ctx); err != nil {
			p.log.Error("audit: the shipper stopped", "err", err)
		}
		wg.Wait()
	}()
}

// Checkpoint signs the chain if events came since the last checkpoint.
func (p *Pipeline) Checkpoint() {
	if err := p.Sink.Checkpoint(); err != nil {
		p.log.Error("audit: checkpoint not written", "err", err)
	}
}

// Close signs the chain's end, gives the shipper up to drain to send
// what the spool holds, then stops it and closes the spool. It is
// idempotent.
func (p *Pipeline) Close(drain time.Duration) error {
	var err error
	p.closeOnce.Do(func() {
		p.Checkpoint()
		if p.cancel != nil {
			for end := time.Now().Add(drain); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
				if st := p.spool.Stats(); st.Acked == st.Last {
					break
				}
			}
			p.cancel()
			<-p.done
		}
		p.ship.Close()
		err = p.spool.Close()
	})
	return err
}
