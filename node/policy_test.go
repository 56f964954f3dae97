package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// person creates a person in the bed's organization and returns their id.
func (b *bed) person(email string) string {
	b.t.Helper()
	u := &store.User{OrgID: b.org, Email: email}
	if err := b.store.CreateUser(context.Background(), u); err != nil {
		b.t.Fatal(err)
	}
	return u.ID
}

// bindRole binds a built-in role; namespace "" binds at project scope,
// project false at org scope.
func (b *bed) bindRole(kind, subject, role, namespace string, project bool, expires time.Time) {
	b.t.Helper()
	bd := &store.Binding{OrgID: b.org, SubjectKind: kind, SubjectID: subject, Role: role, Namespace: namespace, Expires: expires}
	if project || namespace != "" {
		bd.ProjectID = b.project
	}
	if err := b.store.CreateBinding(context.Background(), bd); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) namespaces(names ...string) {
	b.t.Helper()
	cs, _ := b.kube.Clientset()
	for _, ns := range names {
		if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			b.t.Fatal(err)
		}
	}
}

// TestPolicyThroughGateway drives the gateway with the store and the policy
// engine, as production does, with the real kubectl.
func TestPolicyThroughGateway(t *testing.T) {
	b := newPolicyBed(t)
	ctx := context.Background()
	b.namespaces("ro-team", "ro-other", "grp-team", "tb-team")
	pod := runningPod(t, b, "ro-team")
	cs, _ := b.kube.Clientset()
	if _, err := cs.CoreV1().Secrets("ro-team").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db"}, StringData: map[string]string{"password": "x"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	t.Run("NAMESPACE_READ_ONLY", func(t *testing.T) {
		nora := b.person("nora@example.com")
		b.bindRole(store.SubjectUser, nora, "NAMESPACE_READ_ONLY", "ro-team", true, time.Time{})
		kc := b.kubeconfig(nora, time.Hour)
		if out := b.ok(kc, "-n", "ro-team", "get", "pods", "-o", "name"); !strings.Contains(out, "pod/"+pod) {
			t.Fatalf("list pods: %q", out)
		}
		b.refused(kc, "forbidden", "-n", "ro-team", "delete", "pod", pod, "--wait=false")
		b.refused(kc, "forbidden", "-n", "ro-team", "get", "secret", "db")
		b.refused(kc, "forbidden", "-n", "ro-team", "exec", pod, "--", "echo", "hi")
		b.refused(kc, "forbidden", "-n", "ro-team", "port-forward", "pod/"+pod, ":8080")
		b.refused(kc, "forbidden", "-n", "ro-other", "get", "pods")
		b.refused(kc, "forbidden", "get", "pods", "-A")
		if _, err := cs.CoreV1().Pods("ro-team").Get(ctx, pod, metav1.GetOptions{}); err != nil {
			t.Fatalf("pod gone after a refused delete: %v", err)
		}
	})

	t.Run("PROJECT_ADMIN", func(t *testing.T) {
		pat := b.person("pat@example.com")
		b.bindRole(store.SubjectUser, pat, "PROJECT_ADMIN", "", true, time.Time{})
		kc := b.kubeconfig(pat, time.Hour)
		b.ok(kc, "get", "pods", "-A")
		b.ok(kc, "-n", "ro-other", "create", "configmap", "by-pat")
		// Through the API's rule: may grant NAMESPACE_ADMIN, not ADMIN.
		engine, _ := policy.New(b.store)
		d, err := engine.For(ctx, policy.Subject{UserID: pat})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.CanGrant("NAMESPACE_ADMIN", policy.Scope{OrgID: b.org, ProjectID: b.project, Namespace: "ro-team"}); err != nil {
			t.Fatalf("project admin cannot grant NAMESPACE_ADMIN: %v", err)
		}
		if err := d.CanGrant("ADMIN", policy.Scope{OrgID: b.org}); !errors.Is(err, policy.ErrEscalation) {
			t.Fatalf("project admin granting ADMIN: %v", err)
		}
	})

	t.Run("group grant", func(t *testing.T) {
		gina := b.person("gina@example.com")
		g := &store.Group{OrgID: b.org, Name: "team-grp"}
		if err := b.store.CreateGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
		kc := b.kubeconfig(gina, time.Hour)
		b.bindRole(store.SubjectGroup, g.ID, "NAMESPACE_ADMIN", "grp-team", true, time.Time{})
		b.refused(kc, "no access", "get", "--raw", "/api/v1/namespaces/grp-team/configmaps")
		if err := b.store.AddMember(ctx, g.ID, gina); err != nil {
			t.Fatal(err)
		}
		// Membership counts from the next request: groups come from the
		// store, not the certificate.
		b.ok(kc, "-n", "grp-team", "create", "configmap", "by-gina")
		b.refused(kc, "forbidden", "-n", "ro-team", "get", "configmaps")
	})

	t.Run("time-bound grant expires", func(t *testing.T) {
		tim := b.person("tim@example.com")
		b.bindRole(store.SubjectUser, tim, "NAMESPACE_ADMIN", "tb-team", true, b.clock.Now().Add(time.Hour))
		kc := b.kubeconfig(tim, 3*time.Hour)
		b.ok(kc, "-n", "tb-team", "get", "configmaps")
		if got := b.bindingNames(t, tim); len(got) != 1 || got[0] != "tb-team/admin" {
			t.Fatalf("bindings: %v", got)
		}
		b.clock.Set(2 * time.Hour)
		defer b.clock.Set(0)
		// From the moment of expiry the gateway refuses...
		b.refused(kc, "no access", "get", "--raw", "/api/v1/namespaces/tb-team/configmaps")
		// ...and the expirer takes the binding out of the cluster.
		x := &control.Expirer{Store: b.store, Notify: b.node}
		n, err := x.Once(ctx)
		if err != nil || n != 1 {
			t.Fatalf("expirer: %d %v", n, err)
		}
		if got := b.bindingNames(t, tim); len(got) != 0 {
			t.Fatalf("bindings after expiry: %v", got)
		}
		if b.serviceAccountExists(t, tim) {
			t.Fatal("service account outlives the last grant")
		}
	})

	t.Run("unknown person", func(t *testing.T) {
		b.refused(b.kubeconfig("not-in-store", time.Hour), "no access", "get", "--raw", "/api/v1/namespaces")
	})
}
