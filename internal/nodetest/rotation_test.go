package nodetest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
)

// caPhases returns the CA generations node n trusts, by number, with their
// phases (nil if it does not answer).
func caPhases(t testing.TB, c *nodetest.Cluster, n *nodetest.Node) map[int64]string {
	code, body := c.Do(n, http.MethodGet, "/api/v1/status", c.AdminToken, nil)
	if code != http.StatusOK {
		return nil
	}
	var st apitypes.Status
	if json.Unmarshal(body, &st) != nil {
		return nil
	}
	out := map[int64]string{}
	for _, g := range st.CA {
		out[g.Number] = g.Phase
	}
	return out
}

// everyNode waits until cond holds of every node's CA phases.
func everyNode(t *testing.T, c *nodetest.Cluster, timeout time.Duration, what string, cond func(map[int64]string) bool) {
	t.Helper()
	eventually(t, timeout, what, func() bool {
		for _, n := range c.Nodes {
			if !cond(caPhases(t, c, n)) {
				return false
			}
		}
		return true
	})
}

// servingIssuer returns the common name of the intermediate that signed
// node n's serving certificate.
func servingIssuer(t testing.TB, n *nodetest.Node) string {
	conn, err := tls.Dial("tcp", n.Addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Issuer.CommonName
}

// issuerOf returns the common name of the intermediate that signed the
// first certificate of a PEM chain.
func issuerOf(t testing.TB, chain []byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(mustPEM(t, chain))
	if err != nil {
		t.Fatal(err)
	}
	return c.Issuer.CommonName
}

func mustPEM(t testing.TB, chain []byte) []byte {
	t.Helper()
	certs := nodetest.ParsePEM(chain)
	if len(certs) == 0 {
		t.Fatal("no certificate in the chain")
	}
	return certs[0]
}

// auditActions returns the actions of the system events in every node's
// audit log.
func auditActions(t *testing.T, c *nodetest.Cluster) string {
	var all strings.Builder
	for _, n := range c.Nodes {
		b, _ := os.ReadFile(filepath.Join(n.Dir, "audit.jsonl"))
		all.Write(b)
	}
	return all.String()
}

// A rotation of the intermediates under load (issue 11): three node
// processes, the loadtest tool's agents and clients through the front, and
// `gatehouse ca rotate` run against the store. The new generation is
// trusted by every node, then active; the nodes renew their serving
// certificates under it; people's credentials and agents' renewals come
// from it; not one request fails; the old generation is retired after its
// overlap, and what it signed is refused from then on. Every phase is in
// the audit log.
func TestRotationUnderLoad(t *testing.T) {
	c := nodetest.StartRing(t, 3)
	run := startLoad(t, c, 30, 6)
	settled(t, c, run, c.Nodes)
	agent := c.StartAgent("renewing", c.Nodes[0], fakeAPI())
	eventually(t, 10*time.Second, "the agent's tunnel", func() bool { return agent.Remote() != "" })
	_, token := c.Person("rotate@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	before := c.Credential(c.Nodes[0], token)
	for _, n := range c.Nodes {
		if got := servingIssuer(t, n); got != "gatehouse nodes" {
			t.Fatalf("%s serves a certificate of %q before the rotation", n.Name, got)
		}
	}

	stop := drive(t, run)
	time.Sleep(time.Second) // load before the rotation

	// The overlap is short so that the test sees the retirement; the load
	// stops before it (its clients' credentials are the old generation's).
	const overlap = 20 * time.Second
	start := time.Now()
	out := c.Gatehouse(append([]string{"ca", "rotate", "--overlap", overlap.String(), "--wait"}, c.StoreArgs()...)...)
	t.Logf("gatehouse ca rotate --wait, after %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	everyNode(t, c, 30*time.Second, "generation 2 active, 1 retiring, on every node", func(p map[int64]string) bool {
		return p[1] == "retiring" && p[2] == "active"
	})
	activated := time.Since(start)
	eventually(t, 30*time.Second, "every node serving under generation 2", func() bool {
		for _, n := range c.Nodes {
			if servingIssuer(t, n) != "gatehouse nodes (generation 2)" {
				return false
			}
		}
		return true
	})
	t.Logf("generation 2 active on every node %s after the command began; every node serving under it %s after", activated.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	after := c.Credential(c.Nodes[1], token)
	if got := issuerOf(t, nodetest.PEMChain(after)); got != "gatehouse users (generation 2)" {
		t.Fatalf("a credential after the rotation is signed by %q", got)
	}
	chain, err := agent.Renew(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := issuerOf(t, chain); got != "gatehouse agents (generation 2)" {
		t.Fatalf("an agent renewed after the rotation under %q", got)
	}
	for _, n := range c.Nodes {
		for _, cert := range []tls.Certificate{before, after} {
			if code := get(t, c, n, cert, "/k8s/renewing/api/v1/namespaces"); code != http.StatusOK {
				t.Fatalf("through %s during the overlap, a credential of %s: %d", n.Name, issuerOf(t, nodetest.PEMChain(cert)), code)
			}
		}
	}
	time.Sleep(time.Second) // load after the rotation
	res := stop()
	if res == nil {
		t.FailNow()
	}
	noneFailed(t, res, 500, "the rotation")
	if time.Since(start) > overlap {
		t.Fatalf("the load ran past the overlap (%s): its credentials may have been refused", overlap)
	}

	// The old generation retires after the overlap.
	everyNode(t, c, overlap+30*time.Second, "generation 1 retired on every node", func(p map[int64]string) bool {
		_, old := p[1]
		return !old && p[2] == "active"
	})
	t.Logf("generation 1 retired on every node %s after the command began", time.Since(start).Round(time.Millisecond))
	for _, n := range c.Nodes {
		if code := get(t, c, n, before, "/k8s/renewing/api/v1/namespaces"); code != http.StatusUnauthorized {
			t.Fatalf("through %s, a credential of the retired generation: %d", n.Name, code)
		}
		if code := get(t, c, n, after, "/k8s/renewing/api/v1/namespaces"); code != http.StatusOK {
			t.Fatalf("through %s, a credential of the active generation: %d", n.Name, code)
		}
	}
	actions := auditActions(t, c)
	// The rotation's phases, and the other system events this test
	// caused (issue 12).
	for _, a := range []string{"ca.rotation.standby", "ca.rotation.active", "ca.rotation.sunset", "ca.rotation.retired",
		"node.join", "ca.leader.elected", "tunnel.connect", "agent.register", "agent.renew"} {
		if !strings.Contains(actions, `"action":"`+a+`"`) {
			t.Errorf("no %s event in the audit logs", a)
		}
	}
	status := c.Gatehouse(append([]string{"ca", "status"}, c.StoreArgs()[:4]...)...)
	t.Logf("gatehouse ca status:\n%s", status)
}

// A rotation of the root (issue 11): the trust bundle holds both roots
// from the start, and reaches the agents over their tunnels; people's
// credentials come from the new root at once, while the nodes keep serving
// under the old one, so a kubeconfig that carries the old root alone goes
// on working through the overlap. Then the nodes serve under the new root:
// only the bundle verifies them, the agent (which kept the bundle) moves
// to another node all the same, and the old root's credentials are
// refused.
func TestRootRotation(t *testing.T) {
	c := nodetest.StartRing(t, 3)
	agent := c.StartAgent("rooted", c.Nodes[0], fakeAPI())
	eventually(t, 10*time.Second, "the agent's tunnel", func() bool { return agent.Remote() != "" })
	_, token := c.Person("root@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	before := c.Credential(c.Nodes[0], token)
	oldRoot := c.RootPEM()

	withRoots := func(roots []byte, cert tls.Certificate) *http.Client {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(roots)
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	}
	status := func(hc *http.Client, n *nodetest.Node) (int, error) {
		defer hc.CloseIdleConnections()
		resp, err := hc.Get(n.URL() + "/k8s/rooted/api/v1/namespaces")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	const overlap = 10 * time.Second
	start := time.Now()
	out := c.Gatehouse(append([]string{"ca", "rotate", "--root", "--overlap", overlap.String(), "--wait"}, c.StoreArgs()...)...)
	t.Logf("gatehouse ca rotate --root --wait:\n%s", out)
	everyNode(t, c, 30*time.Second, "generation 2 active on every node", func(p map[int64]string) bool { return p[2] == "active" })
	eventually(t, 10*time.Second, "the agent has the bundle of both roots", func() bool {
		b := agent.Trust()
		return len(nodetest.ParsePEM(b)) == 2 && bytes.Contains(b, bytes.TrimSpace(oldRoot))
	})
	// The agent renews during the overlap (with an overlap longer than an
	// agent's certificate lives, it would have on its own), onto the new
	// root.
	chain, err := agent.RenewAndUse(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := issuerOf(t, chain); got != "gatehouse agents (generation 2)" {
		t.Fatalf("the agent renewed under %q", got)
	}
	bundle := agent.Trust()
	c.SetTrust(bundle) // the test's own clients, as a person who ran gatehouse login again
	// The old root still verifies every node, and a credential of the new
	// root works through each.
	during := c.Credential(c.Nodes[1], token)
	if got := issuerOf(t, nodetest.PEMChain(during)); got != "gatehouse users (generation 2)" {
		t.Fatalf("a credential during the overlap is signed by %q", got)
	}
	for _, n := range c.Nodes {
		if got := servingIssuer(t, n); got != "gatehouse nodes" {
			t.Fatalf("%s serves under %q during the overlap", n.Name, got)
		}
		for _, cert := range []tls.Certificate{before, during} {
			if code, err := status(withRoots(oldRoot, cert), n); code != http.StatusOK {
				t.Fatalf("through %s during the overlap (old root only), a credential of %s: %d %v", n.Name, issuerOf(t, nodetest.PEMChain(cert)), code, err)
			}
		}
	}
	// After the overlap the nodes serve under the new root.
	everyNode(t, c, overlap+30*time.Second, "generation 1 retired on every node", func(p map[int64]string) bool {
		_, old := p[1]
		return !old && p[2] == "active"
	})
	t.Logf("the old root retired %s after the command began", time.Since(start).Round(time.Millisecond))
	for _, n := range c.Nodes {
		if got := servingIssuer(t, n); got != "gatehouse nodes (generation 2)" {
			t.Fatalf("%s serves under %q after the old root retired", n.Name, got)
		}
		if code, err := status(withRoots(bundle, during), n); code != http.StatusOK {
			t.Fatalf("through %s with the bundle: %d %v", n.Name, code, err)
		}
		if _, err := status(withRoots(oldRoot, during), n); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("through %s with the old root alone: %v (want a certificate error)", n.Name, err)
		}
		if code, err := status(withRoots(bundle, before), n); err == nil && code != http.StatusUnauthorized {
			t.Fatalf("through %s, a credential of the retired root: %d", n.Name, code)
		}
	}
	// The agent verifies the nodes with the bundle: moved off its node by
	// a drain, it connects to another, under the new root.
	var holder *nodetest.Node
	for _, n := range c.Nodes {
		if n.Addr == agent.Remote() {
			holder = n
		}
	}
	if holder == nil {
		t.Fatalf("no node holds the agent (%s)", agent.Remote())
	}
	sessions := agent.Sessions()
	holder.Stop()
	eventually(t, 30*time.Second, "the agent on another node", func() bool {
		return agent.Sessions() > sessions && agent.Remote() != "" && agent.Remote() != holder.Addr
	})
	for _, n := range c.Nodes {
		if n == holder {
			continue
		}
		if code, err := status(withRoots(bundle, during), n); code != http.StatusOK {
			t.Fatalf("through %s after the agent moved: %d %v", n.Name, code, err)
		}
	}
	holder.Start()
}
