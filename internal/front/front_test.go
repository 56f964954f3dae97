package front

import (
	"io"
	"net"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend answers every connection with its name and closes it.
func backend(t *testing.T, name string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, name)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func read(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	return string(b)
}

// Connections go round robin over the backends, skipping one that
// refuses; Close ends everything.
func TestFrontSpreadsAndSkipsDownBackends(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	// A port with nothing behind it: a stopped node.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	down := l.Addr().String()
	l.Close()
	f, err := Listen("127.0.0.1:0", func() []string { return []string{a, down, b} })
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]int{}
	for range 30 {
		seen[read(t, f.Addr())]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 30 {
		t.Fatalf("spread: %v", seen)
	}
	t.Logf("30 connections: %v", seen)
	f.Close()
	f.Close()
	if c, err := net.Dial("tcp", f.Addr()); err == nil {
		c.Close()
		t.Fatal("the front accepts after Close")
	}
}

// With no backend up, a connection is closed at once.
func TestFrontWithNoBackend(t *testing.T) {
	f, err := Listen("127.0.0.1:0", func() []string { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := read(t, f.Addr()); got != "" {
		t.Fatalf("got %q", got)
	}
}
