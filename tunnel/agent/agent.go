package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/gatehouse-dev/gatehouse/deploy/bootstrap"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Config configures an Agent.
type Config struct {
	// Kube is how the agent reaches its own cluster with its own (least
	// privileged) service account: rest.InClusterConfig in a pod.
	Kube *rest.Config
	// Namespace is where the agent keeps people's service accounts and its
	// identity Secret.
	Namespace string
	// GatewayURL is the gateway's public URL, https://HOST:PORT.
	GatewayURL string
	// GatewayCA verifies the gateway (PEM).
	GatewayCA []byte
	// BootstrapToken registers the cluster the first time; afterwards the
	// identity Secret is used and the token is not needed.
	BootstrapToken string
	// IdentitySecret names the Secret that keeps the agent's key and
	// certificate across restarts.
	IdentitySecret string
	// TokenTTL is the lifetime of people's service-account tokens. One hour
	// keeps a leaked token's use short; tokens are cached to 80 % of it.
	TokenTTL time.Duration
	// IdleTTL is how long a person's service account may go unused before
	// the sweep deletes it. Eight hours outlives a working day's pauses;
	// the account is made again on the next request.
	IdleTTL time.Duration
	// SweepInterval is how often the sweep runs. Five minutes bounds how
	// long a stale account outlives its IdleTTL.
	SweepInterval time.Duration
	// RenewCheckInterval is how often the agent checks whether its
	// certificate has reached half life. A minute is nothing against a
	// lifetime of hours.
	RenewCheckInterval time.Duration
	// Version is the agent's build, reported to the gateway (gatehouse
	// status).
	Version string
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns the defaults the bootstrap manifest uses.
func DefaultConfig() Config {
	return Config{
		Namespace: bootstrap.DefaultNamespace, IdentitySecret: "gatehouse-agent-identity", TokenTTL: time.Hour,
		IdleTTL: 8 * time.Hour, SweepInterval: 5 * time.Minute, RenewCheckInterval: time.Minute,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	u, err := url.Parse(c.GatewayURL)
	switch {
	case c.Kube == nil:
		return errors.New("agent: Kube is required")
	case c.Namespace == "" || c.IdentitySecret == "":
		return errors.New("agent: Namespace and IdentitySecret are required")
	case err != nil || u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("agent: GatewayURL %q must be https://HOST[:PORT]", c.GatewayURL)
	case len(c.GatewayCA) == 0:
		return errors.New("agent: GatewayCA is required")
	case c.TokenTTL < 10*time.Minute:
		return errors.New("agent: TokenTTL must be at least 10 minutes (the API server's minimum)")
	case c.IdleTTL < c.TokenTTL:
		return errors.New("agent: IdleTTL must be at least TokenTTL (an account in use is stamped once per token)")
	case c.SweepInterval <= 0 || c.RenewCheckInterval <= 0:
		return errors.New("agent: SweepInterval and RenewCheckInterval must be positive")
	}
	return nil
}

// Agent runs in a cluster: it registers once, then keeps a tunnel to the
// gateway and serves people's requests through it.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	cs   kubernetes.Interface
	pool *x509.CertPool
	addr string // gateway host:port

	mu      sync.Mutex // guards cert, cluster and trust
	cert    *tls.Certificate
	cluster string
	// trust is the gateway's trust bundle as it last pushed it (a root
	// rotation), kept in the identity Secret; nil: GatewayCA.
	trust []byte

	client atomic.Pointer[tunnel.Client] // set by Run
}

// New returns an agent for cfg.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg.Kube)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cfg.GatewayCA) {
		return nil, errors.New("agent: GatewayCA holds no certificate")
	}
	addr, _, err := tunnel.GatewayAddr(cfg.GatewayURL)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Agent{cfg: cfg, log: log, cs: cs, pool: pool, addr: addr}, nil
}

// Cluster returns the cluster id once the agent has an identity.
func (a *Agent) Cluster() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cluster
}

// Sessions returns how many tunnels the agent has established since Run
// began: one while the first tunnel holds.
func (a *Agent) Sessions() int64 {
	c := a.client.Load()
	if c == nil {
		return 0
	}
	return c.Sessions()
}

// Connected reports whether the tunnel is up.
func (a *Agent) Connected() bool {
	c := a.client.Load()
	return c != nil && c.Connected()
}

// Run obtains the agent's identity (from its Secret, or by registering) and
// serves the tunnel until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.loadOrRegister(ctx); err != nil {
		return err
	}
	jit := NewJIT(a.cs, a.cfg.Namespace, a.cfg.TokenTTL, a.cfg.Now)
	jit.WaitEffective(a.cfg.Kube)
	proxy, err := NewProxy(a.cfg.Kube, jit, a.log)
	if err != nil {
		return err
	}
	defer proxy.Close()
	cc := tunnel.DefaultClientConfig()
	cc.GatewayAddr = a.addr
	cc.RootCAs = a.pool
	cc.Handler = proxy
	cc.Control = Controller(jit, proxy)
	cc.OnTrust = func(bundle []byte) { a.keepTrust(ctx, bundle) }
	cc.Logger = a.log
	cc.Hello = func() tunnel.Hello {
		h := tunnel.Hello{AgentVersion: a.cfg.Version}
		// The API server's version, asked at each connection: an upgraded
		// cluster shows its new version at the next reconnect.
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		raw, err := a.cs.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
		var v struct {
			GitVersion string `json:"gitVersion"`
		}
		if err == nil && json.Unmarshal(raw, &v) == nil {
			h.KubeVersion = v.GitVersion
		}
		return h
	}
	cc.GetCertificate = func() (*tls.Certificate, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.cert, nil
	}
	client, err := tunnel.NewClient(cc)
	if err != nil {
		return err
	}
	a.client.Store(client)
	a.log.Info("agent starting", "cluster", a.Cluster(), "gateway", a.cfg.GatewayURL)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // the loops end with the tunnel, whatever ended it
		wg.Wait()
	}()
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.every(ctx, a.cfg.RenewCheckInterval, func() { a.renewIfDue(ctx, client) })
	}()
	go func() {
		defer wg.Done()
		a.every(ctx, a.cfg.SweepInterval, func() {
			if n, err := jit.Sweep(ctx, a.cfg.IdleTTL); err != nil && ctx.Err() == nil {
				a.log.Warn("agent: sweep of idle service accounts failed", "err", err)
			} else if n > 0 {
				a.log.Info("agent: swept idle service accounts", "deleted", n)
			}
		})
	}()
	err = client.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Controller returns the handler of the gateway's control messages: a
// revoked person loses their service account, bindings and live requests; a
// changed grant reaches the bindings at once.
func Controller(jit *JIT, proxy *Proxy) tunnel.ControlHandler {
	return tunnel.ControlFunc(func(ctx context.Context, c *tunnel.Control) error {
		switch c.Op {
		case tunnel.OpRevoke:
			proxy.Forget(c.User)
			return jit.Remove(ctx, c.User)
		case tunnel.OpSync:
			return jit.Sync(ctx, c.User, c.Grants)
		}
		return fmt.Errorf("unknown op %q", c.Op)
	})
}

// every runs fn each interval until ctx ends.
func (a *Agent) every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// Certificate returns the agent's current certificate.
func (a *Agent) Certificate() *x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cert == nil {
		return nil
	}
	return a.cert.Leaf
}

// renewIfDue renews the agent's certificate over the tunnel once it has
// passed half its life, with a new key, and keeps it in the identity
// Secret. A failure is retried at the next check; the old certificate stays
// valid until then.
func (a *Agent) renewIfDue(ctx context.Context, client *tunnel.Client) {
	leaf := a.Certificate()
	if leaf == nil || a.cfg.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)/2)) {
		return
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		a.log.Error("agent: renew: key", "err", err)
		return
	}
	csrPEM, err := newCSR(key)
	if err != nil {
		a.log.Error("agent: renew: csr", "err", err)
		return
	}
	chain, err := client.RenewCertificate(ctx, csrPEM)
	if err != nil {
		a.log.Warn("agent: certificate renewal failed; will retry", "err", err, "notAfter", leaf.NotAfter)
		return
	}
	cert, cluster, err := parseIdentity(chain, keyPEM)
	if err != nil || cluster != a.Cluster() {
		a.log.Error("agent: renew: gateway sent a bad certificate", "err", err, "cluster", cluster)
		return
	}
	if err := a.saveIdentity(ctx, chain, keyPEM); err != nil {
		a.log.Warn("agent: renewed certificate not saved; a restart would use the old one", "err", err)
	}
	a.setCert(cert, cluster)
	a.log.Info("agent certificate renewed", "notAfter", cert.Leaf.NotAfter)
}

func newCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gatehouse-agent"}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// TrustKey is the identity Secret's key of the gateway's trust bundle, as
// the gateway last pushed it over the tunnel (a rotation of its root): the
// agent verifies the gateway with it rather than with GatewayCA.
const TrustKey = "gateway-ca.crt"

// keepTrust keeps the gateway's new trust bundle in the identity Secret
// (the tunnel client uses it already), so that a restarted agent verifies
// the gateway with it once the old root is retired.
func (a *Agent) keepTrust(ctx context.Context, bundle []byte) {
	a.mu.Lock()
	a.trust = bytes.Clone(bundle)
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	secrets := a.cs.CoreV1().Secrets(a.cfg.Namespace)
	sec, err := secrets.Get(ctx, a.cfg.IdentitySecret, metav1.GetOptions{})
	if err == nil {
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		sec.Data[TrustKey] = bundle
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		a.log.Error("agent: the gateway's new trust bundle is not kept; it holds until the agent restarts", "err", err)
		return
	}
	a.log.Info("agent: the gateway's new trust bundle kept")
}

// saveIdentity keeps the agent's key and certificate in its Secret, so a
// restart needs neither the (spent) token nor a new registration; and the
// gateway's trust bundle, if it pushed one.
func (a *Agent) saveIdentity(ctx context.Context, certPEM, keyPEM []byte) error {
	idSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.IdentitySecret, Namespace: a.cfg.Namespace, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	a.mu.Lock()
	if a.trust != nil {
		idSecret.Data[TrustKey] = a.trust
	}
	a.mu.Unlock()
	secrets := a.cs.CoreV1().Secrets(a.cfg.Namespace)
	if _, err := secrets.Create(ctx, idSecret, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err := secrets.Update(ctx, idSecret, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("agent: save identity: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("agent: save identity: %w", err)
	}
	return nil
}

func (a *Agent) loadOrRegister(ctx context.Context) error {
	sec, err := a.cs.CoreV1().Secrets(a.cfg.Namespace).Get(ctx, a.cfg.IdentitySecret, metav1.GetOptions{})
	if err == nil {
		if cert, cluster, err := parseIdentity(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]); err == nil && a.cfg.Now().Before(cert.Leaf.NotAfter) {
			a.setCert(cert, cluster)
			if b := sec.Data[TrustKey]; len(b) > 0 {
				if pool, err := tunnel.TrustPool(b); err == nil {
					a.mu.Lock()
					a.pool, a.trust = pool, b
					a.mu.Unlock()
					a.log.Info("agent: the gateway's trust bundle loaded from the identity Secret")
				} else {
					a.log.Warn("agent: the kept trust bundle is unusable; using the configured gateway CA", "err", err)
				}
			}
			a.log.Info("agent identity loaded", "cluster", cluster, "notAfter", cert.Leaf.NotAfter)
			return nil
		}
		a.log.Warn("agent identity unusable; registering again")
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("agent: read identity secret: %w", err)
	}
	if a.cfg.BootstrapToken == "" {
		return errors.New("agent: no identity and no bootstrap token")
	}
	ns, err := a.cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("agent: read cluster fingerprint: %w", err)
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return err
	}
	csrPEM, err := newCSR(key)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]string{
		"token":       a.cfg.BootstrapToken,
		"csr":         string(csrPEM),
		"fingerprint": string(ns.UID),
	})
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: a.pool, MinVersion: tls.VersionTLS12},
		Proxy:           http.ProxyFromEnvironment,
	}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(a.cfg.GatewayURL, "/")+"/v1/agents/register", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent: register: %w", err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent: register: %s: %s", resp.Status, bytes.TrimSpace(rb))
	}
	var out struct {
		Cluster     string `json:"cluster"`
		Certificate string `json:"certificate"`
	}
	if err := json.Unmarshal(rb, &out); err != nil {
		return fmt.Errorf("agent: register: %w", err)
	}
	cert, cluster, err := parseIdentity([]byte(out.Certificate), keyPEM)
	if err != nil {
		return fmt.Errorf("agent: register: %w", err)
	}
	if err := a.saveIdentity(ctx, []byte(out.Certificate), keyPEM); err != nil {
		return err
	}
	a.setCert(cert, cluster)
	a.log.Info("agent registered", "cluster", cluster, "notAfter", cert.Leaf.NotAfter)
	return nil
}

func (a *Agent) setCert(c *tls.Certificate, cluster string) {
	a.mu.Lock()
	a.cert, a.cluster = c, cluster
	a.mu.Unlock()
}

func parseIdentity(certPEM, keyPEM []byte) (*tls.Certificate, string, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, "", err
	}
	return &c, c.Leaf.Subject.CommonName, nil
}
