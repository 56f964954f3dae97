package node_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/node"
	"github.com/gatehouse-dev/gatehouse/tunnel"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
)

// One Kubernetes control plane serves every test in this package.
var shared struct {
	once sync.Once
	kube *testenv.Kube
	err  error
}

func sharedKube(t testing.TB) *testenv.Kube {
	t.Helper()
	shared.once.Do(func() {
		shared.kube, shared.err = testenv.StartKube(context.Background(), testenv.DefaultKubeConfig())
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.kube
}

func TestMain(m *testing.M) {
	kafkatest.ServeIfChild() // BenchmarkAuditCost's broker process
	code := m.Run()
	if shared.kube != nil {
		shared.kube.Close()
	}
	if code == 0 {
		if err := goleak.Find(
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const clusterID = "dev"

// bed is a gateway node in front of the shared cluster, with one agent.
type bed struct {
	t       testing.TB
	kube    *testenv.Kube
	dir     string
	clock   *clock
	auth    *ca.Authority
	grants  *control.StaticGrants
	store   *store.Store
	org     string // the store organization of the bed
	project string // the store project of the bed's clusters

	nodeGrants node.Grants // b.grants, or the store and policy
	registry   *tunnel.Registry
	audit      *audit.Memory
	addr       string
	node       *node.Node
	jit        *agent.JIT

	stopNode, stopAgent func()
	tweak               func(*node.Config) // of the node's configuration, if set
	agentClient         *tunnel.Client
	proxy               *agent.Proxy
}

// clock is an adjustable clock for certificate expiry.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Set(d time.Duration) {
	c.mu.Lock()
	c.offset = d
	c.mu.Unlock()
}

// newBed returns a bed whose grants are a fixed table (b.grants), for
// tests of the gateway itself.
func newBed(t testing.TB) *bed { return startBed(t, false, 0) }

// newPolicyBed returns a bed whose grants come from the store and the
// policy engine (b.access), as in production.
func newPolicyBed(t testing.TB) *bed { return startBed(t, true, 0) }

func startBed(t testing.TB, policyBacked bool, cacheTTL time.Duration) *bed {
	return startBedWith(t, policyBacked, cacheTTL, nil)
}

// startBedWith is startBed with tweak applied to the node's configuration.
func startBedWith(t testing.TB, policyBacked bool, cacheTTL time.Duration, tweak func(*node.Config)) *bed {
	t.Helper()
	k := sharedKube(t)
	b := &bed{t: t, kube: k, dir: t.TempDir(), clock: &clock{}, grants: &control.StaticGrants{}, audit: &audit.Memory{}, tweak: tweak}
	b.openStore()
	b.nodeGrants = b.grants
	if policyBacked {
		engine, err := policy.New(b.store)
		if err != nil {
			t.Fatal(err)
		}
		b.nodeGrants = &control.Access{Store: b.store, Policy: engine, CacheTTL: cacheTTL}
	}
	var err error
	if b.auth, err = ca.New(ca.Config{Name: "test", Now: b.clock.Now}); err != nil {
		t.Fatal(err)
	}
	b.registry = tunnel.NewRegistry(nil)
	t.Cleanup(func() { b.registry.Close() })
	b.startNode("127.0.0.1:0")
	b.startAgent()
	return b
}

func (b *bed) startNode(addr string) {
	t := b.t
	cert, err := b.auth.IssueServer([]string{"127.0.0.1", "localhost", "*.k8s.test"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	cfg.Addr, cfg.Certificate, cfg.Verifier, cfg.Grants, cfg.Registry, cfg.Audit, cfg.Now = addr, cert, b.auth, b.nodeGrants, b.registry, b.audit, b.clock.Now
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Registrar, cfg.AgentIssuer = b.store, b.auth
	if b.tweak != nil {
		b.tweak(&cfg)
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.node = n
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer acancel()
	a, err := n.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	b.addr = a.String()
	var once sync.Once
	b.stopNode = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("node Run: %v", err)
			}
		})
	}
	t.Cleanup(b.stopNode)
}

// agentTLS returns a client certificate for kind "agent" or "user".
func (b *bed) clientCert(kind, name string, ttl time.Duration) (tls.Certificate, []byte, []byte) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		b.t.Fatal(err)
	}
	var chain []byte
	if kind == "agent" {
		chain, err = b.auth.IssueAgent(context.Background(), name, key.Public(), ttl)
	} else {
		chain, err = b.auth.IssueUser(context.Background(), name, nil, key.Public(), ttl)
	}
	if err != nil {
		b.t.Fatal(err)
	}
	c, err := tls.X509KeyPair(chain, keyPEM)
	if err != nil {
		b.t.Fatal(err)
	}
	return c, chain, keyPEM
}

func (b *bed) startAgent() {
	t := b.t
	cs, err := b.kube.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "gatehouse-system"}}, metav1.CreateOptions{}); err != nil && !isAlreadyExists(err) {
		t.Fatal(err)
	}
	// The agent's own credentials: the admin for now. The least-privilege
	// bootstrap manifest replaces this with its service account.
	b.jit = agent.NewJIT(cs, "gatehouse-system", time.Hour, b.clock.Now)
	b.jit.WaitEffective(b.kube.RESTConfig())
	b.proxy, err = agent.NewProxy(b.kube.RESTConfig(), b.jit, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, _ := b.clientCert("agent", clusterID, 24*time.Hour)
	b.agentClient = b.runTunnelClient(cert, b.proxy, agent.Controller(b.jit, b.proxy))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !b.registry.Connected(clusterID) {
		select {
		case <-ctx.Done():
			t.Fatal("agent did not connect")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// runTunnelClient runs a tunnel client with cert until the test ends (or
// stopAgent).
func (b *bed) runTunnelClient(cert tls.Certificate, h *agent.Proxy, ctl tunnel.ControlHandler) *tunnel.Client {
	t := b.t
	cfg := tunnel.DefaultClientConfig()
	cfg.GatewayAddr = b.addr
	cfg.ServerName = "127.0.0.1"
	cfg.RootCAs = b.auth.RootPool()
	cfg.GetCertificate = func() (*tls.Certificate, error) { return &cert, nil }
	cfg.Handler = h
	cfg.Control = ctl
	cfg.Proxy = nil
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
	var once sync.Once
	b.stopAgent = func() {
		once.Do(func() {
			cancel()
			<-done
			h.Close()
		})
	}
	t.Cleanup(b.stopAgent)
	return c
}

// kubeconfig writes a kubeconfig for a person through the gateway.
func (b *bed) kubeconfig(user string, ttl time.Duration) string {
	_, chain, key := b.clientCert("user", user, ttl)
	path := filepath.Join(b.dir, user+".kubeconfig")
	if err := testenv.WriteKubeconfig(path, "https://"+b.addr+"/k8s/"+clusterID, b.auth.RootPEM(), user, chain, key, ""); err != nil {
		b.t.Fatal(err)
	}
	return path
}

func certPool(pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemBytes)
	return p
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// openStore gives the bed an embedded store (the one `gatehouse dev` uses)
// with an organization and a project for its clusters.
func (b *bed) openStore() {
	t := b.t
	ctx := context.Background()
	cfg := store.DefaultConfig()
	cfg.DSN, cfg.Now = filepath.Join(b.dir, "gatehouse.db"), b.clock.Now
	s, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	org := &store.Org{Name: "test"}
	if err := s.CreateOrg(ctx, org); err != nil {
		t.Fatal(err)
	}
	p := &store.Project{OrgID: org.ID, Name: "default"}
	if err := s.CreateProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	b.store, b.org, b.project = s, org.ID, p.ID
	// The bed's own cluster.
	if err := s.CreateCluster(ctx, &store.Cluster{Name: clusterID, ProjectID: p.ID}); err != nil {
		t.Fatal(err)
	}
}

// bootstrapToken registers a cluster in the store and returns a token for
// its agent.
func (b *bed) bootstrapToken(cluster string, ttl time.Duration) string {
	ctx := context.Background()
	c := &store.Cluster{Name: cluster, ProjectID: b.project}
	if err := b.store.CreateCluster(ctx, c); err != nil {
		b.t.Fatal(err)
	}
	token, err := b.store.CreateBootstrapToken(ctx, c.ID, ttl)
	if err != nil {
		b.t.Fatal(err)
	}
	return token
}
