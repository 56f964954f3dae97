package ring_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/ring"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

var gossipKey = []byte("0123456789abcdef0123456789abcdef")

// gw is one gateway node of the test: a tunnel registry with an agent
// listener, a peer endpoint and a ring member.
type gw struct {
	name    string
	reg     *tunnel.Registry
	agents  string // agent listener address
	peers   *ring.Peers
	ring    *ring.Ring
	tunnels *ring.Tunnels
}

func startGW(t testing.TB, auth *ca.Authority, name string, seeds ...string) *gw {
	t.Helper()
	cert, err := auth.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	g := &gw{name: name, reg: tunnel.NewRegistry(nil)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Agents.
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{tunnel.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	g.agents = l.Addr().String()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := c.(*tls.Conn)
				if tc.HandshakeContext(ctx) != nil {
					tc.Close()
					return
				}
				cluster, notAfter, err := auth.VerifyAgent(tc.ConnectionState().PeerCertificates)
				if err != nil {
					tc.Close()
					return
				}
				g.reg.Serve(ctx, cluster, tc, tunnel.ServeOptions{NotAfter: notAfter})
			}()
		}
	}()
	// Peers.
	g.peers, err = ring.NewPeers(ring.PeerConfig{Addr: "127.0.0.1:0", GetCertificate: func() *tls.Certificate { return &cert },
		Roots: auth.RootPool(), Verifier: auth, Local: g.reg})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.peers.Serve(ctx)
	}()
	// Membership.
	rc := ring.DefaultConfig()
	rc.Name, rc.BindAddr, rc.Key, rc.Seeds = name, "127.0.0.1:0", gossipKey, seeds
	rc.Meta = ring.Meta{PeerAddr: g.peers.Addr()}
	if g.ring, err = ring.New(rc); err != nil {
		t.Fatal(err)
	}
	g.tunnels = &ring.Tunnels{Ring: g.ring, Local: g.reg, Peers: g.peers, Wait: time.Second}
	t.Cleanup(func() {
		l.Close()
		cancel()
		g.ring.Close()
		g.peers.Close()
		g.reg.Close()
		wg.Wait()
	})
	return g
}

// agentHandler answers with the person the identity frame names, and
// upgrades "echo" requests to a byte echo (standing for exec and
// port-forward).
var agentHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	h, ok := tunnel.HeaderFromContext(r.Context())
	if !ok {
		http.Error(w, "no identity", http.StatusBadRequest)
		return
	}
	if r.Header.Get("Upgrade") == "echo" {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		io.Copy(c, rw)
		return
	}
	fmt.Fprintf(w, "%s %s", h.User, r.URL.Path)
})

func runAgent(t testing.TB, auth *ca.Authority, cluster, addr string) *tunnel.Client {
	t.Helper()
	key, keyPEM, _ := pki.NewKey()
	chain, err := auth.IssueAgent(context.Background(), cluster, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(chain, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tunnel.DefaultClientConfig()
	cfg.GatewayAddr, cfg.ServerName, cfg.RootCAs, cfg.Proxy = addr, "127.0.0.1", auth.RootPool(), nil
	cfg.GetCertificate = func() (*tls.Certificate, error) { return &cert, nil }
	cfg.Handler = agentHandler
	c, err := tunnel.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// client sends HTTP through t.Open, as the node's proxy does.
func client(tn *ring.Tunnels, cluster, user string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return tn.Open(ctx, cluster, &tunnel.Header{RequestID: "r", User: user, Grants: []grant.Grant{{Role: grant.View}}})
		},
	}}
}

// A request that reaches a node other than the tunnel's owner is forwarded
// to the owner, one hop, with the identity in the peer's frame; an upgrade
// works across the hop; a node certificate is needed to be a peer.
func TestForwardingToTheOwner(t *testing.T) {
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	a := startGW(t, auth, "a")
	b := startGW(t, auth, "b", a.ring.GossipAddr())
	testenv.Eventually(t, 10*time.Second, testenv.Cond("both members", func() bool { return len(a.ring.Members()) == 2 && len(b.ring.Members()) == 2 }))
	// A cluster each node owns; the agent of each goes to its owner.
	byOwner := map[string]string{}
	for i := 0; len(byOwner) < 2 && i < 100; i++ {
		cl := fmt.Sprintf("c%d", i)
		if o, ok := a.ring.Owner(cl); ok && byOwner[o.Name] == "" {
			byOwner[o.Name] = cl
		}
	}
	nodes := map[string]*gw{"a": a, "b": b}
	for owner, cl := range byOwner {
		runAgent(t, auth, cl, nodes[owner].agents)
		testenv.Eventually(t, 10*time.Second, testenv.Cond("the agent of "+cl, func() bool { return nodes[owner].reg.Connected(cl) }))
	}
	for owner, cl := range byOwner {
		for _, via := range []*gw{a, b} {
			resp, err := client(via.tunnels, cl, "ada").Get("http://" + cl + "/api/v1/namespaces")
			if err != nil {
				t.Fatalf("%s through %s (owner %s): %v", cl, via.name, owner, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "ada /api/v1/namespaces" {
				t.Fatalf("%s through %s: %q", cl, via.name, body)
			}
		}
	}
	// An upgraded stream across the hop.
	other := map[string]*gw{"a": b, "b": a}
	for owner, cl := range byOwner {
		conn, err := other[owner].tunnels.Open(context.Background(), cl, &tunnel.Header{RequestID: "r", User: "ada", Grants: []grant.Grant{{Role: grant.Edit}}})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /exec HTTP/1.1\r\nHost: %s\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n", cl)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade across the hop: %v %v", resp, err)
		}
		fmt.Fprint(conn, "ping\n")
		line, err := br.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo across the hop: %q %v", line, err)
		}
		conn.Close()
	}
	// A cluster no node holds: refused after the wait, not forwarded on.
	if _, err := a.tunnels.Open(context.Background(), "nowhere", &tunnel.Header{User: "ada", Grants: []grant.Grant{{Role: grant.View}}}); !errors.Is(err, tunnel.ErrNoTunnel) {
		t.Fatalf("no tunnel anywhere: %v", err)
	}
	// Only a node certificate makes a peer.
	key, keyPEM, _ := pki.NewKey()
	chain, _ := auth.IssueAgent(context.Background(), "c0", key.Public(), time.Hour)
	agentCert, _ := tls.X509KeyPair(chain, keyPEM)
	conn, err := tls.Dial("tcp", a.peers.Addr(), &tls.Config{RootCAs: auth.RootPool(), ServerName: "127.0.0.1", NextProtos: []string{ring.PeerALPN}, Certificates: []tls.Certificate{agentCert}})
	if err == nil {
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an agent certificate as a peer: %v", err)
	}
}
