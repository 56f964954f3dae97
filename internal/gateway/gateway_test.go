package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/gateway"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}

type clock struct {
	mu sync.Mutex
	d  time.Duration
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.d) }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.d += d; c.mu.Unlock() }

func openStore(t *testing.T, now func() time.Time) *store.Store {
	t.Helper()
	cfg := store.DefaultConfig()
	cfg.DSN, cfg.Now = filepath.Join(t.TempDir(), "gatehouse.db"), now
	st, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

// A node without a CA in the store refuses to start unless told to make
// one; with InitCA it makes it once and a second gateway opens the same.
func TestNewOpensOrMakesTheCA(t *testing.T) {
	st := openStore(t, nil)
	kek, err := ca.NewLocalKEK(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	cfg := gateway.DefaultConfig()
	cfg.Node.Addr, cfg.Store, cfg.KEK, cfg.Audit = "127.0.0.1:0", st, kek, &audit.Memory{}
	if _, err := gateway.New(context.Background(), cfg); !errors.Is(err, ca.ErrNoState) {
		t.Fatalf("no CA: %v", err)
	}
	cfg.InitCA = true
	g1, err := gateway.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g1.Close()
	g2, err := gateway.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if !bytes.Equal(g1.CA.RootPEM(), g2.CA.RootPEM()) {
		t.Fatal("two gateways on one store have two roots")
	}
	cfg.KEK = nil
	if _, err := gateway.New(context.Background(), cfg); !errors.Is(err, ca.ErrNoKEK) {
		t.Fatalf("no KEK: %v", err)
	}
}

// The serving certificate is renewed once two thirds of its life have
// passed, and the node serves the new one without a restart.
func TestServingCertificateRenewal(t *testing.T) {
	clk := &clock{}
	st := openStore(t, clk.Now)
	kek, _ := ca.NewLocalKEK(bytes.Repeat([]byte{2}, 32))
	cfg := gateway.DefaultConfig()
	cfg.Node.Addr, cfg.Store, cfg.KEK, cfg.Audit, cfg.InitCA, cfg.Now = "127.0.0.1:0", st, kek, &audit.Memory{}, true, clk.Now
	cfg.ServingCertTTL, cfg.CertCheckInterval = 24*time.Hour, 20*time.Millisecond
	g, err := gateway.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	url, err := g.Ready(ctx)
	if err != nil {
		t.Fatal(err)
	}
	served := func() []byte {
		t.Helper()
		conn, err := tls.Dial("tcp", url[len("https://"):], &tls.Config{RootCAs: g.CA.RootPool(), Time: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	first := served()
	clk.Advance(10 * time.Hour) // a third of its life: not yet
	time.Sleep(100 * time.Millisecond)
	if !bytes.Equal(served(), first) {
		t.Fatal("renewed before two thirds of its life")
	}
	clk.Advance(7 * time.Hour) // past two thirds
	testenv.Eventually(t, 10*time.Second, testenv.Cond("a renewed certificate", func() bool { return !bytes.Equal(served(), first) }))
	if left := g.ServingCertificate().Leaf.NotAfter.Sub(clk.Now()); left < 23*time.Hour {
		t.Fatalf("the renewed certificate has %s left", left)
	}
}

// A node that cannot listen makes Run return its error, not wait.
func TestRunReturnsWhenTheNodeCannotListen(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st := openStore(t, nil)
	kek, _ := ca.NewLocalKEK(bytes.Repeat([]byte{3}, 32))
	cfg := gateway.DefaultConfig()
	cfg.Node.Addr, cfg.Store, cfg.KEK, cfg.Audit, cfg.InitCA = l.Addr().String(), st, kek, &audit.Memory{}, true
	g, err := gateway.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Run on a taken address: %v", err)
	}
}

// Every certificate the node signs is recorded by serial (the unique key
// that keeps a serial from being issued twice): its serving certificate
// at start, and a person's credential through the API's signer.
func TestIssuedSerialsAreRecorded(t *testing.T) {
	st := openStore(t, nil)
	kek, _ := ca.NewLocalKEK(bytes.Repeat([]byte{3}, 32))
	cfg := gateway.DefaultConfig()
	cfg.Node.Addr, cfg.Store, cfg.KEK, cfg.Audit, cfg.InitCA = "127.0.0.1:0", st, kek, &audit.Memory{}, true
	g, err := gateway.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	serving := g.ServingCertificate().Leaf
	rec, err := st.LookupIssued(context.Background(), serving.SerialNumber.Text(16))
	if err != nil || rec.Kind != "node" || rec.Subject != "127.0.0.1" || !rec.NotAfter.Equal(serving.NotAfter.Truncate(time.Microsecond)) {
		t.Fatalf("the serving certificate's record: %+v %v", rec, err)
	}
	key, _, _ := pki.NewKey()
	chain, err := g.Signer().IssueUser(context.Background(), "ada", nil, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(chain)
	leaf, _ := x509.ParseCertificate(block.Bytes)
	if rec, err := st.LookupIssued(context.Background(), leaf.SerialNumber.Text(16)); err != nil || rec.Kind != "user" || rec.Subject != "ada" {
		t.Fatalf("the credential's record: %+v %v", rec, err)
	}
}
