package kafkatest

import (
	"context"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Consume reads the first partitions of topic from their start, each in
// a goroutine of its own, and calls fn with each message (concurrently,
// from several partitions at once). It returns, with every reader closed,
// when ctx ends or fn says it has had enough.
func Consume(ctx context.Context, brokers []string, topic string, partitions int, fn func(partition int, m kafka.Message) (enough bool)) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for p := range partitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				if fn(p, m) {
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
}
