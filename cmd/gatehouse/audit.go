package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/record"
	"github.com/gatehouse-dev/gatehouse/audit/verify"
)

const auditUsage = `Usage:
  gatehouse audit search [--since 24h | --from T --to T] [--user ID] [--cluster NAME] [--verb V] ... [-o table|json]
      the organization's audit events, newest first (what your roles let you see)
  gatehouse audit tail [-f] [-n 10] [--user ID] [--cluster NAME] ... [-o table|json]
      the latest events, oldest first; -f: then new events as they are indexed, until interrupted
  gatehouse audit play ID [--speed 2] [--idle-limit 2s] [--raw] [--cast]
      replays a recorded exec or attach session (its id: the recording field of the
      session's events); --cast writes the asciicast v2 file instead, for asciinema
  gatehouse audit verify --ca-file CA (--file EXPORT.jsonl | --kafka-brokers HOST:PORT --topic TOPIC)
      checks each node's hash chain and signed checkpoints: missing, altered and
      reordered events, forged checkpoints; exits 1 if it finds any`

// runAudit runs `gatehouse audit verify`.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "search":
			return runAuditSearch(ctx, args[1:], stdout, stderr)
		case "tail":
			return runAuditTail(ctx, args[1:], stdout, stderr)
		case "play":
			return runAuditPlay(ctx, args[1:], stdout, stderr)
		}
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
		fmt.Fprintf(stdout, "node %s, chain %s: events %d-%d (%d), %d checkpoints verified\n", cell(c.Node), cell(c.Chain), c.First, c.Last, c.Events, c.Checkpoints)
	}
	for _, w := range r.Warnings {
		fmt.Fprintln(stdout, "warning:", cell(w.String()))
	}
	for _, p := range r.Problems {
		fmt.Fprintln(stdout, cell(p.String()))
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
	filters := filterFlags(fs)
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
	filters(q)
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
	return printEvents(stdout, cf.output, events, true)
}

// filterFlags registers the search's filters and returns what sets them
// on a query.
func filterFlags(fs *flag.FlagSet) func(url.Values) {
	filters := map[string]*string{}
	for _, f := range []string{"user", "group", "cluster", "namespace", "verb", "resource", "name", "status", "node", "kind"} {
		filters[f] = fs.String(f, "", "only events whose "+f+" is this")
	}
	return func(q url.Values) {
		for f, v := range filters {
			if *v != "" {
				q.Set(f, *v)
			}
		}
	}
}

// printEvents writes events as JSON lines (-o json) or as a table, with
// its header if header is set.
func printEvents(w io.Writer, output string, events []json.RawMessage, header bool) error {
	if output == "json" {
		for _, e := range events {
			fmt.Fprintf(w, "%s\n", e)
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header {
		fmt.Fprintln(tw, "TIME\tUSER\tCLUSTER\tNAMESPACE\tVERB\tRESOURCE\tNAME\tSTATUS\tACTION\tRECORDING")
	}
	for _, raw := range events {
		var e audit.Event
		if json.Unmarshal(raw, &e) != nil {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339), dash(e.User), dash(e.Cluster), dash(e.Namespace),
			dash(e.Verb), dash(e.Resource), dash(e.Name), e.Status, dash(e.Action), dash(e.Recording))
	}
	return tw.Flush()
}

// tailLookback is how far back each poll of audit tail -f looks again:
// events of several nodes reach the index out of time order (each node's
// partition is indexed on its own), and one indexed late must not be
// missed. Seen events are not shown twice.
const tailLookback = 30 * time.Second

// runAuditTail runs `gatehouse audit tail`: the latest events, oldest
// first, and with -f new ones as they are indexed.
func runAuditTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := flag.NewFlagSet("gatehouse audit tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf.register(fs, "table")
	follow := fs.Bool("f", false, "follow: show new events as they come, until interrupted")
	n := fs.Int("n", 10, "how many of the latest events to show first")
	interval := fs.Duration("interval", time.Second, "with -f: how often to ask for new events")
	filters := filterFlags(fs)
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *n < 0 || *n > 1000 || *interval < 100*time.Millisecond {
		return errors.New("-n: from 0 to 1000; --interval: at least 100ms")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	q := url.Values{}
	filters(q)
	type seenEvent struct {
		ID   string    `json:"id"`
		Time time.Time `json:"time"`
	}
	seen := map[string]time.Time{}
	var newest time.Time
	// fresh returns the events not seen before, oldest first, and marks
	// them seen.
	fresh := func(raws []json.RawMessage) []json.RawMessage {
		var out []json.RawMessage
		for i := len(raws) - 1; i >= 0; i-- {
			var e seenEvent
			if json.Unmarshal(raws[i], &e) != nil || e.ID == "" {
				continue
			}
			if _, ok := seen[e.ID]; ok {
				continue
			}
			seen[e.ID] = e.Time
			if e.Time.After(newest) {
				newest = e.Time
			}
			out = append(out, raws[i])
		}
		return out
	}
	// since returns the events from a moment on (at most 10,000).
	since := func(from time.Time) ([]json.RawMessage, error) {
		poll := maps.Clone(q)
		poll.Set("from", from.UTC().Format(time.RFC3339Nano))
		poll.Set("limit", "1000")
		var got []json.RawMessage
		for {
			page, err := c.SearchAudit(ctx, poll)
			if err != nil {
				return got, err
			}
			got = append(got, page.Items...)
			if page.Continue == "" || len(got) >= 10000 {
				return got, nil
			}
			poll.Set("continue", page.Continue)
		}
	}
	// One look at the last tailLookback: its newest n are shown, the rest
	// marked seen; what comes after it is news. (Two looks, one for the
	// latest and one to mark the rest, would lose what came between.)
	window, err := since(time.Now().Add(-tailLookback))
	if err != nil {
		return err
	}
	latest := window[:min(*n, len(window))]
	if len(window) < *n {
		// Fewer in the window than asked: the latest n, older ones too.
		first := maps.Clone(q)
		first.Set("limit", strconv.Itoa(*n))
		page, err := c.SearchAudit(ctx, first)
		if err != nil {
			return err
		}
		latest = page.Items
	}
	if err := printEvents(stdout, cf.output, fresh(latest), true); err != nil || !*follow {
		return err
	}
	fresh(window)
	if newest.IsZero() {
		newest = time.Now()
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		from := newest.Add(-tailLookback)
		got, err := since(from)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintln(stderr, "gatehouse audit tail:", err, "(trying again)")
		}
		if news := fresh(got); len(news) > 0 {
			if err := printEvents(stdout, cf.output, news, false); err != nil {
				return err
			}
		}
		for id, t := range seen {
			if t.Before(from.Add(-time.Minute)) {
				delete(seen, id)
			}
		}
	}
}

// runAuditPlay runs `gatehouse audit play ID`.
func runAuditPlay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	pos, rest := leadingArgs(args)
	var cf clientFlags
	fs := flag.NewFlagSet("gatehouse audit play", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf.register(fs, "table")
	speed := fs.Float64("speed", 1, "play faster (2) or slower (0.5)")
	idle := fs.Duration("idle-limit", 2*time.Second, "the longest pause played (0: as recorded)")
	cast := fs.Bool("cast", false, "write the recording (asciicast v2) instead of playing it")
	raw := fs.Bool("raw", false, "play the output as recorded, with the escape sequences that act beyond the screen (clipboard, reports, links, mouse modes), which are left out by default")
	if ok, err := parseFlags(fs, rest, stderr); !ok {
		return err
	}
	pos = append(pos, fs.Args()...)
	if len(pos) != 1 {
		fmt.Fprintln(stderr, auditUsage)
		return errUsage
	}
	if *speed <= 0 || *idle < 0 {
		return errors.New("--speed must be positive and --idle-limit not negative")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	b, complete, err := c.Recording(ctx, pos[0])
	if err != nil {
		return err
	}
	if !complete {
		fmt.Fprintln(stderr, "gatehouse: this recording is not complete: the session is still running, or not all of it is indexed yet")
	}
	if *cast {
		_, err := stdout.Write(b)
		return err
	}
	hdr, evs, err := record.Parse(bytes.NewReader(b))
	if err != nil {
		return err
	}
	// The title holds the session's command, which its person wrote.
	fmt.Fprintf(stderr, "gatehouse: %s, %s, %dx%d\n", cell(hdr.Title), time.Unix(hdr.Timestamp, 0).UTC().Format(time.RFC3339), hdr.Width, hdr.Height)
	return record.Play(ctx, stdout, evs, record.PlayOptions{Speed: *speed, IdleLimit: *idle, Markers: stderr, Raw: *raw})
}
