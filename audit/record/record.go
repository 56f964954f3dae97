// Package record records the terminal streams of exec and attach sessions
// that pass through the gateway (issue 12), in asciicast v2
// (https://docs.asciinema.org/manual/asciicast/v2/): stdin as "i" events,
// stdout and stderr as "o", terminal resizes as "r", each with its time
// since the session began.
//
// A Recorder taps the upgraded connection between the gateway and the
// cluster (Tap) without changing a byte of it, reads the Kubernetes stream
// protocol from each direction (WebSocket channel.k8s.io, v1 to v5, or
// SPDY/3.1), and hands the recording on in chunks (Emit) that the gateway
// writes through its audit spool: a recording is as durable, and as tamper
// evident, as any other audit event. Play replays one.
//
// The recording is of what crosses the gateway; if a stream cannot be read
// (a protocol it does not know, a WebSocket extension, a frame it cannot
// parse), the connection carries on untouched and the recording says, in a
// marker event, from when on it is missing.
package record

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gatehouse-dev/gatehouse/audit"
)

// Config configures a Recorder.
type Config struct {
	// ID names the recording; the audit events of the session point to it.
	ID string
	// Title, Command and TTY describe the session in the recording's
	// header.
	Title   string
	Command []string
	TTY     bool
	// Width and Height are the terminal's size until the client says
	// otherwise (80x24 when zero).
	Width, Height int
	// MaxBytes bounds the recording (its JSON lines). Past it, a marker
	// says where the recording was cut and the session carries on
	// unrecorded. Zero means DefaultMaxBytes.
	MaxBytes int64
	// ChunkBytes is how much of the recording a chunk holds before it is
	// emitted, and FlushInterval how long a partial chunk waits at most.
	ChunkBytes    int
	FlushInterval time.Duration
	// Emit receives the recording's chunks in order, one call at a time.
	// The last has Final set. If it returns an error (the audit log could
	// not take the chunk), the recording fails closed: nothing more is
	// recorded, and the tapped connections are closed, which ends the
	// session rather than let it go on unrecorded.
	Emit func(audit.Chunk) error
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Defaults.
const (
	DefaultMaxBytes      = 64 << 20
	DefaultChunkBytes    = 32 << 10
	DefaultFlushInterval = time.Second
)

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("record: ID is required")
	case c.Emit == nil:
		return errors.New("record: Emit is required")
	case c.MaxBytes < 0 || c.ChunkBytes < 0 || c.FlushInterval < 0 || c.Width < 0 || c.Height < 0:
		return errors.New("record: sizes and intervals must not be negative")
	}
	return nil
}

// Everyone, in a recording policy's roles, records every session.
const Everyone = "*"

// Applies says whether a policy that records the holders of the roles
// policy names records a person who holds held (the roles of all their
// grants on the cluster, whatever the namespace of the session): when the
// policy names Everyone or any role held.
func Applies(policy, held []string) bool {
	for _, r := range policy {
		if r == Everyone || slices.Contains(held, r) {
			return true
		}
	}
	return false
}

// Header is the first line of an asciicast v2 recording. Gatehouse adds
// the session's command and whether it had a terminal.
type Header struct {
	Version   int               `json:"version"`
	Width     int               `json:"width"`
	Height    int               `json:"height"`
	Timestamp int64             `json:"timestamp"`
	Title     string            `json:"title,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Command   []string          `json:"gatehouseCommand,omitempty"`
	TTY       bool              `json:"gatehouseTTY"`
}

// Event codes of asciicast v2.
const (
	Output = "o"
	Input  = "i"
	Resize = "r"
	Marker = "m"
)

// stream identifies a byte stream, each with its own incomplete UTF-8
// tail.
type stream int

const (
	stdin stream = iota
	stdout
	stderr
	nstreams
)

// code is the event code of the stream's bytes: stdin is input, the
// rest output.
func (s stream) code() string {
	if s == stdin {
		return Input
	}
	return Output
}

// Recorder records one session. Its methods are safe for concurrent use.
type Recorder struct {
	cfg   Config
	start time.Time

	mu       sync.Mutex // guards everything below
	header   *Header    // until the first chunk is emitted
	buf      bytes.Buffer
	seq      int
	size     int64
	cut      bool
	closed   bool
	carry    [nstreams][]byte
	timer    *time.Timer
	taps     sync.WaitGroup
	closeTap []func()
	conns    []io.Closer // the tapped connections, closed if an Emit fails
	failed   error
	closing  sync.WaitGroup // fail's closer of conns; Close waits for it
}

// New starts a recording now.
func New(cfg Config) (*Recorder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Width == 0 || cfg.Height == 0 {
		cfg.Width, cfg.Height = 80, 24
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.ChunkBytes == 0 {
		cfg.ChunkBytes = DefaultChunkBytes
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	start := cfg.Now()
	r := &Recorder{cfg: cfg, start: start, header: &Header{Version: 2, Width: cfg.Width, Height: cfg.Height,
		Timestamp: start.Unix(), Title: cfg.Title, Command: cfg.Command, TTY: cfg.TTY}}
	return r, nil
}

// ID returns the recording's id.
func (r *Recorder) ID() string { return r.cfg.ID }

// data records bytes of a stream: stdin as input, stdout and stderr as
// output. A multi-byte character cut between two reads waits for its end.
func (r *Recorder) data(s stream, p []byte) {
	if len(p) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	b := append(r.carry[s], p...)
	cut := completeUTF8(b)
	r.carry[s] = append([]byte(nil), b[cut:]...)
	if cut == 0 {
		return
	}
	r.event(s.code(), string(b[:cut]))
}

// completeUTF8 returns how much of b ends on a whole character: all of it
// unless its last character is the beginning of a longer one.
func completeUTF8(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			break
		}
	}
	return len(b)
}

// resize records the terminal's new size. Before the first chunk is
// emitted it changes the header instead.
func (r *Recorder) resize(w, h int) {
	if w <= 0 || h <= 0 || w > 10000 || h > 10000 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if r.header != nil && r.buf.Len() == 0 {
		r.header.Width, r.header.Height = w, h
		return
	}
	r.event(Resize, fmt.Sprintf("%dx%d", w, h))
}

// Mark records a marker: something a reader of the recording should know
// (a stream that could not be read, and from when).
func (r *Recorder) Mark(text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.event(Marker, text)
	}
}

// event appends one event line. The caller holds mu.
func (r *Recorder) event(code, data string) {
	if r.cut {
		return
	}
	t := math.Round(r.cfg.Now().Sub(r.start).Seconds()*1e6) / 1e6
	line, _ := json.Marshal([]any{t, code, data})
	if r.size+int64(len(line))+1 > r.cfg.MaxBytes {
		r.cut = true
		line, _ = json.Marshal([]any{t, Marker, fmt.Sprintf("gatehouse: the recording was cut here, at its limit of %d bytes; the session went on unrecorded", r.cfg.MaxBytes)})
	}
	r.write(line)
}

// write appends a line to the pending chunk and emits the chunk when it is
// full; otherwise a timer emits it soon. The caller holds mu.
func (r *Recorder) write(line []byte) {
	r.writeHeader()
	r.buf.Write(line)
	r.buf.WriteByte('\n')
	r.size += int64(len(line)) + 1
	if r.buf.Len() >= r.cfg.ChunkBytes {
		r.flush(false)
		return
	}
	if r.timer == nil {
		r.timer = time.AfterFunc(r.cfg.FlushInterval, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.timer = nil
			if !r.closed {
				r.flush(false)
			}
		})
	}
}

// writeHeader begins the first chunk with the header, until then kept
// apart so that an early resize can change it. The caller holds mu.
func (r *Recorder) writeHeader() {
	if r.header == nil || r.buf.Len() > 0 {
		return
	}
	h, _ := json.Marshal(r.header)
	r.buf.Write(h)
	r.buf.WriteByte('\n')
	r.size += int64(len(h)) + 1
}

// flush emits the pending chunk. The caller holds mu.
func (r *Recorder) flush(final bool) {
	if r.buf.Len() == 0 && !final {
		return
	}
	r.writeHeader() // a recording with no event has its header all the same
	r.header = nil
	err := r.cfg.Emit(audit.Chunk{Seq: r.seq, Data: r.buf.String(), Final: final})
	r.seq++
	r.buf.Reset()
	if err != nil && r.failed == nil {
		r.fail(err)
	}
}

// fail stops the recording after an Emit failed and ends the session: its
// tapped connections are closed (apart from mu: a Close may wait on a
// reader that needs it). The caller holds mu.
func (r *Recorder) fail(err error) {
	r.failed, r.cut = err, true
	conns := r.conns
	r.conns = nil
	r.closing.Add(1)
	go func() {
		defer r.closing.Done()
		for _, c := range conns {
			c.Close()
		}
	}()
}

// ErrUnreadable is why a session the recorder cannot read was ended.
var ErrUnreadable = errors.New("record: the session's streams cannot be read, so it cannot be recorded")

// unreadable ends a session the recorder cannot read (an unknown protocol,
// frames its parser rejects): a marker says why, the recording so far is
// emitted, and the session's connections are closed. A recorded session
// fails closed, as when the audit log cannot take a chunk: a client that
// sent what the recorder cannot read would otherwise go on unrecorded.
// Past the size limit the session is unrecorded anyway, and goes on.
func (r *Recorder) unreadable(text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.cut || r.failed != nil {
		return
	}
	r.event(Marker, text)
	r.flush(false)
	if r.failed == nil {
		r.fail(ErrUnreadable)
	}
}

// Err returns why the recording failed (an Emit's error, or
// ErrUnreadable), or nil.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// Close ends the recording: it waits for the taps to finish reading what
// passed through them, records what was left of a cut character, and
// emits the last chunk. It is idempotent, and returns once a failed
// recording's connections are closed.
func (r *Recorder) Close() {
	r.close()
	r.closing.Wait()
}

func (r *Recorder) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	closers := r.closeTap
	r.closeTap = nil
	r.mu.Unlock()
	for _, c := range closers {
		c()
	}
	r.taps.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	for s := range nstreams {
		if len(r.carry[s]) > 0 {
			r.event(s.code(), string(r.carry[s])) // not valid UTF-8: JSON makes it U+FFFD
			r.carry[s] = nil
		}
	}
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if r.failed == nil { // a failed recording stays without its last chunk: incomplete
		r.flush(true)
	}
	r.closed = true
}
