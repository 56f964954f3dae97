package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
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

	"github.com/gatehouse-dev/gatehouse/control/ca"
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
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults the bootstrap manifest uses.
func DefaultConfig() Config {
	return Config{Namespace: "gatehouse-system", IdentitySecret: "gatehouse-agent-identity", TokenTTL: time.Hour}
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

	mu      sync.Mutex // guards cert
	cert    *tls.Certificate
	cluster string

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
	u, _ := url.Parse(cfg.GatewayURL)
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, log: log, cs: cs, pool: pool, addr: addr}, nil
}

// Cluster returns the cluster id once the agent has an identity.
func (a *Agent) Cluster() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cluster
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
	jit := NewJIT(a.cs, a.cfg.Namespace, a.cfg.TokenTTL, nil)
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
	cc.Logger = a.log
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
	err = client.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *Agent) loadOrRegister(ctx context.Context) error {
	sec, err := a.cs.CoreV1().Secrets(a.cfg.Namespace).Get(ctx, a.cfg.IdentitySecret, metav1.GetOptions{})
	if err == nil {
		if cert, cluster, err := parseIdentity(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]); err == nil && time.Now().Before(cert.Leaf.NotAfter) {
			a.setCert(cert, cluster)
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
	key, keyPEM, err := ca.NewKey()
	if err != nil {
		return err
	}
	csrDER, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gatehouse-agent"}}, key)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]string{
		"token":       a.cfg.BootstrapToken,
		"csr":         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
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
	// Keep the identity so a restart does not need the (spent) token.
	idSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.IdentitySecret, Namespace: a.cfg.Namespace, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: []byte(out.Certificate), corev1.TLSPrivateKeyKey: keyPEM},
	}
	if _, err := a.cs.CoreV1().Secrets(a.cfg.Namespace).Create(ctx, idSecret, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = a.cs.CoreV1().Secrets(a.cfg.Namespace).Update(ctx, idSecret, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("agent: save identity: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("agent: save identity: %w", err)
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
