package grant

import (
	"errors"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		grants []Grant
		ok     bool
	}{
		{"view", []Grant{{Role: View}}, true},
		{"none", nil, false},
		{"unknown role", []Grant{{Role: "root"}}, false},
		{"namespaced cluster-admin", []Grant{{Role: ClusterAdmin, Namespace: "x"}}, false},
		{"custom", []Grant{{Role: "reader", Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods"}}}}}, true},
		{"custom wildcard", []Grant{{Role: "reader", Rules: []rbacv1.PolicyRule{{Verbs: []string{"*"}, APIGroups: []string{""}, Resources: []string{"pods"}}}}}, false},
	} {
		err := Validate(tc.grants)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: Validate = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestPermits(t *testing.T) {
	execRule := []rbacv1.PolicyRule{{Verbs: []string{"create", "get"}, APIGroups: []string{""}, Resources: []string{"pods/exec"}}}
	secretsRule := []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"tls"}}}
	secretGet := Request{Verb: "get", Resource: "secrets", Namespace: "demo"}
	secretListAll := Request{Verb: "list", Resource: "secrets"}
	exec := Request{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "demo"}
	attach := Request{Verb: "create", Resource: "pods", Subresource: "attach", Namespace: "demo"}
	pf := Request{Verb: "create", Resource: "pods", Subresource: "portforward", Namespace: "demo"}
	proxy := Request{Verb: "get", Resource: "services", Subresource: "proxy", Namespace: "demo"}
	pods := Request{Verb: "list", Resource: "pods", Namespace: "demo"}
	logs := Request{Verb: "get", Resource: "pods", Subresource: "log", Namespace: "demo"}
	otherSecrets := Request{Verb: "get", APIGroup: "example.com", Resource: "secrets", Namespace: "demo"}
	for _, tc := range []struct {
		name   string
		grants []Grant
		req    Request
		want   bool
	}{
		{"view lists pods", []Grant{{Role: View}}, pods, true},
		{"view reads logs", []Grant{{Role: View, Namespace: "demo"}}, logs, true},
		{"view reads a secret", []Grant{{Role: View}}, secretGet, false},
		{"view lists secrets everywhere", []Grant{{Role: View}}, secretListAll, false},
		{"view execs", []Grant{{Role: View}}, exec, false},
		{"view attaches", []Grant{{Role: View, Namespace: "demo"}}, attach, false},
		{"view port-forwards", []Grant{{Role: View}}, pf, false},
		{"view proxies", []Grant{{Role: View}}, proxy, false},
		{"view and a CRD named secrets", []Grant{{Role: View}}, otherSecrets, true},
		{"edit in the namespace execs", []Grant{{Role: View}, {Role: Edit, Namespace: "demo"}}, exec, true},
		{"edit elsewhere does not", []Grant{{Role: Edit, Namespace: "other"}}, exec, false},
		{"namespaced admin cannot list secrets everywhere", []Grant{{Role: Admin, Namespace: "demo"}}, secretListAll, false},
		{"cluster-wide admin can", []Grant{{Role: Admin}}, secretListAll, true},
		{"cluster-admin", []Grant{{Role: ClusterAdmin}}, pf, true},
		{"custom exec rule", []Grant{{Role: "debug", Namespace: "demo", Rules: execRule}}, exec, true},
		{"custom exec rule does not attach", []Grant{{Role: "debug", Namespace: "demo", Rules: execRule}}, attach, false},
		{"custom secret rule", []Grant{{Role: "tls", Namespace: "demo", Rules: secretsRule}}, secretGet, true},
		{"custom secret rule, wrong verb", []Grant{{Role: "tls", Namespace: "demo", Rules: secretsRule}}, Request{Verb: "delete", Resource: "secrets", Namespace: "demo"}, false},
		{"no grants", nil, secretGet, false},
	} {
		if got := Permits(tc.grants, tc.req); got != tc.want {
			t.Errorf("%s: Permits = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCovers(t *testing.T) {
	watchDemo := Request{Verb: "watch", Resource: "pods", Namespace: "demo"}
	watchAll := Request{Verb: "watch", Resource: "pods"}
	exec := Request{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "demo"}
	for _, tc := range []struct {
		name   string
		grants []Grant
		req    Request
		want   bool
	}{
		{"cluster-wide view, a namespace's watch", []Grant{{Role: View}}, watchDemo, true},
		{"narrowed to another namespace", []Grant{{Role: View, Namespace: "other"}}, watchDemo, false},
		{"narrowed to the namespace", []Grant{{Role: View, Namespace: "demo"}}, watchDemo, true},
		{"narrowed, a watch across namespaces", []Grant{{Role: View, Namespace: "demo"}}, watchAll, false},
		{"edit down to view, an exec", []Grant{{Role: View}}, exec, false},
		{"nothing left", nil, watchDemo, false},
	} {
		if got := Covers(tc.grants, tc.req); got != tc.want {
			t.Errorf("%s: Covers = %v, want %v", tc.name, got, tc.want)
		}
	}
}
