package record

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/moby/spdystream/spdy"
	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/audit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// conn is the cluster's side of an upgraded connection: reads come from
// server, writes go to client.
type conn struct {
	server io.Reader
	mu     sync.Mutex
	client bytes.Buffer
}

func (c *conn) Read(p []byte) (int, error) { return c.server.Read(p) }
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.client.Write(p)
}
func (c *conn) Close() error { return nil }

// clock advances a millisecond each time it is read.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

type sink struct {
	mu     sync.Mutex
	chunks []audit.Chunk
	err    error // returned by emit, once set: the audit log is full
}

func (s *sink) emit(c audit.Chunk) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.chunks = append(s.chunks, c)
	return nil
}

// recording joins the chunks, checking their order and that the last, and
// only it, is final.
func (s *sink) recording(t *testing.T) (Header, []Event) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var all strings.Builder
	for i, c := range s.chunks {
		if c.Seq != i || c.Final != (i == len(s.chunks)-1) {
			t.Fatalf("chunk %d: seq %d final %v of %d", i, c.Seq, c.Final, len(s.chunks))
		}
		all.WriteString(c.Data)
	}
	h, evs, err := Parse(strings.NewReader(all.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, all.String())
	}
	return h, evs
}

func newRecorder(t *testing.T, cfg Config) (*Recorder, *sink) {
	t.Helper()
	s := &sink{}
	c := &clock{t: time.Unix(1700000000, 0)}
	cfg.ID, cfg.Emit, cfg.Now = "rec-1", s.emit, c.now
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, s
}

func wsFrame(t *testing.T, masked bool, op ws.OpCode, fin bool, payload []byte) []byte {
	t.Helper()
	f := ws.NewFrame(op, fin, append([]byte(nil), payload...))
	if masked {
		f = ws.MaskFrameInPlace(f)
	}
	var b bytes.Buffer
	if err := ws.WriteFrame(&b, f); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func joined(evs []Event, code string) string {
	var b strings.Builder
	for _, e := range evs {
		if e.Code == code {
			b.WriteString(e.Data)
		}
	}
	return b.String()
}

func TestWebSocketSession(t *testing.T) {
	r, s := newRecorder(t, Config{Title: "ada@dev: exec", TTY: true})
	// The server's side: stdout with a character cut between two frames
	// and between two reads, stderr, a fragmented message, a ping.
	euro := []byte("€") // three bytes
	var server bytes.Buffer
	server.Write(wsFrame(t, false, ws.OpBinary, true, append([]byte{1}, append([]byte("price: "), euro[:1]...)...)))
	server.Write(wsFrame(t, false, ws.OpPing, true, nil))
	server.Write(wsFrame(t, false, ws.OpBinary, true, append([]byte{1}, euro[1:]...)))
	server.Write(wsFrame(t, false, ws.OpBinary, false, []byte{2, 'e', 'r'}))
	server.Write(wsFrame(t, false, ws.OpContinuation, true, []byte("r\n")))
	server.Write(wsFrame(t, false, ws.OpBinary, true, []byte{3, '{', '}'})) // the error channel: not recorded
	sent := bytes.Clone(server.Bytes())
	c := &conn{server: iotestOneByte(&server)}
	h := http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}
	tc := r.Tap(h, c)

	// The client's side: a resize before any output (the header's size),
	// stdin, then a resize that is an event.
	writes := [][]byte{
		wsFrame(t, true, ws.OpBinary, true, append([]byte{4}, `{"Width":120,"Height":40}`...)),
		wsFrame(t, true, ws.OpBinary, true, append([]byte{0}, "ls\r"...)),
	}
	for _, w := range writes {
		if _, err := tc.Write(w); err != nil {
			t.Fatal(err)
		}
	}
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatal("the tap changed what the server sent")
	}
	late := wsFrame(t, true, ws.OpBinary, true, append([]byte{4}, `{"Width":100,"Height":30}`...))
	if _, err := tc.Write(late); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	r.Close()
	r.Close() // idempotent

	if want := bytes.Join(append(writes, late), nil); !bytes.Equal(c.client.Bytes(), want) {
		t.Fatal("the tap changed what the client wrote")
	}
	hdr, evs := s.recording(t)
	if hdr.Width != 120 || hdr.Height != 40 || !hdr.TTY || hdr.Title != "ada@dev: exec" || hdr.Timestamp != 1700000000 {
		t.Fatalf("header %+v", hdr)
	}
	if out := joined(evs, Output); out != "price: €err\n" {
		t.Fatalf("output %q", out)
	}
	if in := joined(evs, Input); in != "ls\r" {
		t.Fatalf("input %q", in)
	}
	if rs := joined(evs, Resize); rs != "100x30" {
		t.Fatalf("resizes %q", rs)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Time < evs[i-1].Time {
			t.Fatalf("time goes back: %+v", evs)
		}
	}
}

// iotestOneByte returns a reader that reads a byte at a time: frames cut
// at every byte.
func iotestOneByte(r io.Reader) io.Reader { return &oneByte{r} }

type oneByte struct{ r io.Reader }

func (o *oneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestBase64WebSocket(t *testing.T) {
	r, s := newRecorder(t, Config{})
	var server bytes.Buffer
	server.Write(wsFrame(t, false, ws.OpText, true, []byte("1aGVsbG8=")))
	tc := r.Tap(http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"base64.channel.k8s.io"}}, &conn{server: &server})
	io.ReadAll(tc)
	tc.Close()
	r.Close()
	if _, evs := s.recording(t); joined(evs, Output) != "hello" {
		t.Fatalf("%+v", evs)
	}
}

func spdyFrames(t *testing.T, frames ...spdy.Frame) []byte {
	t.Helper()
	var b bytes.Buffer
	f, err := spdy.NewFramer(&b, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, fr := range frames {
		if err := f.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func TestSPDYSession(t *testing.T) {
	r, s := newRecorder(t, Config{})
	syn := func(id spdy.StreamId, kind string) *spdy.SynStreamFrame {
		return &spdy.SynStreamFrame{StreamId: id, Headers: http.Header{"streamType": {kind}}}
	}
	client := spdyFrames(t,
		syn(1, "error"), syn(3, "stdin"), syn(5, "stdout"), syn(7, "stderr"), syn(9, "resize"),
		&spdy.DataFrame{StreamId: 9, Data: []byte(`{"Width":90,"Height":20}` + "\n")},
		&spdy.DataFrame{StreamId: 3, Data: []byte("echo hi\r")},
	)
	server := spdyFrames(t,
		&spdy.SynReplyFrame{StreamId: 5},
		&spdy.DataFrame{StreamId: 5, Data: []byte("hi\r\n")},
		&spdy.DataFrame{StreamId: 7, Data: []byte("warning\n")},
		&spdy.DataFrame{StreamId: 1, Data: []byte("{}")},
	)
	c := &conn{server: bytes.NewReader(server)}
	tc := r.Tap(http.Header{"Upgrade": {"SPDY/3.1"}}, c)
	// The client's frames go first, in odd pieces.
	for i := 0; i < len(client); i += 7 {
		tc.Write(client[i:min(i+7, len(client))])
	}
	got, _ := io.ReadAll(tc)
	tc.Close()
	r.Close()
	if !bytes.Equal(got, server) || !bytes.Equal(c.client.Bytes(), client) {
		t.Fatal("the tap changed the bytes")
	}
	hdr, evs := s.recording(t)
	if hdr.Width != 90 || hdr.Height != 20 {
		t.Fatalf("header %+v", hdr)
	}
	if out, in := joined(evs, Output), joined(evs, Input); out != "hi\r\nwarning\n" || in != "echo hi\r" {
		t.Fatalf("output %q input %q", out, in)
	}
}

// partial joins the chunks of a recording that failed (no final chunk),
// checking their order.
func (s *sink) partial(t *testing.T) []Event {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var all strings.Builder
	for i, c := range s.chunks {
		if c.Seq != i || c.Final {
			t.Fatalf("chunk %d: seq %d final %v", i, c.Seq, c.Final)
		}
		all.WriteString(c.Data)
	}
	_, evs, err := Parse(strings.NewReader(all.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, all.String())
	}
	return evs
}

// A recorded session in a protocol the recorder cannot read is ended, not
// run unrecorded: its connection is closed, and the recording says why.
func TestUnknownProtocolEndsTheSession(t *testing.T) {
	for name, h := range map[string]http.Header{
		"subprotocol": {"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"chat"}},
		"extension":   {"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}, "Sec-Websocket-Extensions": {"permessage-deflate"}},
		"upgrade":     {"Upgrade": {"h2c"}},
	} {
		r, s := newRecorder(t, Config{})
		c := &closeConn{Reader: strings.NewReader("raw"), Writer: io.Discard, closed: make(chan struct{})}
		r.Tap(h, c)
		select {
		case <-c.closed:
		default:
			t.Fatalf("%s: the session goes on unrecorded", name)
		}
		r.Close()
		evs := s.partial(t)
		if len(evs) != 1 || evs[0].Code != Marker || !strings.Contains(evs[0].Data, "session was ended") || !errors.Is(r.Err(), ErrUnreadable) {
			t.Fatalf("%s: %+v, %v", name, evs, r.Err())
		}
	}
}

// Frames the recorder cannot parse end the session: what passed before is
// unchanged, the connection is closed, and the recording says where.
func TestGarbageEndsTheSession(t *testing.T) {
	r, s := newRecorder(t, Config{})
	junk := bytes.Repeat([]byte{0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1000)
	c := &closeConn{Reader: bytes.NewReader(junk), Writer: io.Discard, closed: make(chan struct{})}
	tc := r.Tap(http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}, c)
	got, _ := io.ReadAll(tc) // the test's connection reads on after Close
	select {
	case <-c.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the session goes on unrecorded")
	}
	tc.Close()
	r.Close()
	if !bytes.HasPrefix(junk, got) {
		t.Fatal("the session's bytes were changed")
	}
	evs := s.partial(t)
	if len(evs) != 1 || evs[0].Code != Marker || !strings.Contains(evs[0].Data, "ended here") || !errors.Is(r.Err(), ErrUnreadable) {
		t.Fatalf("%+v %v", evs, r.Err())
	}
}

func TestChunksAndLimit(t *testing.T) {
	r, s := newRecorder(t, Config{ChunkBytes: 1000, MaxBytes: 20000})
	for range 1000 {
		r.data(stdout, []byte(strings.Repeat("x", 50)))
	}
	r.Close()
	if len(s.chunks) < 15 {
		t.Fatalf("%d chunks", len(s.chunks))
	}
	_, evs := s.recording(t)
	last := evs[len(evs)-1]
	if last.Code != Marker || !strings.Contains(last.Data, "cut here") {
		t.Fatalf("last event %+v", last)
	}
	total := 0
	for _, c := range s.chunks {
		total += len(c.Data)
	}
	if total > 20000+200 {
		t.Fatalf("%d bytes recorded, limit 20000", total)
	}
}

func TestFlushInterval(t *testing.T) {
	s := &sink{}
	r, err := New(Config{ID: "x", Emit: s.emit, FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.data(stdout, []byte("soon"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.chunks)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a partial chunk was not emitted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPlay(t *testing.T) {
	evs := []Event{{0.5, Output, "a"}, {0.6, Input, "x"}, {10, Output, "b"}, {10.5, Marker, "note"}, {11, Resize, "80x24"}}
	var slept []time.Duration
	var out, marks bytes.Buffer
	err := Play(context.Background(), &out, evs, PlayOptions{Speed: 2, IdleLimit: 2 * time.Second, Markers: &marks,
		Sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "ab" || marks.String() != "note\n" {
		t.Fatalf("%q %q", out.String(), marks.String())
	}
	want := []time.Duration{250 * time.Millisecond, 2 * time.Second, 250 * time.Millisecond}
	if len(slept) != len(want) {
		t.Fatalf("slept %v", slept)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("slept %v, want %v", slept, want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, in := range []string{"", `{"version":1}`, "{\"version\":2}\n[1,\"o\"]", "{\"version\":2}\nnot json"} {
		if _, _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
	h, evs, err := Parse(strings.NewReader("{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"hi\"]\n"))
	if err != nil || h.Width != 80 || len(evs) != 1 || evs[0].Data != "hi" {
		t.Fatalf("%+v %+v %v", h, evs, err)
	}
	b, _ := json.Marshal(evs[0].Time)
	if string(b) != "0.1" {
		t.Fatal(string(b))
	}
}

// FuzzTap feeds any bytes through a tap, both ways: they pass unchanged,
// and the recorder neither panics nor hangs.
func FuzzTap(f *testing.F) {
	f.Add([]byte{0x82, 0x03, 0x01, 'h', 'i'}, []byte{0x82, 0x83, 0, 0, 0, 0, 0, 'l', 's'}, false)
	f.Add(spdyFramesF(&spdy.DataFrame{StreamId: 5, Data: []byte("x")}), spdyFramesF(&spdy.SynStreamFrame{StreamId: 5, Headers: http.Header{"streamType": {"stdout"}}}), true)
	f.Fuzz(func(t *testing.T, server, client []byte, isSPDY bool) {
		s := &sink{}
		r, err := New(Config{ID: "f", Emit: s.emit})
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}
		if isSPDY {
			h = http.Header{"Upgrade": {"SPDY/3.1"}}
		}
		c := &conn{server: bytes.NewReader(server)}
		tc := r.Tap(h, c)
		tc.Write(client)
		got, _ := io.ReadAll(tc)
		tc.Close()
		r.Close()
		if !bytes.Equal(got, server) || !bytes.Equal(c.client.Bytes(), client) {
			t.Fatal("the tap changed the bytes")
		}
	})
}

func spdyFramesF(frames ...spdy.Frame) []byte {
	var b bytes.Buffer
	f, _ := spdy.NewFramer(&b, nil)
	for _, fr := range frames {
		f.WriteFrame(fr)
	}
	return b.Bytes()
}

// closeConn is a tapped connection that says when it is closed.
type closeConn struct {
	io.Reader
	io.Writer
	closed chan struct{}
	once   sync.Once
}

func (c *closeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// When the audit log cannot take a chunk, the recording fails closed: the
// session's connection is closed (ending the session, which must not go on
// unrecorded), nothing more is recorded, and Err says why.
func TestRecordingFailsClosed(t *testing.T) {
	r, s := newRecorder(t, Config{ChunkBytes: 64, FlushInterval: time.Hour})
	conn := &closeConn{Reader: strings.NewReader(""), Writer: io.Discard, closed: make(chan struct{})}
	h := http.Header{"Upgrade": {"websocket"}, "Sec-Websocket-Protocol": {"v5.channel.k8s.io"}}
	tapped := r.Tap(h, conn)
	defer tapped.Close()
	r.data(stdout, []byte(strings.Repeat("recorded ", 10))) // a full chunk, emitted
	if got := len(s.chunks); got != 1 {
		t.Fatalf("%d chunks emitted, want 1", got)
	}
	select {
	case <-conn.closed:
		t.Fatal("the session was ended while its recording worked")
	default:
	}
	full := errors.New("audit: spool full")
	s.mu.Lock()
	s.err = full
	s.mu.Unlock()
	r.data(stdout, []byte(strings.Repeat("lost ", 20)))
	select {
	case <-conn.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the session goes on, though its recording failed")
	}
	if !errors.Is(r.Err(), full) {
		t.Fatalf("Err: %v", r.Err())
	}
	s.mu.Lock()
	s.err = nil
	s.mu.Unlock()
	r.data(stdout, []byte("after"))
	r.Close()
	for _, c := range s.chunks[1:] {
		t.Fatalf("a chunk after the failure: %+v", c)
	}
}
