package testenv

import (
	"errors"
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Kafka is an in-process Kafka cluster (franz-go's kfake) that clients reach
// over the real Kafka wire protocol on loopback.
type Kafka struct {
	// Brokers are the bootstrap addresses, host:port.
	Brokers []string

	cluster   *kfake.Cluster
	closeOnce sync.Once
}

// KafkaConfig configures StartKafka.
type KafkaConfig struct {
	// Brokers is the number of brokers; one is enough unless a test is about
	// leadership.
	Brokers int
	// Topics are created at start with Partitions partitions each.
	Topics     []string
	Partitions int32
}

// DefaultKafkaConfig is one broker, no seeded topics, three partitions for
// topics created later.
func DefaultKafkaConfig() KafkaConfig { return KafkaConfig{Brokers: 1, Partitions: 3} }

// Validate checks the configuration.
func (c KafkaConfig) Validate() error {
	if c.Brokers < 1 || c.Brokers > 9 {
		return fmt.Errorf("testenv: Kafka Brokers %d out of range 1..9", c.Brokers)
	}
	if c.Partitions < 1 {
		return errors.New("testenv: Kafka Partitions must be at least 1")
	}
	return nil
}

// StartKafka starts the cluster on free loopback ports.
func StartKafka(cfg KafkaConfig) (*Kafka, error) {
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
		return nil, fmt.Errorf("testenv: kfake: %w", err)
	}
	return &Kafka{Brokers: c.ListenAddrs(), cluster: c}, nil
}

// Close stops the cluster. It is idempotent.
func (k *Kafka) Close() error {
	k.closeOnce.Do(k.cluster.Close)
	return nil
}
