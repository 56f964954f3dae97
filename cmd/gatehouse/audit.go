package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/verify"
)

const auditUsage = `Usage:
  gatehouse audit search [--since 24h | --from T --to T] [--user ID] [--cluster NAME] [--verb V] ... [-o table|json]
      the organization's audit events, newest first (what your roles let you see)
  gatehouse audit verify --ca-file CA (--file EXPORT.jsonl | --kafka-brokers HOST:PORT --topic TOPIC)
      checks each node's hash chain and signed checkpoints: missing, altered and
      reordered events, forged checkpoints; exits 1 if it finds any`

// runAudit runs `gatehouse audit verify`.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "search" {
		return runAuditSearch(ctx, args[1:], stdout, stderr)
	}
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

// runAuditSearch runs `gatehouse audit search`: it pages through the
// search until --limit events.
func runAuditSearch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := flag.NewFlagSet("gatehouse audit search", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf.register(fs, "table")
	since := fs.Duration("since", 0, "events of the last DURATION (e.g. 24h); else --from and --to")
	from := fs.String("from", "", "events at or after this time (RFC 3339)")
	to := fs.String("to", "", "events before this time (RFC 3339)")
	limit := fs.Int("limit", 100, "the most events to show")
	filters := map[string]*string{}
	for _, f := range []string{"user", "group", "cluster", "namespace", "verb", "resource", "name", "status", "node", "kind"} {
		filters[f] = fs.String(f, "", "only events whose "+f+" is this")
	}
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *limit < 1 {
		return fmt.Errorf("--limit %d: at least 1", *limit)
	}
	q := url.Values{}
	if *since > 0 {
		q.Set("from", time.Now().Add(-*since).UTC().Format(time.RFC3339))
	}
	if *from != "" {
		q.Set("from", *from)
	}
	if *to != "" {
		q.Set("to", *to)
	}
	for f, v := range filters {
		if *v != "" {
			q.Set(f, *v)
		}
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	var events []json.RawMessage
	for len(events) < *limit {
		q.Set("limit", strconv.Itoa(min(*limit-len(events), 1000)))
		page, err := c.SearchAudit(ctx, q)
		if err != nil {
			return err
		}
		events = append(events, page.Items...)
		if page.Continue == "" {
			break
		}
		q.Set("continue", page.Continue)
	}
	if cf.output == "json" {
		for _, e := range events {
			fmt.Fprintf(stdout, "%s\n", e)
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tUSER\tCLUSTER\tNAMESPACE\tVERB\tRESOURCE\tNAME\tSTATUS\tACTION")
	for _, raw := range events {
		var e audit.Event
		if json.Unmarshal(raw, &e) != nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", e.Time.UTC().Format(time.RFC3339), dash(e.User), dash(e.Cluster), dash(e.Namespace),
			dash(e.Verb), dash(e.Resource), dash(e.Name), e.Status, dash(e.Action))
	}
	return tw.Flush()
}
