package audit_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
)

// The spooled sink gives every event a UUIDv7 and the schema version,
// writes it to the spool, and says it is not ready once the spool is
// nearly full (the gateway then fails closed).
func TestSpoolSink(t *testing.T) {
	cfg := spool.DefaultConfig()
	cfg.Dir, cfg.SegmentSize, cfg.MaxBytes = t.TempDir(), 64<<10, 2<<20
	sp, err := spool.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	sink := &audit.SpoolSink{Spool: sp}
	if err := sink.Ready(); err != nil {
		t.Fatal(err)
	}
	// One struct written twice (a stream's open and close events) is two
	// events, each with its own id; the caller's struct is not changed.
	ev := &audit.Event{Kind: audit.KindKube, Cluster: "c", Verb: "get", Phase: audit.PhaseOpen}
	if err := sink.Write(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	ev.Phase = audit.PhaseClose
	if err := sink.Write(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.ID != "" || ev.Schema != 0 || ev.Chain != "" {
		t.Fatalf("the caller's event was changed: %+v", ev)
	}
	recs, err := sp.Read(0, 10, 1<<20)
	if err != nil || len(recs) != 2 {
		t.Fatal(recs, err)
	}
	var open, closed audit.Event
	if err := json.Unmarshal(recs[0].Payload, &open); err != nil || json.Unmarshal(recs[1].Payload, &closed) != nil {
		t.Fatal(err)
	}
	for _, e := range []audit.Event{open, closed} {
		id, err := uuid.Parse(e.ID)
		if err != nil || id.Version() != 7 || e.Schema != audit.SchemaVersion {
			t.Fatalf("id %q (%v), schema %d", e.ID, err, e.Schema)
		}
	}
	if open.ID == closed.ID || open.Phase != audit.PhaseOpen || closed.Phase != audit.PhaseClose || closed.ChainSeq != open.ChainSeq+1 {
		t.Fatalf("open %+v\nclose %+v", open, closed)
	}
	// Fill it: Ready says so before Write fails.
	big := &audit.Event{Kind: audit.KindKube, Error: string(make([]byte, 8<<10))}
	for sink.Ready() == nil {
		big.ID = ""
		if err := sink.Write(context.Background(), big); err != nil {
			t.Fatalf("a write failed while the sink said it was ready: %v", err)
		}
	}
	if err := sink.Ready(); !errors.Is(err, spool.ErrFull) {
		t.Fatalf("not ready: %v", err)
	}
	var full error
	for full == nil {
		big.ID = ""
		full = sink.Write(context.Background(), big)
	}
	if !errors.Is(full, spool.ErrFull) {
		t.Fatalf("a write to a full spool: %v", full)
	}
}

// A client's overlong path or user agent is cut, so that no event grows
// past what Kafka takes.
func TestSpoolSinkBoundsFields(t *testing.T) {
	cfg := spool.DefaultConfig()
	cfg.Dir = t.TempDir()
	sp, err := spool.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	long := strings.Repeat("é", 300_000)
	ev := &audit.Event{Kind: audit.KindKube, Path: "/" + long, UserAgent: long, Groups: make([]string, 1000)}
	if err := (&audit.SpoolSink{Spool: sp}).Write(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	recs, _ := sp.Read(0, 1, 1<<20)
	if n := len(recs[0].Payload); n > 64<<10 {
		t.Fatalf("an event of %d bytes", n)
	}
	var got audit.Event
	if err := json.Unmarshal(recs[0].Payload, &got); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got.Path, "...(cut)") || !utf8.ValidString(got.Path) || len(got.Groups) != 256 {
		t.Fatalf("path %d bytes, valid %v, %d groups", len(got.Path), utf8.ValidString(got.Path), len(got.Groups))
	}
	if len(ev.Path) != 1+len(long) || len(ev.Groups) != 1000 {
		t.Fatal("the caller's event was changed")
	}
}
