package tunnel

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"
)

// writeLog is a connection that records each write.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func (w *writeLog) Close() error { return nil }

func (w *writeLog) log() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

func frameHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:], 7)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestCoalesceWrites(t *testing.T) {
	w := &writeLog{}
	c := CoalesceWrites(w)
	defer c.Close()
	// A data frame: header and body leave in one write.
	if n, err := c.Write(frameHeader(yamuxTypeData, 5)); n != yamuxHeaderSize || err != nil {
		t.Fatal(n, err)
	}
	if n, err := c.Write([]byte("hello")); n != 5 || err != nil {
		t.Fatal(n, err)
	}
	// A window update (no body) goes at once.
	c.Write(frameHeader(1, 1024))
	// A large body: two writes, in order.
	big := bytes.Repeat([]byte{'x'}, coalesceMax+1)
	c.Write(frameHeader(yamuxTypeData, uint32(len(big))))
	c.Write(big)
	got := w.log()
	if len(got) != 4 || !bytes.Equal(got[0], append(frameHeader(yamuxTypeData, 5), "hello"...)) ||
		!bytes.Equal(got[1], frameHeader(1, 1024)) || len(got[2]) != yamuxHeaderSize || len(got[3]) != len(big) {
		t.Fatalf("writes: %d %q", len(got), got)
	}
	// A header whose body never comes is not held for ever.
	c.Write(frameHeader(yamuxTypeData, 3))
	deadline := time.Now().Add(5 * time.Second)
	for len(w.log()) != 5 {
		if time.Now().After(deadline) {
			t.Fatal("a held header was never flushed")
		}
		time.Sleep(time.Millisecond)
	}
}
