package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/tunnel/agent"
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
		expiries := &audit.Memory{}
		x := &control.Expirer{Store: b.store, Notify: b.node, Audit: expiries, Node: "node-1"}
		n, err := x.Once(ctx)
		if err != nil || n != 1 {
			t.Fatalf("expirer: %d %v", n, err)
		}
		if evs := expiries.Events(); len(evs) != 1 || evs[0].Action != "rolebinding.expired" || evs[0].User != tim || evs[0].Node != "node-1" {
			t.Fatalf("the expiry's audit events: %+v", evs)
		}
		if got := b.bindingNames(t, tim); len(got) != 0 {
			t.Fatalf("bindings after expiry: %v", got)
		}
		if b.serviceAccountExists(t, tim) {
			t.Fatal("service account outlives the last grant")
		}
	})

	t.Run("custom role limited to one workload", func(t *testing.T) {
		b.namespaces("cr-team")
		for _, name := range []string{"web", "db"} {
			dep := &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: appsv1.DeploymentSpec{
					Replicas: new(int32),
					Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
						Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
					},
				},
			}
			if _, err := cs.AppsV1().Deployments("cr-team").Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
		role := &store.Role{OrgID: b.org, Name: "restart-web", Scope: store.ScopeNamespace, Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"apps"}, Resources: []string{"deployments"}, ResourceNames: []string{"web"}, Verbs: []string{"get", "patch"},
		}}}
		if err := b.store.CreateRole(ctx, role); err != nil {
			t.Fatal(err)
		}
		cleo := b.person("cleo@example.com")
		b.bindRole(store.SubjectUser, cleo, "restart-web", "cr-team", true, time.Time{})
		kc := b.kubeconfig(cleo, time.Hour)
		if out := b.ok(kc, "-n", "cr-team", "get", "deployment", "web", "-o", "name"); strings.TrimSpace(out) != "deployment.apps/web" {
			t.Fatalf("get web: %q", out)
		}
		b.ok(kc, "-n", "cr-team", "annotate", "deployment", "web", "restarted-by=cleo", "--overwrite")
		b.refused(kc, "forbidden", "-n", "cr-team", "get", "deployment", "db")
		b.refused(kc, "forbidden", "-n", "cr-team", "get", "deployments")
		b.refused(kc, "forbidden", "-n", "cr-team", "delete", "deployment", "web")
		b.refused(kc, "forbidden", "-n", "cr-team", "get", "pods")
		// Deleting the role takes it out of the cluster.
		if err := b.store.DeleteRole(ctx, b.org, role.ID); err != nil {
			t.Fatal(err)
		}
		if err := b.node.AccessChanged(ctx, cleo, nil); err != nil {
			t.Fatal(err)
		}
		if got := b.bindingNames(t, cleo); len(got) != 0 {
			t.Fatalf("bindings after the role went: %v", got)
		}
		roles, err := cs.RbacV1().Roles("cr-team").List(ctx, metav1.ListOptions{LabelSelector: agent.LabelUser})
		if err != nil || len(roles.Items) != 0 {
			t.Fatalf("custom Role left in the cluster: %v %d", err, len(roles.Items))
		}
	})

	t.Run("unknown person", func(t *testing.T) {
		b.refused(b.kubeconfig("not-in-store", time.Hour), "no access", "get", "--raw", "/api/v1/namespaces")
	})
}
