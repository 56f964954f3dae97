package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/gatehouse-dev/gatehouse/audit/verify"
)

const auditUsage = `Usage:
  gatehouse audit verify --ca-file CA (--file EXPORT.jsonl | --kafka-brokers HOST:PORT --topic TOPIC)
      checks each node's hash chain and signed checkpoints: missing, altered and
      reordered events, forged checkpoints; exits 1 if it finds any`

// runAudit runs `gatehouse audit verify`.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprintln(stderr, auditUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("gatehouse audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	caFile := fs.String("ca-file", "", "the gateway's trust bundle (its ca.crt): checkpoints are verified against it")
	file := fs.String("file", "", "an export: one event per line (JSON), in the order written")
	brokers := fs.String("kafka-brokers", "", "read the topic instead: Kafka bootstrap brokers, comma-separated")
	topic := fs.String("topic", "gatehouse.audit", "with --kafka-brokers: the audit topic")
	timeout := fs.Duration("timeout", 5*time.Minute, "with --kafka-brokers: give up reading after this long")
	if ok, err := parseFlags(fs, args[1:], stderr); !ok {
		return err
	}
	if *caFile == "" || (*file == "") == (*brokers == "") {
		fmt.Fprintln(stderr, auditUsage)
		return errUsage
	}
	b, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b) {
		return fmt.Errorf("--ca-file %s: no certificate", *caFile)
	}
	check := verify.New(roots)
	if *file != "" {
		err = verifyFile(*file, check)
	} else {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		err = verifyTopic(ctx, strings.Split(*brokers, ","), *topic, check, stderr)
	}
	if err != nil {
		return err
	}
	r := check.Report()
	fmt.Fprintf(stdout, "%d events read (%d delivered more than once, %d without a chain)\n", r.Events, r.Duplicates, r.Unchained)
	for _, c := range r.Chains {
		fmt.Fprintf(stdout, "node %s, chain %s: events %d-%d (%d), %d checkpoints verified\n", c.Node, c.Chain, c.First, c.Last, c.Events, c.Checkpoints)
	}
	for _, w := range r.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	for _, p := range r.Problems {
		fmt.Fprintln(stdout, p)
	}
	if !r.OK() {
		return fmt.Errorf("%d problems found", len(r.Problems))
	}
	fmt.Fprintln(stdout, "every chain is whole and in order; every checkpoint verifies")
	return nil
}

func verifyFile(path string, check *verify.Stream) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		if line := sc.Bytes(); len(strings.TrimSpace(string(line))) > 0 {
			check.Add(path, append([]byte(nil), line...))
		}
	}
	return sc.Err()
}

// verifyTopic reads every partition of topic from its start to its end
// now, each a stream of its own.
func verifyTopic(ctx context.Context, brokers []string, topic string, check *verify.Stream, stderr io.Writer) error {
	conn, err := kafka.DialContext(ctx, "tcp", strings.TrimSpace(brokers[0]))
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return fmt.Errorf("kafka: partitions of %s: %w", topic, err)
	}
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", strings.TrimSpace(brokers[0]), topic, p.ID)
		if err != nil {
			return fmt.Errorf("kafka: partition %d: %w", p.ID, err)
		}
		first, last, err := lc.ReadOffsets()
		lc.Close()
		if err != nil {
			return fmt.Errorf("kafka: partition %d: %w", p.ID, err)
		}
		if last <= first {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		r.SetOffset(first)
		name := "partition " + strconv.Itoa(p.ID)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				if errors.Is(err, context.DeadlineExceeded) {
					return fmt.Errorf("kafka: %s not read to its end in time", name)
				}
				return fmt.Errorf("kafka: %s: %w", name, err)
			}
			check.Add(name, m.Value)
			if m.Offset >= last-1 {
				break
			}
		}
		r.Close()
		fmt.Fprintf(stderr, "%s: %d events\n", name, last-first)
	}
	return nil
}
