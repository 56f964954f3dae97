package record

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/moby/spdystream/spdy"
)

// Tap returns conn, the upgraded connection to the cluster whose response
// header is h, with the recorder reading both directions as they pass:
// what is written to conn (the client's stdin and terminal resizes) and
// what is read from it (stdout and stderr). The bytes are not changed.
// Closing the returned connection closes conn; Close on the Recorder then
// waits for the taps. If the recording fails (an Emit's error), conn is
// closed, which ends the session.
//
// A protocol the recorder cannot read ends the session (conn is closed),
// with a marker saying why: a recorded session is not run unrecorded.
func (r *Recorder) Tap(h http.Header, conn io.ReadWriteCloser) io.ReadWriteCloser {
	var toServer, fromServer func(io.Reader) error
	switch up := h.Get("Upgrade"); {
	case strings.EqualFold(up, "websocket"):
		proto := h.Get("Sec-Websocket-Protocol")
		b64, ok := channelProtocol(proto)
		if !ok {
			r.unreadable(fmt.Sprintf("gatehouse: the session was ended: WebSocket subprotocol %q is not a Kubernetes stream protocol, and it could not be recorded", proto))
			conn.Close()
			return conn
		}
		if ext := h.Get("Sec-Websocket-Extensions"); ext != "" {
			r.unreadable(fmt.Sprintf("gatehouse: the session was ended: with WebSocket extension %q it could not be recorded", ext))
			conn.Close()
			return conn
		}
		toServer = func(rd io.Reader) error { return r.readWebSocket(rd, true, b64) }
		fromServer = func(rd io.Reader) error { return r.readWebSocket(rd, false, b64) }
	case strings.EqualFold(up, "SPDY/3.1"):
		s := &spdyStreams{r: r, kinds: map[spdy.StreamId]string{}}
		s.cond = sync.NewCond(&s.mu)
		toServer, fromServer = s.readClient, s.readServer
	default:
		r.unreadable(fmt.Sprintf("gatehouse: the session was ended: with upgrade protocol %q it could not be recorded", up))
		conn.Close()
		return conn
	}
	r.mu.Lock()
	failed := r.failed != nil
	r.conns = append(r.conns, conn)
	r.mu.Unlock()
	if failed {
		conn.Close() // the recording failed before the session began
	}
	return &tap{ReadWriteCloser: conn, in: r.feed(toServer), out: r.feed(fromServer)}
}

// feed starts a reader of one direction and returns what feeds it.
func (r *Recorder) feed(read func(io.Reader) error) *feed {
	pr, pw := io.Pipe()
	f := &feed{w: pw}
	r.mu.Lock()
	r.closeTap = append(r.closeTap, func() { pw.Close() })
	r.mu.Unlock()
	r.taps.Add(1)
	go func() {
		defer r.taps.Done()
		err := read(bufio.NewReaderSize(pr, 64<<10))
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.ErrClosedPipe) {
			r.unreadable("gatehouse: the session was ended here: a stream could not be read, so it could not be recorded: " + err.Error())
		}
		f.dead.Store(true)
		pr.CloseWithError(errStopped) // what is still written fails at once
	}()
	return f
}

var errStopped = errors.New("record: the stream's reader stopped")

// feed passes a copy of one direction's bytes to its reader. The writer
// waits while the reader takes them (backpressure keeps the recording
// whole); once the reader has stopped, bytes are no longer passed.
type feed struct {
	w    *io.PipeWriter
	dead atomic.Bool
}

func (f *feed) write(p []byte) {
	if len(p) == 0 || f.dead.Load() {
		return
	}
	if _, err := f.w.Write(p); err != nil {
		f.dead.Store(true)
	}
}

type tap struct {
	io.ReadWriteCloser
	in, out *feed
}

func (t *tap) Read(p []byte) (int, error) {
	n, err := t.ReadWriteCloser.Read(p)
	t.out.write(p[:n])
	return n, err
}

func (t *tap) Write(p []byte) (int, error) {
	t.in.write(p)
	return t.ReadWriteCloser.Write(p)
}

func (t *tap) Close() error {
	err := t.ReadWriteCloser.Close()
	t.in.w.Close()
	t.out.w.Close()
	return err
}

// channelProtocol says whether proto is a Kubernetes channel protocol over
// WebSocket, and whether it is a base64 one.
func channelProtocol(proto string) (b64, ok bool) {
	switch proto {
	case "channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io":
		return false, true
	case "base64.channel.k8s.io", "v4.base64.channel.k8s.io":
		return true, true
	}
	return false, false
}

// Kubernetes stream channels.
const (
	chanStdin  = 0
	chanStdout = 1
	chanStderr = 2
	chanResize = 4
)

// maxFrame bounds a frame the recorder reads (API servers send far
// smaller ones); a larger one stops the recording, not the session.
const maxFrame = 16 << 20

// readWebSocket reads WebSocket frames of the Kubernetes channel protocol:
// each message begins with its channel (a byte, or an ASCII digit in the
// base64 protocols).
func (r *Recorder) readWebSocket(rd io.Reader, fromClient, b64 bool) error {
	var (
		channel = -1
		msg     []byte // a whole message, where it is needed whole
	)
	for {
		h, err := ws.ReadHeader(rd)
		if err != nil {
			return err
		}
		if h.Length > maxFrame {
			return fmt.Errorf("a WebSocket frame of %d bytes", h.Length)
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(rd, payload); err != nil {
			return err
		}
		if h.Masked {
			ws.Cipher(payload, h.Mask, 0)
		}
		if h.OpCode.IsControl() {
			if h.OpCode == ws.OpClose {
				return nil
			}
			continue
		}
		if h.Rsv != 0 {
			return errors.New("a compressed WebSocket frame")
		}
		if h.OpCode != ws.OpContinuation {
			channel, msg = -1, msg[:0]
			if len(payload) == 0 {
				continue
			}
			channel = int(payload[0])
			if b64 {
				channel -= '0'
			}
			payload = payload[1:]
		}
		whole := b64 || channel == chanResize
		if whole {
			if len(msg)+len(payload) > maxFrame {
				return errors.New("a WebSocket message too large to record")
			}
			msg = append(msg, payload...)
			if !h.Fin {
				continue
			}
			payload = msg
			if b64 {
				dec, err := base64.StdEncoding.DecodeString(string(msg))
				if err != nil {
					return fmt.Errorf("base64 channel data: %w", err)
				}
				payload = dec
			}
		}
		switch {
		case fromClient && channel == chanStdin:
			r.data(stdin, payload)
		case fromClient && channel == chanResize:
			r.resizes(payload)
		case !fromClient && channel == chanStdout:
			r.data(stdout, payload)
		case !fromClient && channel == chanStderr:
			r.data(stderr, payload)
		}
		if whole {
			msg = msg[:0]
		}
	}
}

// resizes records the terminal sizes of a resize stream's data: JSON
// objects {"Width": W, "Height": H}, one after another.
func (r *Recorder) resizes(p []byte) {
	dec := json.NewDecoder(bytes.NewReader(p))
	for {
		var size struct{ Width, Height int }
		if err := dec.Decode(&size); err != nil {
			return
		}
		r.resize(size.Width, size.Height)
	}
}

// spdyStreams reads SPDY/3.1: the client opens a stream for each of stdin,
// stdout, stderr, error and resize, naming it in a streamType header, and
// both sides send data frames on them.
type spdyStreams struct {
	r      *Recorder
	mu     sync.Mutex // guards kinds and done
	cond   *sync.Cond
	kinds  map[spdy.StreamId]string
	done   bool // the client's side has ended
	resize []byte
}

// maxSPDYStreams bounds the streams a session may open for the recorder
// to follow (a remote command opens five).
const maxSPDYStreams = 64

func (s *spdyStreams) readClient(rd io.Reader) error {
	defer func() {
		s.mu.Lock()
		s.done = true
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	fr, err := spdy.NewFramerWithOptions(io.Discard, rd, spdy.WithMaxControlFramePayloadSize(1<<20))
	if err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *spdy.SynStreamFrame:
			s.mu.Lock()
			if len(s.kinds) < maxSPDYStreams {
				s.kinds[f.StreamId] = strings.ToLower(f.Headers.Get("streamType"))
			}
			s.cond.Broadcast()
			s.mu.Unlock()
		case *spdy.DataFrame:
			switch s.kind(f.StreamId, false) {
			case "stdin":
				s.r.data(stdin, f.Data)
			case "resize":
				s.resize = append(s.resize, f.Data...)
				if i := bytes.LastIndexByte(s.resize, '}'); i >= 0 {
					s.r.resizes(s.resize[:i+1])
					s.resize = append(s.resize[:0], s.resize[i+1:]...)
				}
				if len(s.resize) > 4096 {
					s.resize = s.resize[:0]
				}
			}
		}
	}
}

func (s *spdyStreams) readServer(rd io.Reader) error {
	fr, err := spdy.NewFramerWithOptions(io.Discard, rd, spdy.WithMaxControlFramePayloadSize(1<<20))
	if err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		if d, ok := f.(*spdy.DataFrame); ok {
			switch s.kind(d.StreamId, true) {
			case "stdout":
				s.r.data(stdout, d.Data)
			case "stderr":
				s.r.data(stderr, d.Data)
			}
		}
	}
}

// spdyNameWait bounds how long the server's side waits to learn a stream's
// kind: the client's SYN_STREAM passed the tap before the server could
// answer on the stream, but its reader may not have read it yet.
const spdyNameWait = 2 * time.Second

// kind returns the stream's kind; the server's side waits for the client's
// side to have read the stream's opening.
func (s *spdyStreams) kind(id spdy.StreamId, wait bool) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.kinds[id]
	if ok || !wait {
		return k
	}
	expired := false // guarded by mu
	timer := time.AfterFunc(spdyNameWait, func() {
		s.mu.Lock()
		expired = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	for !ok && !s.done && !expired {
		s.cond.Wait()
		k, ok = s.kinds[id]
	}
	if !ok && len(s.kinds) < maxSPDYStreams {
		s.kinds[id] = "" // unknown: not waited for again
	}
	return k
}
