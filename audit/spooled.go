package audit

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
	"github.com/google/uuid"

	"github.com/gatehouse-dev/gatehouse/audit/spool"
)

// SpoolSink writes events to the node's durable spool (package spool),
// from which a Shipper sends them to Kafka: an event is on disk before
// Write returns, so a request is not answered before its event is safe.
// Write fails (the gateway then refuses the request) when the spool cannot
// take it: full because Kafka has been down too long, or a failing disk.
//
// The sink links the node's events in a hash chain (Event.Chain, ChainSeq,
// Prev) and, once it has a key (SetKey), signs the chain in a checkpoint
// event every CheckpointEvery events and at each Checkpoint call with
// events since the last (the node calls it every few seconds): package
// verify checks them.
type SpoolSink struct {
	Spool *spool.Spool
	// Node names this node in its events.
	Node string
	// CheckpointEvery is how many events may go unsigned; zero means
	// DefaultCheckpointEvery.
	CheckpointEvery int
	// HeadFile, if set, is where the sink keeps its chain's last
	// checkpoint (a few bytes, replaced at each checkpoint). A sink that
	// finds one there begins its chain with an audit.chain.start event
	// linking to it (Event.Link): a verifier then sees a previous chain
	// deleted whole or cut short before that checkpoint. Keeping it is
	// best effort: a failure costs the link, never an event.
	HeadFile string

	mu      sync.Mutex // guards the chain, and orders appends with it
	key     func() *tls.Certificate
	chain   string
	seq     uint64
	prev    string
	unsaved int // events since the last checkpoint
}

// DefaultCheckpointEvery is how many events a chain runs between
// checkpoints at most.
const DefaultCheckpointEvery = 1000

var (
	_ Sink = (*SpoolSink)(nil)
	_ Gate = (*SpoolSink)(nil)
)

// SetKey gives the sink the node's certificate and key to sign checkpoints
// with (the serving certificate, which the CA issued; fn returns the
// current one).
func (s *SpoolSink) SetKey(fn func() *tls.Certificate) {
	s.mu.Lock()
	s.key = fn
	s.mu.Unlock()
}

// readyHeadroom is what the spool must have left for the sink to say it
// is ready: room for the events of the requests in flight.
const readyHeadroom = 1 << 20

// Ready implements Gate: the spool has room and its disk works.
func (s *SpoolSink) Ready() error {
	room, err := s.Spool.Room()
	if err != nil {
		return err
	}
	if room < readyHeadroom {
		return fmt.Errorf("audit: %w (Kafka has not taken its events for a while)", spool.ErrFull)
	}
	return nil
}

// Write appends a copy of ev to the spool, with an id (a UUIDv7) if it
// has none, the schema version and its place in the chain; a checkpoint
// follows every CheckpointEvery events. ev itself is not changed: a
// caller that writes one struct twice (a stream's open and close events)
// writes two events, each with its own id.
func (s *SpoolSink) Write(_ context.Context, ev *Event) error {
	cp := *ev
	ev = &cp
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.append(ev); err != nil {
		return err
	}
	every := s.CheckpointEvery
	if every <= 0 {
		every = DefaultCheckpointEvery
	}
	if s.unsaved >= every {
		if err := s.checkpoint(); err != nil {
			return err
		}
	}
	return nil
}

// Checkpoint signs the chain if events were written since the last
// checkpoint (and the sink has a key).
func (s *SpoolSink) Checkpoint() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unsaved == 0 {
		return nil
	}
	return s.checkpoint()
}

// head is what HeadFile holds.
type head struct {
	Node string `json:"node"`
	ChainLink
}

// start begins the sink's chain, linked to the last one's last checkpoint
// if HeadFile names one of this node's. The caller holds mu.
func (s *SpoolSink) start() error {
	id, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("audit: chain id: %w", err)
	}
	s.chain = id.String()
	if s.HeadFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.HeadFile)
	if err != nil {
		return nil // none: the node's first chain (or its state was lost)
	}
	var h head
	if json.Unmarshal(b, &h) != nil || h.Node != s.Node || h.Chain == "" || h.Seq == 0 {
		return nil
	}
	err = s.append(&Event{Kind: KindSystem, Action: ActionChainStart, Object: "chain/" + s.chain, Time: time.Now(), Phase: PhaseComplete,
		Node: s.Node, Status: 200, Link: &h.ChainLink, Detail: fmt.Sprintf("follows chain %s, signed up to event %d", h.Chain, h.Seq)})
	if err != nil {
		s.chain = "" // begun again, with its link, at the next write
	}
	return err
}

// saveHead keeps the chain's last event, a checkpoint, in HeadFile,
// atomically and durably (renameio: written aside, synced, renamed over
// it). The caller holds mu.
func (s *SpoolSink) saveHead() {
	if s.HeadFile == "" {
		return
	}
	b, _ := json.Marshal(head{Node: s.Node, ChainLink: ChainLink{Chain: s.chain, Seq: s.seq, Hash: s.prev}})
	// Best effort (HeadFile): a failure costs the next chain its link.
	_ = renameio.WriteFile(s.HeadFile, b, 0o600, renameio.WithTempDir(filepath.Dir(s.HeadFile)))
}

// append writes ev as the chain's next event. The caller holds mu.
func (s *SpoolSink) append(ev *Event) error {
	if s.chain == "" {
		if err := s.start(); err != nil {
			return err
		}
	}
	if ev.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("audit: event id: %w", err)
		}
		ev.ID = id.String()
	}
	ev.Schema = SchemaVersion
	ev.Chain, ev.ChainSeq, ev.Prev = s.chain, s.seq+1, s.prev
	bound(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if _, err := s.Spool.Append(b); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	sum := sha256.Sum256(b)
	s.seq, s.prev = s.seq+1, hex.EncodeToString(sum[:])
	s.unsaved++
	return nil
}

// checkpoint writes a checkpoint event signing the chain up to its last
// event. Without a key it writes none. The caller holds mu.
func (s *SpoolSink) checkpoint() error {
	if s.key == nil {
		return nil
	}
	cert := s.key()
	if cert == nil {
		return nil
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil
	}
	cp := &Checkpoint{UpTo: s.seq, Hash: s.prev}
	sig, err := signer.Sign(rand.Reader, CheckpointDigest(s.Node, s.chain, cp.UpTo, cp.Hash), crypto.SHA256)
	if err != nil {
		return fmt.Errorf("audit: sign a checkpoint: %w", err)
	}
	cp.Signature = base64.StdEncoding.EncodeToString(sig)
	var chain strings.Builder
	for _, der := range cert.Certificate {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	cp.Certificate = chain.String()
	ev := &Event{Kind: KindSystem, Action: ActionCheckpoint, Object: "chain/" + s.chain, Time: time.Now(), Phase: PhaseComplete,
		Node: s.Node, Status: 200, Checkpoint: cp}
	if err := s.append(ev); err != nil {
		return err
	}
	s.unsaved = 0
	s.saveHead()
	return nil
}

// MaxField bounds each text field of an event that the spooled sink
// writes: a client's path or user agent can be as long as the server takes
// headers, and an event that Kafka refuses as too large would stop the
// shipper and fill the spool. Longer values are cut and marked.
const MaxField = 4096

const cutMark = "...(cut)"

func bound(ev *Event) {
	for _, f := range []*string{&ev.Action, &ev.Object, &ev.User, &ev.Cluster, &ev.Namespace, &ev.Verb, &ev.APIGroup, &ev.Resource,
		&ev.Subresource, &ev.Name, &ev.Path, &ev.ClientAddr, &ev.UserAgent, &ev.Error, &ev.Detail, &ev.RequestID, &ev.Node} {
		if len(*f) > MaxField {
			*f = strings.ToValidUTF8((*f)[:MaxField-len(cutMark)], "") + cutMark
		}
	}
	if len(ev.Groups) > 256 {
		ev.Groups = append(ev.Groups[:255:255], cutMark)
	}
	cloned := false
	for i, g := range ev.Groups {
		if len(g) > MaxField {
			if !cloned {
				ev.Groups, cloned = slices.Clone(ev.Groups), true // the caller's, not to be changed
			}
			ev.Groups[i] = strings.ToValidUTF8(g[:MaxField-len(cutMark)], "") + cutMark
		}
	}
}
