package node_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/deploy/bootstrap"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/node"
	"github.com/gatehouse-dev/gatehouse/tunnel"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
)

var (
	_ node.AgentIssuer = (*ca.Authority)(nil)
	_ node.Verifier    = (*ca.Authority)(nil)
	_ node.Tunnels     = (*tunnel.Registry)(nil)
)

// TestBootstrapManifestRegistersLeastPrivilegeAgent applies the real
// bootstrap manifest, runs the agent with the manifest's own service account
// (not an admin), and uses the cluster through the gateway.
func TestBootstrapManifestRegistersLeastPrivilegeAgent(t *testing.T) {
	b := newBed(t)
	const ns, cluster = "gh-agent", "prod"
	token := b.bootstrapToken(cluster, time.Hour)
	manifest, err := bootstrap.Manifest(bootstrap.Params{
		Cluster: cluster, Namespace: ns, GatewayURL: "https://" + b.addr, GatewayCA: string(b.auth.RootPEM()),
		Token: token, Expires: time.Now().Add(time.Hour), Image: "gatehouse:dev", Replicas: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A server-side dry run validates every object (RBAC, Pod Security,
	// schema) but cannot create objects inside a namespace it only
	// pretends to create, so the namespace exists first.
	b.ok("", "create", "namespace", ns)
	if r := b.kubectl("", string(manifest), nil, "apply", "--dry-run=server", "-f", "-"); r.err != nil {
		t.Fatalf("dry run: %v\n%s", r.err, r.stderr)
	}
	if r := b.kubectl("", string(manifest), nil, "apply", "-f", "-"); r.err != nil {
		t.Fatalf("apply: %v\n%s", r.err, r.stderr)
	}
	// No rule of the agent's grants a wildcard.
	if out := b.ok("", "get", "clusterrole", "gatehouse-agent", "-o", "jsonpath={.rules[*].verbs}"); strings.Contains(out, "*") {
		t.Fatalf("agent ClusterRole has a wildcard: %s", out)
	}

	// What the Deployment would run, with the Deployment's credentials.
	cs, _ := b.kube.Clientset()
	ctx := context.Background()
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "gatehouse-agent", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, "gatehouse-bootstrap", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runAgent := func() (*agent.Agent, func()) {
		cfg := agent.DefaultConfig()
		cfg.Kube = b.kube.TokenRESTConfig(tr.Status.Token)
		cfg.Namespace = ns
		cfg.GatewayURL = string(sec.Data["gateway-url"])
		cfg.GatewayCA = sec.Data["gateway-ca.crt"]
		cfg.BootstrapToken = string(sec.Data["bootstrap-token"])
		cfg.Now, cfg.RenewCheckInterval = b.clock.Now, 20*time.Millisecond
		a, err := agent.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		stop := func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		}
		return a, stop
	}
	a, stop := runAgent()
	waitFor(t, 30*time.Second, func() bool { return b.registry.Connected(cluster) })
	if a.Cluster() != cluster {
		t.Fatalf("agent cluster %q", a.Cluster())
	}

	b.grants.Set("ada", cluster, grant.Grant{Role: "cluster-admin"})
	b.grants.Set("bob", cluster, grant.Grant{Role: "view", Namespace: "default"})
	ada := b.kubeconfigFor("ada", cluster)
	bob := b.kubeconfigFor("bob", cluster)
	if out := b.ok(ada, "get", "ns", "kube-system", "-o", "name"); strings.TrimSpace(out) != "namespace/kube-system" {
		t.Fatalf("admin through least-privilege agent: %q", out)
	}
	b.ok(bob, "-n", "default", "get", "pods")
	b.refused(bob, "forbidden", "-n", "default", "create", "configmap", "x")
	// A custom role: the least-privilege agent may write and bind it.
	b.grants.Set("cara", cluster, grant.Grant{Role: "read-root-ca", Namespace: "default", Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"kube-root-ca.crt"}, Verbs: []string{"get"},
	}}})
	cara := b.kubeconfigFor("cara", cluster)
	b.ok(cara, "-n", "default", "get", "configmap", "kube-root-ca.crt")
	b.refused(cara, "forbidden", "-n", "default", "get", "configmaps")

	// The token is spent: a second registration fails, from any cluster.
	for _, fp := range []string{"another-cluster-uid", "same"} {
		if code := register(t, b, token, fp); code != http.StatusUnauthorized {
			t.Fatalf("token reused (%s): %d", fp, code)
		}
	}
	// An expired token fails too.
	late := b.bootstrapToken("late", time.Minute)
	b.clock.Set(2 * time.Minute)
	if code := register(t, b, late, "uid-late"); code != http.StatusUnauthorized {
		t.Fatalf("expired token: %d", code)
	}
	b.clock.Set(0)

	// A restart needs no token: the identity Secret is used.
	stop()
	waitFor(t, 30*time.Second, func() bool { return !b.registry.Connected(cluster) })
	a2, stop2 := runAgent()
	defer stop2()
	waitFor(t, 30*time.Second, func() bool { return b.registry.Connected(cluster) })
	b.ok(ada, "get", "ns", "default")

	// Past half life the agent renews over the tunnel, without dropping
	// it, and keeps the new certificate in its Secret.
	old := a2.Certificate()
	b.clock.Set(13 * time.Hour)
	defer b.clock.Set(0)
	waitFor(t, 30*time.Second, func() bool { return a2.Certificate().SerialNumber.Cmp(old.SerialNumber) != 0 })
	renewed := a2.Certificate()
	if !renewed.NotAfter.After(old.NotAfter) || renewed.Subject.CommonName != cluster || renewed.PublicKeyAlgorithm != old.PublicKeyAlgorithm {
		t.Fatalf("renewed certificate: %s until %s (old until %s)", renewed.Subject.CommonName, renewed.NotAfter, old.NotAfter)
	}
	if a2.Sessions() != 1 || !b.registry.Connected(cluster) {
		t.Fatalf("tunnel re-established during renewal: %d sessions", a2.Sessions())
	}
	sec, err = cs.CoreV1().Secrets(ns).Get(ctx, "gatehouse-agent-identity", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(sec.Data["tls.crt"]); block == nil || !bytes.Equal(block.Bytes, renewed.Raw) {
		t.Fatal("identity Secret does not hold the renewed certificate")
	}
	b.ok(b.kubeconfigFor("ada", cluster), "get", "ns", "default")
}

func (b *bed) kubeconfigFor(user, cluster string) string {
	path := b.kubeconfig(user, time.Hour)
	cfg := strings.Replace(string(mustRead(b.t, path)), "/k8s/"+clusterID, "/k8s/"+cluster, 1)
	writeFile(b.t, path, cfg)
	return path
}

func register(t *testing.T, b *bed, token, fingerprint string) int {
	t.Helper()
	key, _, _ := pki.NewKey()
	der, _ := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	body, _ := json.Marshal(node.RegisterRequest{Token: token, Fingerprint: fingerprint,
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1"}}}
	defer c.CloseIdleConnections()
	resp, err := c.Post("https://"+b.addr+"/v1/agents/register", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
