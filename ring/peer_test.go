package ring_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/ring"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// The peer port demands a node certificate for every protocol but those
// listed as unauthenticated (a new node's enrolment), and a dialer without
// one reaches those alone; it verifies the other end as a node all the
// same.
func TestPeerPortDemandsANodeCertificate(t *testing.T) {
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	echo := func(alpn string) func(*tls.Conn) {
		return func(c *tls.Conn) {
			defer c.Close()
			got <- alpn
			io.WriteString(c, alpn)
		}
	}
	newPeers := func(cert *tls.Certificate) *ring.Peers {
		p, err := ring.NewPeers(ring.PeerConfig{Addr: "127.0.0.1:0", GetCertificate: func() *tls.Certificate { return cert },
			Roots: auth.RootPool(), Verifier: auth, Local: tunnel.NewRegistry(nil),
			Protocols:       map[string]func(*tls.Conn){"test-open/1": echo("open"), "test-closed/1": echo("closed")},
			Unauthenticated: []string{"test-open/1"}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	server := newPeers(&cert)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); server.Serve(ctx) }()
	t.Cleanup(func() { cancel(); server.Close(); wg.Wait() })
	// A node without a certificate yet.
	stranger := newPeers(nil)
	defer stranger.Close()
	read := func(c net.Conn) string {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	c, err := stranger.DialUnauthenticated(ctx, server.Addr(), "test-open/1")
	if err != nil {
		t.Fatalf("an unauthenticated protocol without a certificate: %v", err)
	}
	if out := read(c); out != "open" {
		t.Fatalf("read %q", out)
	}
	if c, err := stranger.DialUnauthenticated(ctx, server.Addr(), "test-closed/1"); err == nil {
		if out := read(c); out != "" {
			t.Fatalf("a protocol that demands a certificate answered one without: %q", out)
		}
	}
	// A node with a certificate reaches both.
	member := newPeers(&cert)
	defer member.Close()
	c, err = member.DialProtocol(ctx, server.Addr(), "test-closed/1")
	if err != nil {
		t.Fatal(err)
	}
	if out := read(c); out != "closed" {
		t.Fatalf("read %q", out)
	}
	// A server that is not a node is refused by the dialer.
	other, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	fake, err := other.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	impostor := newPeers(&fake)
	wg.Add(1)
	go func() { defer wg.Done(); impostor.Serve(ctx) }()
	defer impostor.Close()
	if c, err := stranger.DialUnauthenticated(ctx, impostor.Addr(), "test-open/1"); err == nil {
		c.Close()
		t.Fatal("an enrolling node trusted a server that is not a node of its authority")
	}
	if len(got) != 2 {
		t.Fatalf("the protocols served %d connections, want 2", len(got))
	}
}
