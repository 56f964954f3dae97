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
	ev := &audit.Event{Kind: audit.KindKube, Cluster: "c", Verb: "get"}
	if err := sink.Write(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	id, err := uuid.Parse(ev.ID)
	if err != nil || id.Version() != 7 || ev.Schema != audit.SchemaVersion {
		t.Fatalf("id %q (%v), schema %d", ev.ID, err, ev.Schema)
	}
	recs, err := sp.Read(0, 10, 1<<20)
	if err != nil || len(recs) != 1 {
		t.Fatal(recs, err)
	}
	var back audit.Event
	if err := json.Unmarshal(recs[0].Payload, &back); err != nil || back.ID != ev.ID {
		t.Fatalf("read back %+v %v", back, err)
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
	if !strings.HasSuffix(ev.Path, "...(cut)") || !utf8.ValidString(ev.Path) || len(ev.Groups) != 256 {
		t.Fatalf("path %d bytes, valid %v, %d groups", len(ev.Path), utf8.ValidString(ev.Path), len(ev.Groups))
	}
}
