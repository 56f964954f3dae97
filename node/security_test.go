package node_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/node"
)

// A token for a registered cluster, presented with another kube-system UID,
// must not move the cluster's agent identity (issue 9, defect 1): 401,
// audited, and the token stays usable by the real cluster. One physical
// cluster cannot register as two.
func TestReBootstrapCannotTakeOverCluster(t *testing.T) {
	b := newBed(t)
	first := b.bootstrapToken("victim", time.Hour)
	if code := register(t, b, first, "uid-real"); code != http.StatusOK {
		t.Fatalf("first registration: %d", code)
	}
	c, err := b.store.GetCluster(context.Background(), "victim")
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.store.CreateBootstrapToken(context.Background(), c.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code := register(t, b, again, "uid-impostor"); code != http.StatusUnauthorized {
		t.Fatalf("impostor registration: %d, want 401", code)
	}
	var refused *audit.Event
	for _, ev := range b.audit.Events() {
		if ev.Action == "agent.register" && ev.Status == http.StatusUnauthorized && ev.Cluster == "victim" {
			refused = &ev
		}
	}
	if refused == nil || !strings.Contains(refused.Error, "another fingerprint") || refused.Object != "fingerprint/uid-impostor" {
		t.Fatalf("refusal not audited as such: %+v", refused)
	}
	if c, _ := b.store.GetCluster(context.Background(), "victim"); c.Fingerprint != "uid-real" {
		t.Fatalf("fingerprint now %q", c.Fingerprint)
	}
	// The real cluster re-registers with the same token (its agent lost
	// its Secret, say).
	if code := register(t, b, again, "uid-real"); code != http.StatusOK {
		t.Fatalf("real cluster's re-registration: %d", code)
	}
	// The same API server registering as another Gatehouse cluster.
	twin := b.bootstrapToken("victim-twin", time.Hour)
	if code := register(t, b, twin, "uid-real"); code != http.StatusUnauthorized {
		t.Fatalf("second registration of one cluster: %d, want 401", code)
	}
}

// A client that sends registration headers and stalls loses its connection
// after UnauthenticatedReadTimeout (issue 9, defect 4).
func TestRegistrationBodyHasADeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	b := startBedWith(t, false, 0, func(c *node.Config) { c.UnauthenticatedReadTimeout = timeout })
	conn, err := tls.Dial("tcp", b.addr, &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /v1/agents/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"token\":")
	// Far longer than the deadline: the server must answer or close well
	// before this.
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server kept a stalled unauthenticated request open")
		}
		t.Logf("connection closed after %s: %v", time.Since(start), err)
		return
	}
	resp.Body.Close()
	t.Logf("answered %d after %s (deadline %s)", resp.StatusCode, time.Since(start), timeout)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("connection still open after the timeout: %v", err)
	}
}

// Unauthenticated endpoints are rate-limited per client address.
func TestUnauthenticatedEndpointsAreRateLimited(t *testing.T) {
	b := startBedWith(t, false, 0, func(c *node.Config) { c.UnauthenticatedRate, c.UnauthenticatedBurst = 0.01, 3 })
	codes := map[int]int{}
	for range 5 {
		codes[register(t, b, "gh1.aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "uid")]++
	}
	if codes[http.StatusUnauthorized] != 3 || codes[http.StatusTooManyRequests] != 2 {
		t.Fatalf("answers %v, want 3 refusals then 2 rate-limited", codes)
	}
	// Health checks are not limited.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1"}}}
	defer c.CloseIdleConnections()
	for range 10 {
		resp, err := c.Get("https://" + b.addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("healthz: %d", resp.StatusCode)
		}
	}
}

// HTTP/1.1 and HTTP/2 header limits are the configured ones (issue 9,
// defect 7): a header over MaxHeaderBytes is refused, and an HTTP/2
// CONTINUATION flood draws GOAWAY soon after MaxHeaderBytes, not after
// megabytes.
func TestHeaderLimits(t *testing.T) {
	b := newBed(t)
	limit := node.DefaultConfig().MaxHeaderBytes
	tlsCfg := func(proto string) *tls.Config {
		return &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1", NextProtos: []string{proto}}
	}

	t.Run("http1", func(t *testing.T) {
		conn, err := tls.Dial("tcp", b.addr, tlsCfg("http/1.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", limit+8192))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})

	t.Run("http2", func(t *testing.T) {
		conn, fr := h2Dial(t, b)
		defer conn.Close()
		// The server's settings say its limits.
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok {
			t.Fatalf("first frame %T", f)
		}
		if v, _ := sf.Value(http2.SettingMaxConcurrentStreams); v != uint32(node.DefaultConfig().MaxConcurrentStreams) {
			t.Fatalf("MAX_CONCURRENT_STREAMS %d", v)
		}
		if v, _ := sf.Value(http2.SettingMaxHeaderListSize); v == 0 || v > uint32(limit+1024) {
			t.Fatalf("MAX_HEADER_LIST_SIZE %d, want about %d", v, limit)
		}
		// A header block of 8 MiB, HPACK-encoded, sent as HEADERS and
		// CONTINUATION frames until the server gives up on the connection.
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/healthz"}, {Name: ":authority", Value: "x"}} {
			enc.WriteField(hf)
		}
		// Many fields of 1 KiB, each within any per-string limit, 8 MiB
		// in all.
		for i := range 8 << 10 {
			enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-flood-%d", i), Value: strings.Repeat("a", 1000), Sensitive: true})
		}
		goaway := make(chan *http2.GoAwayFrame, 1)
		go func() {
			defer close(goaway)
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if g, ok := f.(*http2.GoAwayFrame); ok {
					goaway <- g
					return
				}
			}
		}()
		const chunk = 16 << 10
		data := block.Bytes()
		sent := 0
		var got *http2.GoAwayFrame
	send:
		for sent < len(data) {
			frag := data[sent:min(sent+chunk, len(data))]
			var err error
			if sent == 0 {
				err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag, EndStream: true})
			} else {
				err = fr.WriteContinuation(1, sent+len(frag) == len(data), frag)
			}
			if err != nil {
				break // the server closed the connection
			}
			sent += len(frag)
			// Paced, so that what is counted is what the server read
			// before giving up, not what the socket buffers held.
			select {
			case got = <-goaway:
				break send
			case <-time.After(5 * time.Millisecond):
			}
		}
		if got == nil {
			select {
			case got = <-goaway:
			case <-time.After(10 * time.Second):
			}
		}
		t.Logf("CONTINUATION flood: %d bytes of header block sent before the server ended the connection (GOAWAY %v); limit %d", sent, got, limit)
		if got == nil && sent >= len(data) {
			t.Fatal("the server read an 8 MiB header block")
		}
		if sent > 4*limit {
			t.Fatalf("the server read %d bytes of headers before giving up; the limit is %d", sent, limit)
		}
	})
}

// A client past MaxConcurrentStreams gets the extra stream refused (issue
// 9, defect 7). Registration streams whose body never comes stay open
// (until the read deadline), so they hold their slots.
func TestHTTP2ConcurrentStreamsLimit(t *testing.T) {
	const limit = 4
	b := startBedWith(t, false, 0, func(c *node.Config) {
		c.MaxConcurrentStreams, c.UnauthenticatedRate, c.UnauthenticatedBurst = limit, 1000, 1000
	})
	conn, fr := h2Dial(t, b)
	defer conn.Close()
	// Wait for the server's settings and acknowledge them, so that its
	// limit is in force.
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			fr.WriteSettingsAck()
			break
		}
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := range limit + 1 {
		registrationHeaders(enc, &block)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	extra := uint32(2*limit + 1)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no refusal of stream %d: %v", extra, err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if f.StreamID == extra {
				t.Logf("stream %d refused: %v", extra, f.ErrCode)
				return
			}
			t.Fatalf("stream %d reset (%v), but it was within the limit", f.StreamID, f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v instead of refusing one stream", f.ErrCode)
		}
	}
}

// Rapid reset (CVE-2023-44487): a client that opens streams and resets
// them at once, thousands of times, cannot make the node run more than a
// bounded number of handlers. Go's server runs at most MaxConcurrentStreams
// handlers per connection, queues four times as many, and beyond that ends
// the connection with ENHANCE_YOUR_CALM; this holds it to that, measured
// as the node process's goroutines during the flood.
func TestHTTP2RapidResetIsBounded(t *testing.T) {
	const limit, pairs = 8, 5000
	b := startBedWith(t, false, 0, func(c *node.Config) {
		c.MaxConcurrentStreams, c.UnauthenticatedRate, c.UnauthenticatedBurst = limit, 1e6, 1e6
	})
	conn, fr := h2Dial(t, b)
	defer conn.Close()
	var frames atomic.Int64
	var goaway atomic.Pointer[http2.GoAwayFrame]
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			frames.Add(1)
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goaway.Store(g)
			}
		}
	}()
	base := runtime.NumGoroutine()
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := int64(runtime.NumGoroutine()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	sent := 0
	for i := range pairs {
		registrationHeaders(enc, &block)
		id := uint32(2*i + 1)
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true}) != nil ||
			fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
		sent++
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	close(stop)
	<-sampled
	conn.Close()
	<-readDone
	g := goaway.Load()
	t.Logf("rapid reset: %d HEADERS+RST_STREAM pairs written; goroutines %d before, at most %d during; GOAWAY %v", sent, base, peak.Load(), g)
	if grew := peak.Load() - int64(base); grew > 4*limit+64 {
		t.Fatalf("the flood raised the goroutines by %d; the limit allows about %d handlers", grew, 5*limit)
	}
	// The node still serves.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1"}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + b.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// h2Dial opens an HTTP/2 connection to the bed's node by hand: the
// preface and our (empty) settings sent, nothing read.
func h2Dial(t *testing.T, b *bed) (*tls.Conn, *http2.Framer) {
	t.Helper()
	conn, err := tls.Dial("tcp", b.addr, &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return conn, fr
}

// registrationHeaders encodes into block (reset first) the header block of
// an agent registration whose 1000-byte body never comes: a stream that
// holds its slot until the read deadline.
func registrationHeaders(enc *hpack.Encoder, block *bytes.Buffer) {
	block.Reset()
	for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/v1/agents/register"},
		{Name: ":authority", Value: "x"}, {Name: "content-type", Value: "application/json"}, {Name: "content-length", Value: "1000"}} {
		enc.WriteField(hf)
	}
}
