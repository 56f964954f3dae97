// Package kafkatest runs an in-process Kafka cluster (franz-go's kfake) that
// clients reach over the real Kafka wire protocol on loopback, for tests.
// It is apart from internal/testenv so that nothing the release binary
// links (gatehouse dev uses testenv) pulls kfake in.
package kafkatest

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Cluster is an in-process Kafka cluster (franz-go's kfake) that clients reach
// over the real Kafka wire protocol on loopback.
type Cluster struct {
	// Brokers are the bootstrap addresses, host:port.
	Brokers []string

	cluster   *kfake.Cluster
	closeOnce sync.Once
	down      atomic.Bool
	downOnce  sync.Once
}

// SetDown makes the cluster refuse every request by closing the client's
// connection (down), or serve again: Kafka unreachable, as clients see it,
// with what it holds kept.
func (k *Cluster) SetDown(down bool) {
	k.downOnce.Do(func() {
		k.cluster.Control(func(kmsg.Request) (kmsg.Response, error, bool) {
			k.cluster.KeepControl()
			if k.down.Load() {
				return nil, errors.New("kafkatest: down"), true
			}
			return nil, nil, false
		})
	})
	k.down.Store(down)
}

// Config configures Start.
type Config struct {
	// Brokers is the number of brokers; one is enough unless a test is about
	// leadership.
	Brokers int
	// Topics are created at start with Partitions partitions each.
	Topics     []string
	Partitions int32
}

// DefaultConfig is one broker, no seeded topics, three partitions for
// topics created later.
func DefaultConfig() Config { return Config{Brokers: 1, Partitions: 3} }

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Brokers < 1 || c.Brokers > 9 {
		return fmt.Errorf("kafkatest: Brokers %d out of range 1..9", c.Brokers)
	}
	if c.Partitions < 1 {
		return errors.New("kafkatest: Partitions must be at least 1")
	}
	return nil
}

// Start starts the cluster on free loopback ports.
func Start(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(cfg.Brokers),
		kfake.DefaultNumPartitions(int(cfg.Partitions)),
		kfake.AllowAutoTopicCreation(),
	}
	if len(cfg.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(cfg.Partitions, cfg.Topics...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafkatest: kfake: %w", err)
	}
	return &Cluster{Brokers: c.ListenAddrs(), cluster: c}, nil
}

// Close stops the cluster. It is idempotent.
func (k *Cluster) Close() error {
	k.closeOnce.Do(k.cluster.Close)
	return nil
}

// StartT starts a cluster for one test and stops it at cleanup.
func StartT(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	k, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}
