package node_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/node"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
)

func isAlreadyExists(err error) bool { return apierrors.IsAlreadyExists(err) }

type kubectlResult struct {
	stdout, stderr string
	err            error
}

func (b *bed) kubectl(kubeconfig, stdin string, env []string, args ...string) kubectlResult {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd, err := b.kube.Kubectl(ctx, kubeconfig, args...)
	if err != nil {
		b.t.Fatal(err)
	}
	cmd.Env = append(cmd.Env, env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err = cmd.Run()
	return kubectlResult{so.String(), se.String(), err}
}

// ok runs kubectl and fails the test unless it succeeds.
func (b *bed) ok(kubeconfig string, args ...string) string {
	b.t.Helper()
	r := b.kubectl(kubeconfig, "", nil, args...)
	if r.err != nil {
		b.t.Fatalf("kubectl %v: %v\n%s", args, r.err, r.stderr)
	}
	return r.stdout
}

// refused runs kubectl and fails the test unless it fails with want in its
// error output.
func (b *bed) refused(kubeconfig, want string, args ...string) {
	b.t.Helper()
	r := b.kubectl(kubeconfig, "", nil, args...)
	if r.err == nil {
		b.t.Fatalf("kubectl %v succeeded, want refusal %q\n%s", args, want, r.stdout)
	}
	if !strings.Contains(r.stderr, want) {
		b.t.Fatalf("kubectl %v: stderr %q does not contain %q", args, r.stderr, want)
	}
}

func runningPod(t testing.TB, b *bed, ns string) string {
	t.Helper()
	cs, err := b.kube.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "app", metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			return "app"
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod not running: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestKubectlThroughGatewayAsAdmin(t *testing.T) {
	b := newBed(t)
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	kc := b.kubeconfig("ada", time.Hour)

	if out := b.ok(kc, "get", "ns", "-o", "name"); !strings.Contains(out, "namespace/kube-system") {
		t.Fatalf("get ns: %q", out)
	}
	if out := b.ok(kc, "get", "ns", "default", "-o", "yaml"); !strings.Contains(out, "name: default") {
		t.Fatalf("get -o yaml: %q", out)
	}
	if out := b.ok(kc, "api-resources", "--api-group=apps", "-o", "name"); !strings.Contains(out, "deployments.apps") {
		t.Fatalf("api-resources: %q", out)
	}
	if out := b.ok(kc, "auth", "can-i", "delete", "nodes"); strings.TrimSpace(out) != "yes" {
		t.Fatalf("auth can-i as admin: %q", out)
	}
	// whoami through the gateway names the person's service account.
	if out := b.ok(kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); !strings.HasPrefix(out, "system:serviceaccount:gatehouse-system:gatehouse-") {
		t.Fatalf("whoami: %q", out)
	}
	b.ok(kc, "create", "namespace", "work")
	b.ok(kc, "-n", "work", "create", "configmap", "c1", "--from-literal=k=v")
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\n  namespace: work\ndata:\n  k: v\n"
	if r := b.kubectl(kc, cm, nil, "apply", "-f", "-"); r.err != nil {
		t.Fatalf("apply: %v %s", r.err, r.stderr)
	}
	if r := b.kubectl(kc, strings.Replace(cm, "k: v", "k: w", 1), nil, "apply", "--server-side", "-f", "-"); r.err != nil {
		t.Fatalf("apply --server-side: %v %s", r.err, r.stderr)
	}
	if out := b.ok(kc, "-n", "work", "get", "cm", "c2", "-o", "jsonpath={.data.k}"); out != "w" {
		t.Fatalf("after server-side apply: %q", out)
	}
	b.ok(kc, "-n", "work", "delete", "configmap", "c1", "c2")

	pod := runningPod(t, b, "work")
	if out := b.ok(kc, "-n", "work", "exec", pod, "--", "echo", "hi"); out != "hi\n" {
		t.Fatalf("exec: %q", out)
	}
	if r := b.kubectl(kc, "", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false"}, "-n", "work", "exec", pod, "--", "echo", "spdy"); r.err != nil || r.stdout != "spdy\n" {
		t.Fatalf("exec over SPDY: %q %v %s", r.stdout, r.err, r.stderr)
	}
	in := "through the tunnel " + rand.Text() + "\n"
	if r := b.kubectl(kc, in+"second line\n", nil, "-n", "work", "exec", "-i", pod, "--", "head", "-n", "1"); r.err != nil || r.stdout != in {
		t.Fatalf("exec -i: %q %v %s", r.stdout, r.err, r.stderr)
	}
	if out := b.ok(kc, "-n", "work", "logs", pod); !strings.Contains(out, "fake container started") {
		t.Fatalf("logs: %q", out)
	}
	portForward(t, b, kc, "work", pod, 8<<20)

	// Every request was audited with the person and what they did.
	var sawExecOpen, sawExecClose, sawCreate bool
	for _, ev := range b.audit.Events() {
		if ev.User != "ada" || ev.Cluster != clusterID || ev.Node == "" || ev.RequestID == "" {
			t.Fatalf("incomplete audit event %+v", ev)
		}
		switch {
		case ev.Subresource == "exec" && ev.Phase == audit.PhaseOpen:
			sawExecOpen = true
		case ev.Subresource == "exec" && ev.Phase == audit.PhaseClose:
			sawExecClose = true
		case ev.Verb == "create" && ev.Resource == "configmaps" && ev.Namespace == "work" && ev.Status == http.StatusCreated:
			sawCreate = true
		}
	}
	if !sawExecOpen || !sawExecClose || !sawCreate {
		t.Fatalf("audit: exec open %v close %v, create %v", sawExecOpen, sawExecClose, sawCreate)
	}
}

// portForward moves size bytes each way through kubectl port-forward via
// the gateway and checks them.
// portForward runs kubectl port-forward to the pod's echo port, sends size
// random bytes and checks that the same bytes come back. It returns how long
// the transfer took, from the first byte written to the last read.
func portForward(t testing.TB, b *bed, kc, ns, pod string, size int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd, err := b.kube.Kubectl(ctx, kc, "-n", ns, "port-forward", "--address=127.0.0.1", "pod/"+pod, ":8080")
	if err != nil {
		t.Fatal(err)
	}
	port, stop, err := testenv.PortForward(cmd, "8080", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, size)
	rand.Read(payload)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		errc <- err
	}()
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	if _, err := io.CopyN(h, conn, int64(size)); err != nil {
		t.Fatalf("port-forward read: %v (%s)", err, stop())
	}
	took := time.Since(start)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(payload); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("port-forward changed the bytes")
	}
	return took
}

func TestNamespaceGrantIsEnforcedByClusterRBAC(t *testing.T) {
	b := newBed(t)
	b.grants.Set("bob", clusterID, grant.Grant{Role: "edit", Namespace: "team-a"})
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	admin, kc := b.kubeconfig("ada", time.Hour), b.kubeconfig("bob", time.Hour)
	b.ok(admin, "create", "namespace", "team-a")
	b.ok(admin, "create", "namespace", "team-b")
	podB := runningPod(t, b, "team-b")

	b.ok(kc, "-n", "team-a", "create", "configmap", "mine", "--from-literal=a=b")
	b.ok(kc, "-n", "team-a", "get", "configmaps", "mine")
	b.refused(kc, "forbidden", "-n", "team-b", "get", "configmaps")
	b.refused(kc, "forbidden", "get", "namespaces")
	// An exec upgrade answered with 403 by the API server: kubectl gets
	// the refusal and nothing runs.
	b.refused(kc, "forbidden", "-n", "team-b", "exec", podB, "--", "touch", "/tmp/should-not-exist")

	// A person with no grant on the cluster is refused by the gateway.
	other := b.kubeconfig("carol", time.Hour)
	b.refused(other, `no access to cluster "dev"`, "get", "pods")

	// Losing the grant: the next request is refused; the service account's
	// bindings no longer match.
	b.grants.Set("bob", clusterID)
	b.refused(kc, `no access to cluster "dev"`, "-n", "team-a", "get", "configmaps")
}

func TestGatewayRefuses(t *testing.T) {
	b := newBed(t)
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	b.grants.Set("bob", clusterID, grant.Grant{Role: "view", Namespace: "default"})
	bob := b.kubeconfig("bob", time.Hour)

	t.Run("impersonation", func(t *testing.T) {
		// --raw skips discovery, whose refusal kubectl prints as "unknown".
		b.refused(bob, "impersonation is not allowed", "--as=system:admin", "get", "--raw", "/api/v1/namespaces/default/pods")
		b.refused(bob, "impersonation is not allowed", "--as=bob", "--as-group=system:masters", "get", "--raw", "/api/v1/namespaces/default/pods")
		for _, h := range []string{"Impersonate-User", "Impersonate-Group", "Impersonate-Uid", "Impersonate-Extra-Scopes"} {
			resp := b.rawGET(t, "bob", "/k8s/dev/api/v1/namespaces", map[string]string{h: "system:admin"})
			if resp.code != http.StatusForbidden || !strings.Contains(resp.body, "impersonation is not allowed") {
				t.Fatalf("%s: %d %s", h, resp.code, resp.body)
			}
		}
	})

	t.Run("client Authorization header is ignored", func(t *testing.T) {
		// An admin's token in the header must not lift bob above his grant.
		cs, _ := b.kube.Clientset()
		tok, err := cs.CoreV1().ServiceAccounts("kube-system").CreateToken(context.Background(), "clusterrole-aggregation-controller",
			&authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		resp := b.rawGET(t, "bob", "/k8s/dev/api/v1/namespaces", map[string]string{"Authorization": "Bearer " + tok.Status.Token})
		if resp.code != http.StatusForbidden || !strings.Contains(resp.body, "gatehouse-system:gatehouse-") {
			t.Fatalf("with a client token: %d %s", resp.code, resp.body)
		}
	})

	t.Run("certificate from another CA", func(t *testing.T) {
		// The cluster's own admin certificate: a CA the gateway does not know.
		resp := b.rawGETWith(t, b.kube.AdminCertificate(), "/k8s/dev/api/v1/namespaces", nil)
		if resp.code != http.StatusUnauthorized || !strings.Contains(resp.body, "client certificate refused") {
			t.Fatalf("foreign cert: %d %s", resp.code, resp.body)
		}
	})

	t.Run("expired certificate", func(t *testing.T) {
		b.clock.Set(-2 * time.Hour)
		old := b.kubeconfig("ada-old", time.Hour)
		b.grants.Set("ada-old", clusterID, grant.Grant{Role: "cluster-admin"})
		b.clock.Set(0)
		b.refused(old, "expired", "get", "--raw", "/api/v1/namespaces")
	})

	t.Run("agent certificate used by a person", func(t *testing.T) {
		cert, _, _ := b.clientCert("agent", clusterID, time.Hour)
		resp := b.rawGETWith(t, cert, "/k8s/dev/api/v1/namespaces", nil)
		if resp.code != http.StatusUnauthorized || !strings.Contains(resp.body, "not issued for this use") {
			t.Fatalf("agent cert as person: %d %s", resp.code, resp.body)
		}
	})

	t.Run("person certificate used as an agent", func(t *testing.T) {
		cert, _, _ := b.clientCert("user", "mallory", time.Hour)
		c := b.runTunnelClient(cert, b.proxy, nil)
		// The node refuses the connection at once (before its welcome, in
		// tunnel v2); the client retries. After two attempts the node has
		// still registered nothing for that name.
		deadline := time.Now().Add(30 * time.Second)
		for c.Attempts() < 2 {
			if time.Now().After(deadline) {
				t.Fatal("client did not retry")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if b.registry.Connected("mallory") || b.registry.Len() != 1 {
			t.Fatalf("a person's certificate opened a tunnel (tunnels: %d)", b.registry.Len())
		}
	})

	t.Run("path escaping the cluster", func(t *testing.T) {
		for _, p := range []string{"/k8s/dev/../other/api", "/k8s/dev/api/%2e%2e/%2e%2e/x", "/k8s/dev/api//v1", "/k8s/Dev/api", "/k8s/dev%2Fapi"} {
			resp := b.rawGET(t, "ada", p, nil)
			if resp.code != http.StatusBadRequest {
				t.Fatalf("%s: %d %s", p, resp.code, resp.body)
			}
		}
	})

	t.Run("upgrade to another protocol", func(t *testing.T) {
		resp := b.rawGET(t, "ada", "/k8s/dev/api/v1/namespaces", map[string]string{"Connection": "Upgrade", "Upgrade": "h2c"})
		if resp.code != http.StatusBadRequest || !strings.Contains(resp.body, "upgrade protocol not allowed") {
			t.Fatalf("h2c upgrade: %d %s", resp.code, resp.body)
		}
	})
}

func TestAgentAndGatewayRestarts(t *testing.T) {
	b := newBed(t)
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	kc := b.kubeconfig("ada", time.Hour)
	b.ok(kc, "get", "ns")

	// The gateway restarts on the same address: the agent reconnects.
	addr := b.addr
	b.stopNode()
	b.startNode(addr)
	waitFor(t, 60*time.Second, func() bool { return b.registry.Connected(clusterID) })
	b.ok(kc, "get", "ns")
	if b.agentClient.Sessions() < 2 {
		t.Fatalf("agent sessions %d, want a reconnect", b.agentClient.Sessions())
	}

	// The agent dies: requests get a clear 503, not a hang.
	b.stopAgent()
	waitFor(t, 30*time.Second, func() bool { return !b.registry.Connected(clusterID) })
	b.refused(kc, `cluster "dev" is not connected`, "get", "ns")
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, timeout, testenv.Cond("condition", cond))
}

type rawResponse struct {
	code int
	body string
}

func (b *bed) rawGET(t *testing.T, user, path string, headers map[string]string) rawResponse {
	cert, _, _ := b.clientCert("user", user, time.Hour)
	return b.rawGETWith(t, cert, path, headers)
}

// rawGETWith sends a GET with the exact path given (no client-side
// cleaning) over HTTP/1.1.
func (b *bed) rawGETWith(t *testing.T, cert tls.Certificate, path string, headers map[string]string) rawResponse {
	t.Helper()
	conn, err := tls.Dial("tcp", b.addr, &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, b.addr)
	for k, v := range headers {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("Connection: close\r\n\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return rawResponse{resp.StatusCode, string(body)}
}

func TestSplitClusterPath(t *testing.T) {
	for _, tc := range []struct {
		in, cluster, rest string
		ok                bool
	}{
		{"/k8s/dev/api/v1/pods", "dev", "/api/v1/pods", true},
		{"/k8s/dev", "dev", "/", true},
		{"/k8s/dev/", "dev", "/", true},
		{"/k8s/dev/apis/apps/v1/", "dev", "/apis/apps/v1/", true},
		{"/k8s/dev/../x", "", "", false},
		{"/k8s/dev/api/./v1", "", "", false},
		{"/k8s/dev/api//v1", "", "", false},
		{"/k8s/dev/%2e%2e/x", "", "", false},
		{"/k8s/dev%2fx/api", "", "", false},
		{"/k8s/DEV/api", "", "", false},
		{"/k8s//api", "", "", false},
		{"/other/dev/api", "", "", false},
		{`/k8s/dev/api\..\x`, "", "", false},
	} {
		c, r, err := node.SplitClusterPath(tc.in)
		if (err == nil) != tc.ok || c != tc.cluster || r != tc.rest {
			t.Errorf("%q: (%q, %q, %v), want (%q, %q, ok=%v)", tc.in, c, r, err, tc.cluster, tc.rest, tc.ok)
		}
	}
}

func FuzzSplitClusterPath(f *testing.F) {
	for _, s := range []string{"/k8s/dev/api/v1", "/k8s/dev/../x", "/k8s/a/%2e", "/k8s/x/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c, rest, err := node.SplitClusterPath(p)
		if err != nil {
			return
		}
		if c == "" || !strings.HasPrefix(rest, "/") || strings.Contains(rest, "/../") || strings.HasSuffix(rest, "/..") || strings.Contains(rest, "//") {
			t.Fatalf("accepted %q as (%q, %q)", p, c, rest)
		}
	})
}

// Health endpoints answer without a client certificate; nothing else does.
func TestHealthWithoutCertificate(t *testing.T) {
	b := newBed(t)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: b.auth.RootPool(), ServerName: "127.0.0.1"}}}
	defer c.CloseIdleConnections()
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/k8s/dev/api": 401, "/metrics-nope": 404} {
		resp, err := c.Get("https://" + b.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// A read-only person is refused secrets, exec, attach, port-forward and
// proxy by the gateway itself, even on a cluster whose RBAC was changed by
// hand to allow them (design 0001: defence in depth).
func TestReadOnlyRefusedByGatewayWhateverClusterRBAC(t *testing.T) {
	b := newBed(t)
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	b.grants.Set("vera", clusterID, grant.Grant{Role: "view"})
	admin, vera := b.kubeconfig("ada", time.Hour), b.kubeconfig("vera", time.Hour)
	pod := runningPod(t, b, "ro-demo")
	b.ok(admin, "-n", "ro-demo", "create", "secret", "generic", "db", "--from-literal=password=hunter2")
	// Her first request makes her service account; then someone binds it
	// to cluster-admin by hand, in the cluster.
	b.ok(vera, "-n", "ro-demo", "get", "pods")
	cs, err := b.kube.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "by-hand-vera"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "gatehouse-system", Name: agent.ServiceAccountName("vera")}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(context.Background(), crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), crb.Name, metav1.DeleteOptions{})
	})
	// The cluster would now let her do anything: creating a config map
	// (which view does not give) shows it.
	waitFor(t, 10*time.Second, func() bool {
		return b.kubectl(vera, "", nil, "-n", "ro-demo", "create", "configmap", "proof", "--from-literal=a=b").err == nil
	})
	const why = "does not include"
	b.refused(vera, why, "-n", "ro-demo", "get", "secret", "db")
	b.refused(vera, why, "get", "secrets", "-A")
	b.refused(vera, why, "-n", "ro-demo", "exec", pod, "--", "true")
	b.refused(vera, why, "-n", "ro-demo", "attach", pod)
	b.refused(vera, why, "-n", "ro-demo", "port-forward", "pod/"+pod, "18099:80")
	b.refused(vera, why, "get", "--raw", "/api/v1/namespaces/ro-demo/pods/"+pod+"/proxy/")
	// The refusals are audited as the gateway's, and the admin still may.
	refusedEvents := 0
	for _, ev := range b.audit.Events() {
		if ev.User == "vera" && ev.Status == http.StatusForbidden && strings.Contains(ev.Error, why) {
			refusedEvents++
		}
	}
	if refusedEvents < 6 {
		t.Fatalf("%d refusals audited, want at least 6", refusedEvents)
	}
	b.ok(admin, "-n", "ro-demo", "get", "secret", "db")
}

// Host routing (issue 10): https://CLUSTER.DOMAIN/PATH is PATH on CLUSTER,
// by Host or by TLS server name, so that clients which drop a server's
// path work; a Kubernetes-shaped request that names no cluster gets a
// Kubernetes Status that says how to name one, and Gatehouse's own API is
// still its own.
func TestHostRouting(t *testing.T) {
	b := startBedWith(t, false, 0, func(c *node.Config) { c.ClusterDomain = "k8s.test" })
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	cert, _, _ := b.clientCert("user", "ada", time.Hour)
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: b.auth.RootPool(), Certificates: []tls.Certificate{cert}},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, b.addr)
		},
	}}
	defer hc.CloseIdleConnections()
	_, port, _ := net.SplitHostPort(b.addr)
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("https://dev.k8s.test:" + port + "/api/v1/namespaces/default"); code != http.StatusOK || !strings.Contains(body, `"name":"default"`) {
		t.Fatalf("by host: %d %s", code, body)
	}
	if code, body := get("https://nosuch.k8s.test:" + port + "/api/v1/namespaces"); code != http.StatusForbidden {
		t.Fatalf("an unknown cluster by host: %d %s", code, body)
	}
	for _, path := range []string{"/api/v1/namespaces", "/apis", "/openapi/v3", "/version"} {
		code, body := get("https://localhost:" + port + path)
		if code != http.StatusNotFound || !strings.Contains(body, `"kind":"Status"`) || !strings.Contains(body, "names no cluster") || !strings.Contains(body, "--append-server-path") {
			t.Fatalf("%s without a cluster: %d %s", path, code, body)
		}
	}
	// Gatehouse's own API is not taken for a Kubernetes path.
	b.node.SetAPI(ownAPI{})
	if code, body := get("https://localhost:" + port + "/api/v1/whoami"); code != http.StatusTeapot {
		t.Fatalf("the API's own path: %d %s", code, body)
	}
	if code, body := get("https://localhost:" + port + "/api/v1/pods"); code != http.StatusNotFound || !strings.Contains(body, "names no cluster") {
		t.Fatalf("a Kubernetes path beside the API: %d %s", code, body)
	}
	// The real kubectl, by address with the cluster in the TLS server name
	// (no DNS here), through kubectl's own request path.
	kc := b.kubeconfig("ada", time.Hour)
	cfg := strings.Replace(string(mustRead(t, kc)), "/k8s/"+clusterID, "", 1)
	cfg = strings.Replace(cfg, "    server: ", "    tls-server-name: dev.k8s.test\n    server: ", 1)
	writeFile(t, kc, cfg)
	if out := b.ok(kc, "get", "--raw", "/api/v1/namespaces/default"); !strings.Contains(out, `"name":"default"`) {
		t.Fatalf("kubectl by host: %s", out)
	}
}

// ownAPI stands for control/api: it owns /api/v1/whoami.
type ownAPI struct{}

func (ownAPI) ServeHTTP(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }
func (ownAPI) Owns(r *http.Request) bool                        { return r.URL.Path == "/api/v1/whoami" }

// gatedAudit is an audit sink that may not be ready (an audit.Gate): the
// spool full, or its disk failing.
type gatedAudit struct {
	audit.Memory
	unready atomic.Pointer[error]
}

func (g *gatedAudit) Ready() error {
	if p := g.unready.Load(); p != nil {
		return *p
	}
	return nil
}

// A request the audit log cannot record is refused with 503 and the
// reason (fail closed, the default); a node configured to fail open serves
// it and counts it in an alarm metric.
func TestRequestsRefusedWhileAuditCannotRecord(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail open %v", failOpen), func(t *testing.T) {
			sink := &gatedAudit{}
			b := startBedWith(t, false, 0, func(c *node.Config) { c.Audit, c.AuditFailOpen = sink, failOpen })
			b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
			if resp := b.rawGET(t, "ada", "/k8s/dev/api/v1/namespaces", nil); resp.code != http.StatusOK {
				t.Fatalf("ready: %d %s", resp.code, resp.body)
			}
			full := fmt.Errorf("audit: %w", errors.New("spool: full"))
			sink.unready.Store(&full)
			resp := b.rawGET(t, "ada", "/k8s/dev/api/v1/namespaces", nil)
			switch {
			case !failOpen && (resp.code != http.StatusServiceUnavailable || !strings.Contains(resp.body, "cannot take this request's event")):
				t.Fatalf("fail closed: %d %s", resp.code, resp.body)
			case failOpen && resp.code != http.StatusOK:
				t.Fatalf("fail open: %d %s", resp.code, resp.body)
			}
			action := map[bool]string{false: "refused", true: "served"}[failOpen]
			rec := httptest.NewRecorder()
			b.node.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			if want := `gatehouse_audit_unready_total{action="` + action + `"} 1`; !strings.Contains(rec.Body.String(), want) {
				t.Fatalf("no %s in the metrics", want)
			}
		})
	}
}
