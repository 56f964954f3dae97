// Package audit owns the audit stream: one event per API request (two for
// long-lived streams: when they open and when they close) and one per system
// change, written through a Sink. Sinks: a JSON-lines file here; Kafka for
// consumers comes with the gateway cluster.
package audit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Phase distinguishes the events of one request.
type Phase string

// Phases. A plain request has one Complete event; watch, exec, attach,
// port-forward and proxied upgrades have Open and then Close.
const (
	PhaseComplete Phase = "complete"
	PhaseOpen     Phase = "open"
	PhaseClose    Phase = "close"
)

// Kinds of event.
const (
	// KindKube is a Kubernetes API request through the gateway.
	KindKube = "kube"
	// KindSystem is a change to Gatehouse itself (through its API), a
	// login, a credential issued or a revocation.
	KindSystem = "system"
	// KindSession carries a piece of a recorded exec or attach session
	// (Event.Chunk); its Action is ActionSessionData.
	KindSession = "session"
)

// ActionSessionData is the action of a KindSession event.
const ActionSessionData = "session.data"

// Event is one audited Kubernetes API request through the gateway, or one
// system event (Kind, Action, Object, Status and Error tell its outcome).
type Event struct {
	// Schema is the version of the event's shape (SchemaVersion when a
	// spooled sink writes it).
	Schema int `json:"schema,omitempty"`
	// ID is the event's unique id, sortable by time (a UUIDv7). Delivery
	// to Kafka is at least once: consumers deduplicate by it.
	ID string `json:"id,omitempty"`
	// Kind is KindKube or KindSystem (KindKube when empty: events written
	// before schema version 1).
	Kind string `json:"kind,omitempty"`
	// Action and Object name a system event's change: "cluster.create",
	// "cluster/prod-eu".
	Action      string        `json:"action,omitempty"`
	Object      string        `json:"object,omitempty"`
	Time        time.Time     `json:"time"`
	Phase       Phase         `json:"phase"`
	RequestID   string        `json:"requestId"`
	Node        string        `json:"node"`
	User        string        `json:"user"`
	Groups      []string      `json:"groups,omitempty"`
	Cluster     string        `json:"cluster,omitempty"`
	Namespace   string        `json:"namespace,omitempty"`
	Verb        string        `json:"verb"`
	APIGroup    string        `json:"apiGroup,omitempty"`
	Resource    string        `json:"resource,omitempty"`
	Subresource string        `json:"subresource,omitempty"`
	Name        string        `json:"name,omitempty"`
	Path        string        `json:"path"`
	Status      int           `json:"status,omitempty"`
	Duration    time.Duration `json:"durationNs,omitempty"`
	BytesIn     int64         `json:"bytesIn"`
	BytesOut    int64         `json:"bytesOut"`
	ClientAddr  string        `json:"clientAddr"`
	UserAgent   string        `json:"userAgent,omitempty"`
	// Error says why the gateway refused or failed a request, if it did.
	Error string `json:"error,omitempty"`
	// Detail says more of a system event (a rotation's phase).
	Detail string `json:"detail,omitempty"`

	// The node's hash chain (tamper evidence): Chain names the chain (a
	// node begins one each time its audit log opens), ChainSeq is the
	// event's place in it (from 1), and Prev is the SHA-256 (hex) of the
	// previous event of the chain, as written; empty for the first.
	Chain    string `json:"chain,omitempty"`
	ChainSeq uint64 `json:"chainSeq,omitempty"`
	Prev     string `json:"prev,omitempty"`
	// Checkpoint, on an audit.checkpoint event, signs the chain so far.
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
	// Link, on an audit.chain.start event (the first of a chain that
	// follows another of the same node: it restarted), names the previous
	// chain's last checkpoint event, so that a verifier sees a previous
	// chain deleted whole or cut short.
	Link *ChainLink `json:"link,omitempty"`

	// Recording, on the events of a recorded exec or attach session, is
	// the id of its recording; the recording itself travels in events of
	// kind KindSession, each with a Chunk of it.
	Recording string `json:"recording,omitempty"`
	Chunk     *Chunk `json:"chunk,omitempty"`
}

// Chunk is a piece of a session's recording (package record): Data is
// lines of asciicast v2, and the chunks of a recording, joined in Seq
// order (from 0), are the whole recording. The last has Final set.
type Chunk struct {
	Seq   int    `json:"seq"`
	Data  string `json:"data"`
	Final bool   `json:"final,omitempty"`
}

// Checkpoint is a node's signature over its chain up to an event: the
// event's hash, signed with the node's key, whose certificate the CA
// issued. A verifier that trusts the CA detects an edit, a deletion or a
// reordering before it, and a chain cut short before it.
type Checkpoint struct {
	// UpTo is the chain sequence number of the event signed, and Hash that
	// event's SHA-256 (hex), as written.
	UpTo uint64 `json:"upTo"`
	Hash string `json:"hash"`
	// Signature is the node key's signature (ASN.1 ECDSA, base64) over
	// CheckpointDigest.
	Signature string `json:"signature"`
	// Certificate is the node's certificate chain (PEM).
	Certificate string `json:"certificate"`
}

// ActionCheckpoint is the action of a checkpoint event.
const ActionCheckpoint = "audit.checkpoint"

// ActionChainStart is the action of a chain's first event when it follows
// another chain of the node (Event.Link).
const ActionChainStart = "audit.chain.start"

// ChainLink names an event of a chain: its place and its SHA-256 (hex),
// as written.
type ChainLink struct {
	Chain string `json:"chain"`
	Seq   uint64 `json:"seq"`
	Hash  string `json:"hash"`
}

// CheckpointDigest is what a checkpoint's signature covers.
func CheckpointDigest(node, chain string, upTo uint64, hash string) []byte {
	sum := sha256.Sum256([]byte(fmt.Sprintf("gatehouse-audit-checkpoint/1\n%s\n%s\n%d\n%s", node, chain, upTo, hash)))
	return sum[:]
}

// Sink receives audit events. Write must not keep ev after it returns.
// An error means the event may be lost; the caller decides whether that
// fails the request (today it is logged and the request goes on).
type Sink interface {
	Write(ctx context.Context, ev *Event) error
}

// Gate is an optional side interface of a Sink: Ready says whether it can
// take events now. A gateway refuses requests it could not audit (fail
// closed) unless configured otherwise.
type Gate interface {
	Ready() error
}

// Tee writes each event to every sink in turn and returns the first
// error, once all have been tried. It is ready when every sink that is a
// Gate is.
type Tee []Sink

var (
	_ Sink = Tee(nil)
	_ Gate = Tee(nil)
)

// Write implements Sink.
func (t Tee) Write(ctx context.Context, ev *Event) error {
	var first error
	for _, s := range t {
		if err := s.Write(ctx, ev); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Ready implements Gate.
func (t Tee) Ready() error {
	for _, s := range t {
		if g, ok := s.(Gate); ok {
			if err := g.Ready(); err != nil {
				return err
			}
		}
	}
	return nil
}

// SchemaVersion is the version of the events this build writes.
const SchemaVersion = 1

// ErrClosed is returned by a closed sink.
var ErrClosed = errors.New("audit: sink closed")

// FileSink appends events as JSON lines to a file, flushing after each so
// that a crash loses at most the event being written.
type FileSink struct {
	mu     sync.Mutex // guards f, w and closed
	f      *os.File
	w      *bufio.Writer
	closed bool
}

var _ Sink = (*FileSink)(nil)

// OpenFile opens (or creates) path for appending, mode 0600: audit logs name
// people and what they did.
func OpenFile(path string) (*FileSink, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return &FileSink{f: f, w: bufio.NewWriter(f)}, nil
}

// Write appends one event.
func (s *FileSink) Write(_ context.Context, ev *Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.w.Write(b)
	s.w.WriteByte('\n')
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// Close flushes and closes the file. It is idempotent.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.w.Flush()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Memory keeps events in memory, for tests and the dev setup's console.
type Memory struct {
	mu     sync.Mutex // guards events
	events []Event
}

var _ Sink = (*Memory)(nil)

// Write records a copy of ev.
func (m *Memory) Write(_ context.Context, ev *Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, *ev)
	return nil
}

// Events returns a copy of what was written so far.
func (m *Memory) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.events...)
}
