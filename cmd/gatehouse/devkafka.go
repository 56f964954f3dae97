//go:build devkafka

package main

// A build with the devkafka tag (make run) gives gatehouse dev an
// embedded Kafka broker (franz-go's kfake) for its audit pipeline. The
// release binary is built without it and links no broker
// (internal/archtest).

import (
	"github.com/gatehouse-dev/gatehouse/internal/devsetup"
	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
)

func init() {
	devsetup.EmbeddedKafka = func(topic string) ([]string, func(), error) {
		k, err := kafkatest.Start(kafkatest.Config{Brokers: 1, Partitions: 3, Topics: []string{topic}})
		if err != nil {
			return nil, nil, err
		}
		return k.Brokers, func() { k.Close() }, nil
	}
}
