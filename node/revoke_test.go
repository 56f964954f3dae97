package node_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/node"
	"github.com/gatehouse-dev/gatehouse/tunnel"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
)

// waitClosed waits until a streaming kubectl's output ends, and returns how
// long that took (reported, never asserted: timing belongs in benchmarks).
func waitClosed(t *testing.T, lines <-chan string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				return time.Since(start)
			}
		case <-deadline:
			t.Fatalf("stream still open %s after the revocation", timeout)
		}
	}
}

func (b *bed) serviceAccountExists(t *testing.T, user string) bool {
	t.Helper()
	cs, _ := b.kube.Clientset()
	_, err := cs.CoreV1().ServiceAccounts("gatehouse-system").Get(context.Background(), agent.ServiceAccountName(user), metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

func (b *bed) bindingNames(t *testing.T, user string) []string {
	t.Helper()
	cs, _ := b.kube.Clientset()
	sel := metav1.ListOptions{LabelSelector: agent.LabelUser}
	var out []string
	rbs, err := cs.RbacV1().RoleBindings("").List(context.Background(), sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, rb := range rbs.Items {
		if rb.Annotations[agent.AnnotationUser] == user {
			out = append(out, rb.Namespace+"/"+rb.RoleRef.Name)
		}
	}
	crbs, err := cs.RbacV1().ClusterRoleBindings().List(context.Background(), sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, crb := range crbs.Items {
		if crb.Annotations[agent.AnnotationUser] == user {
			out = append(out, "/"+crb.RoleRef.Name)
		}
	}
	return out
}

// Revoking a person's access ends their open watch at once, removes their
// service account and bindings from the cluster, and refuses their next
// request.
func TestRevokedPersonLosesLiveStreamsAndServiceAccount(t *testing.T) {
	b := newBed(t)
	b.grants.Set("rita", clusterID, grant.Grant{Role: "edit", Namespace: "default"})
	kc := b.kubeconfig("rita", time.Hour)
	lines := b.kube.KubectlLines(t, kc, "-n", "default", "get", "configmaps", "-w", "-o", "name")
	testenv.WaitForLine(t, lines, "kube-root-ca.crt", time.Minute)
	if !b.serviceAccountExists(t, "rita") || len(b.bindingNames(t, "rita")) != 1 {
		t.Fatalf("no service account or binding for rita: %v", b.bindingNames(t, "rita"))
	}
	// The list comes first, then the watch request.
	waitFor(t, 30*time.Second, func() bool { return len(b.node.Sessions()) == 1 })

	b.grants.Set("rita", clusterID) // no grants left
	start := time.Now()
	if err := b.node.AccessChanged(context.Background(), "rita", nil); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, lines, 30*time.Second)
	t.Logf("kubectl get -w ended %s after the revocation began", time.Since(start))
	// The agent has finished by the time AccessChanged returns.
	if b.serviceAccountExists(t, "rita") {
		t.Fatal("service account still in the cluster")
	}
	if got := b.bindingNames(t, "rita"); len(got) != 0 {
		t.Fatalf("bindings still in the cluster: %v", got)
	}
	b.refused(kc, "no access", "get", "--raw", "/api/v1/namespaces/default/configmaps")
	if n := b.proxy.Active("rita"); n != 0 {
		t.Fatalf("agent still has %d of rita's requests in flight", n)
	}
}

// A narrowed grant reaches the cluster's RBAC before the person's next
// request.
func TestNarrowedGrantReachesBindingsAtOnce(t *testing.T) {
	b := newBed(t)
	cs, _ := b.kube.Clientset()
	for _, ns := range []string{"narrow-a", "narrow-b"} {
		if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	b.grants.Set("nina", clusterID, grant.Grant{Role: "edit", Namespace: "narrow-a"}, grant.Grant{Role: "view", Namespace: "narrow-b"})
	kc := b.kubeconfig("nina", time.Hour)
	b.ok(kc, "-n", "narrow-a", "get", "configmaps")
	if got := b.bindingNames(t, "nina"); len(got) != 2 {
		t.Fatalf("bindings: %v", got)
	}
	lines := b.kube.KubectlLines(t, kc, "-n", "narrow-b", "get", "configmaps", "-w", "-o", "name")
	testenv.WaitForLine(t, lines, "kube-root-ca.crt", time.Minute)
	waitFor(t, 30*time.Second, func() bool { return len(b.node.Sessions()) == 1 })

	b.grants.Set("nina", clusterID, grant.Grant{Role: "view", Namespace: "narrow-b"})
	if err := b.node.AccessChanged(context.Background(), "nina", nil); err != nil {
		t.Fatal(err)
	}
	if got := b.bindingNames(t, "nina"); len(got) != 1 || got[0] != "narrow-b/view" {
		t.Fatalf("bindings after narrowing: %v", got)
	}
	// She keeps what she still holds: the watch in narrow-b stays open.
	if n := len(b.node.Sessions()); n != 1 {
		t.Fatalf("sessions after narrowing: %d, want the watch", n)
	}
	b.refused(kc, "forbidden", "-n", "narrow-a", "get", "configmaps")
	b.ok(kc, "-n", "narrow-b", "get", "configmaps")
}

// Revoking one certificate refuses it on the next request and ends the
// streams it opened; the person's other certificates are untouched.
func TestRevokedCertificateEndsItsStreams(t *testing.T) {
	b := newBed(t)
	b.grants.Set("cara", clusterID, grant.Grant{Role: "view", Namespace: "default"})
	stolen, other := b.kubeconfig("cara", time.Hour), b.kubeconfig("cara-2", time.Hour)
	b.grants.Set("cara-2", clusterID, grant.Grant{Role: "view", Namespace: "default"})
	serial := kubeconfigSerial(t, stolen)
	lines := b.kube.KubectlLines(t, stolen, "-n", "default", "get", "configmaps", "-w", "-o", "name")
	testenv.WaitForLine(t, lines, "kube-root-ca.crt", time.Minute)
	waitFor(t, 30*time.Second, func() bool { return len(b.node.Sessions()) == 1 })

	b.auth.Revoke(serial)
	if n := b.node.EndSessions(func(s node.Session) bool { return s.Serial == serial }); n != 1 {
		t.Fatalf("ended %d sessions, want 1", n)
	}
	waitClosed(t, lines, 30*time.Second)
	b.refused(stolen, "revoked", "get", "--raw", "/api/v1/namespaces/default/configmaps")
	b.ok(other, "-n", "default", "get", "configmaps")
}

func kubeconfigSerial(t *testing.T, path string) string {
	t.Helper()
	kc := string(mustRead(t, path))
	_, after, ok := strings.Cut(kc, "client-certificate-data: ")
	if !ok {
		t.Fatal("kubeconfig has no client-certificate-data")
	}
	data, _, _ := strings.Cut(after, "\n")
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(data))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

// The sweep deletes service accounts idle longer than the idle limit, with
// their bindings, and bindings left without an account; active ones stay.
func TestSweepRemovesIdleServiceAccounts(t *testing.T) {
	b := newBed(t)
	for _, u := range []string{"idle-ida", "busy-bea"} {
		b.grants.Set(u, clusterID, grant.Grant{Role: "view", Namespace: "default"})
		b.ok(b.kubeconfig(u, time.Hour), "-n", "default", "get", "pods")
	}
	ctx := context.Background()
	b.clock.Set(9 * time.Hour)
	defer b.clock.Set(0)
	// bea works again at +9 h: her account is stamped.
	bea := b.kubeconfig("busy-bea", time.Hour)
	b.ok(bea, "-n", "default", "get", "pods")

	n, err := b.jit.Sweep(ctx, 8*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 || b.serviceAccountExists(t, "idle-ida") || len(b.bindingNames(t, "idle-ida")) != 0 {
		t.Fatalf("idle account not swept (deleted %d): bindings %v", n, b.bindingNames(t, "idle-ida"))
	}
	if !b.serviceAccountExists(t, "busy-bea") || len(b.bindingNames(t, "busy-bea")) != 1 {
		t.Fatal("active account swept")
	}
	// ida comes back: her account is made again.
	b.ok(b.kubeconfig("idle-ida", time.Hour), "-n", "default", "get", "pods")
}

func TestMetrics(t *testing.T) {
	b := newBed(t)
	b.grants.Set("mia", clusterID, grant.Grant{Role: "view", Namespace: "default"})
	b.ok(b.kubeconfig("mia", time.Hour), "-n", "default", "get", "configmaps")
	rec := httptest.NewRecorder()
	b.node.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`gatehouse_requests_total{code="200",verb="list"}`,
		`gatehouse_request_duration_seconds_count{verb="list"}`,
		"gatehouse_tunnels_open 1",
		"gatehouse_streams_open 0",
		"gatehouse_audit_write_errors_total 0",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Log(string(body))
	}
}

// Two agents on one API server (two Gatehouse clusters, or two
// installations, in their own namespaces) never delete each other's
// per-person RBAC: names carry the agent's namespace and every removal and
// sweep selects by it.
func TestTwoAgentsOnOneAPIServerKeepApart(t *testing.T) {
	k := sharedKube(t)
	cs, err := k.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ns := range []string{"ga-one", "ga-two", "ga-shared"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	one := agent.NewJIT(cs, "ga-one", time.Hour, nil)
	two := agent.NewJIT(cs, "ga-two", time.Hour, nil)
	h := &tunnel.Header{User: "pat", Grants: []grant.Grant{{Role: grant.View}, {Role: grant.Edit, Namespace: "ga-shared"}}}
	for _, j := range []*agent.JIT{one, two} {
		if _, err := j.Token(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	count := func(agentNS string) int {
		t.Helper()
		sel := metav1.ListOptions{LabelSelector: agent.LabelAgent + "=" + agentNS}
		crbs, err := cs.RbacV1().ClusterRoleBindings().List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		rbs, err := cs.RbacV1().RoleBindings("ga-shared").List(ctx, sel)
		if err != nil {
			t.Fatal(err)
		}
		return len(crbs.Items) + len(rbs.Items)
	}
	if a, b := count("ga-one"), count("ga-two"); a != 2 || b != 2 {
		t.Fatalf("bindings: agent one %d, agent two %d; want 2 each", a, b)
	}
	// Agent two loses the person, and sweeps everything idle.
	if err := two.Remove(ctx, "pat"); err != nil {
		t.Fatal(err)
	}
	if _, err := two.Sweep(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if a, b := count("ga-one"), count("ga-two"); a != 2 || b != 0 {
		t.Fatalf("after agent two's removal and sweep: agent one %d (want 2), agent two %d (want 0)", a, b)
	}
	// A narrower sync on agent one leaves agent two's (new) bindings alone.
	if _, err := two.Token(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := one.Sync(ctx, "pat", []grant.Grant{{Role: grant.View}}); err != nil {
		t.Fatal(err)
	}
	if a, b := count("ga-one"), count("ga-two"); a != 1 || b != 2 {
		t.Fatalf("after agent one's sync: agent one %d (want 1), agent two %d (want 2)", a, b)
	}
	for _, j := range []*agent.JIT{one, two} {
		if err := j.Remove(ctx, "pat"); err != nil {
			t.Fatal(err)
		}
	}
}
