package kafkatest_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
)

func TestKafkaProduceConsumeInOrder(t *testing.T) {
	const (
		topic      = "audit"
		partitions = 3
		total      = 1000
		keys       = 10
	)
	kf := kafkatest.StartT(t, kafkatest.Config{Brokers: 1, Topics: []string{topic}, Partitions: partitions})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// An owned transport, closed below: the default one is process-wide and
	// keeps connections (and goroutines) forever.
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	w := &kafka.Writer{
		Transport:    transport,
		Addr:         kafka.TCP(kf.Brokers...),
		Topic:        topic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    100,
		BatchTimeout: 10 * time.Millisecond,
	}
	msgs := make([]kafka.Message, total)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("key-" + strconv.Itoa(i%keys)), Value: []byte(strconv.Itoa(i))}
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	seen := make(map[int]bool, total)
	for p := range partitions {
		conn, err := kafka.DialLeader(ctx, "tcp", kf.Brokers[0], topic, p)
		if err != nil {
			t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: kf.Brokers, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		lastByKey := map[string]int{}
		wantOffset := int64(0)
		for wantOffset < last {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("partition %d: %v", p, err)
			}
			if m.Offset != wantOffset {
				t.Fatalf("partition %d: offset %d, want %d", p, m.Offset, wantOffset)
			}
			wantOffset++
			v, err := strconv.Atoi(string(m.Value))
			if err != nil {
				t.Fatal(err)
			}
			if prev, ok := lastByKey[string(m.Key)]; ok && v <= prev {
				t.Fatalf("partition %d: key %s: %d after %d", p, m.Key, v, prev)
			}
			lastByKey[string(m.Key)] = v
			if seen[v] {
				t.Fatalf("message %d delivered twice", v)
			}
			seen[v] = true
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != total {
		t.Fatalf("consumed %d distinct messages, want %d", len(seen), total)
	}
	for i := range total {
		if !seen[i] {
			t.Fatalf("message %d lost", i)
		}
	}
}
