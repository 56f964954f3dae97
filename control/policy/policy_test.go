package policy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/grant"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// fixedBindings is a table of bindings: the engine's input, held in memory
// for this unit test of pure decision logic (the store has its own suite).
type fixedBindings []*store.Binding

func (f fixedBindings) ActiveBindings(_ context.Context, user string, groups []string) ([]*store.Binding, error) {
	var out []*store.Binding
	for _, b := range f {
		if (b.SubjectKind == store.SubjectUser && b.SubjectID == user) || (b.SubjectKind == store.SubjectGroup && contains(groups, b.SubjectID)) {
			out = append(out, b)
		}
	}
	return out, nil
}

func (f fixedBindings) GetRole(_ context.Context, _, name string) (*store.Role, error) {
	return nil, fmt.Errorf("%w: role %s", store.ErrNotFound, name)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

const org, p1, p2 = "o1", "p1", "p2"

// naturalScope is where the golden test binds each role.
func naturalScope(r Role) Scope {
	switch r.Scope {
	case store.ScopeOrg:
		return Scope{OrgID: org}
	case store.ScopeProject:
		return Scope{OrgID: org, ProjectID: p1}
	}
	return Scope{OrgID: org, ProjectID: p1, Namespace: "team"}
}

func (s Scope) String() string {
	switch {
	case s.Namespace != "":
		return s.ProjectID + "/" + s.Namespace
	case s.ProjectID != "":
		return s.ProjectID
	}
	return "org"
}

func bind(user, role string, s Scope) *store.Binding {
	return &store.Binding{OrgID: s.OrgID, SubjectKind: store.SubjectUser, SubjectID: user, Role: role, ProjectID: s.ProjectID, Namespace: s.Namespace}
}

func decider(t *testing.T, bs ...*store.Binding) *Decider {
	t.Helper()
	e, err := New(fixedBindings(bs))
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.For(context.Background(), Subject{UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestAuthorizationGolden records, for every built-in role bound at its
// scope, every API action at every kind of scope, the Kubernetes access it
// gives on a cluster of its project and of another, and which roles its
// holder may grant. Review testdata/authz.golden when it changes
// (go test ./control/policy -run Golden -update).
func TestAuthorizationGolden(t *testing.T) {
	targets := []Scope{
		{OrgID: org},
		{OrgID: org, ProjectID: p1},
		{OrgID: org, ProjectID: p2},
		{OrgID: org, ProjectID: p1, Namespace: "team"},
		{OrgID: org, ProjectID: p1, Namespace: "other"},
		{OrgID: "o2"},
		{OrgID: "o2", ProjectID: p1},
	}
	var b strings.Builder
	for _, r := range Roles {
		at := naturalScope(r)
		d := decider(t, bind("u", r.Name, at))
		fmt.Fprintf(&b, "## %s bound at %s\n", r.Name, at)
		for _, a := range Actions {
			var allowed []string
			for _, tg := range targets {
				if d.Allowed(tg, a) {
					allowed = append(allowed, tg.String()+orgMark(tg))
				}
			}
			fmt.Fprintf(&b, "%-15s %s\n", a, strings.Join(orDash(allowed), " "))
		}
		fmt.Fprintf(&b, "kube on a cluster of p1: %s\n", grants(d.ClusterAccess(org, p1, nil)))
		fmt.Fprintf(&b, "kube on a cluster of p2: %s\n", grants(d.ClusterAccess(org, p2, nil)))
		fmt.Fprintf(&b, "kube on a cluster of p2 shared with p1: %s\n", grants(d.ClusterAccess(org, p2, []string{p1})))
		fmt.Fprintf(&b, "kube on a cluster of another org: %s\n", grants(d.ClusterAccess("o2", p1, nil)))
		var can []string
		for _, g := range Roles {
			for _, s := range []Scope{naturalScope(g), {OrgID: org, ProjectID: p2, Namespace: "team"}, {OrgID: org, ProjectID: p2}} {
				if scopeKind(s) != g.Scope {
					continue
				}
				if d.CanGrant(g.Name, s) == nil {
					can = append(can, g.Name+"@"+s.String())
				}
			}
		}
		fmt.Fprintf(&b, "may grant: %s\n\n", strings.Join(orDash(can), " "))
	}
	golden(t, "authz.golden", b.String())
}

func scopeKind(s Scope) string {
	return (&store.Binding{ProjectID: s.ProjectID, Namespace: s.Namespace}).Scope()
}

func orgMark(s Scope) string {
	if s.OrgID != org {
		return "(" + s.OrgID + ")"
	}
	return ""
}

func orDash(s []string) []string {
	if len(s) == 0 {
		return []string{"-"}
	}
	return s
}

func grants(gs []grant.Grant) string {
	var out []string
	for _, g := range gs {
		if g.Namespace == "" {
			out = append(out, g.Role)
		} else {
			out = append(out, g.Role+"/"+g.Namespace)
		}
	}
	return strings.Join(orDash(out), ",")
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Fatalf("%s differs from the decisions made now; run with -update and review the diff.\n--- got:\n%s", path, got)
	}
}

func TestEscalationIsRefused(t *testing.T) {
	team := Scope{OrgID: org, ProjectID: p1, Namespace: "team"}
	for _, tc := range []struct {
		name   string
		holder []*store.Binding
		role   string
		at     Scope
		want   error
	}{
		{"project admin grants org admin", []*store.Binding{bind("u", "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1})}, "ADMIN", Scope{OrgID: org}, ErrEscalation},
		{"project admin grants in another project", []*store.Binding{bind("u", "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1})}, "NAMESPACE_ADMIN", Scope{OrgID: org, ProjectID: p2, Namespace: "x"}, ErrEscalation},
		{"project admin grants ADMIN at project scope", []*store.Binding{bind("u", "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1})}, "ADMIN", Scope{OrgID: org, ProjectID: p1}, ErrScope},
		{"read-only admin grants anything", []*store.Binding{bind("u", "ADMIN_READ_ONLY", Scope{OrgID: org})}, "NAMESPACE_READ_ONLY", team, ErrEscalation},
		{"namespace admin grants in own namespace", []*store.Binding{bind("u", "NAMESPACE_ADMIN", team)}, "NAMESPACE_READ_ONLY", team, ErrEscalation},
		{"cluster admin grants", []*store.Binding{bind("u", "CLUSTER_ADMIN", Scope{OrgID: org, ProjectID: p1})}, "NAMESPACE_ADMIN", team, ErrEscalation},
		{"admin of another org", []*store.Binding{bind("u", "ADMIN", Scope{OrgID: "o2"})}, "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1}, ErrEscalation},
		{"unknown role", []*store.Binding{bind("u", "ADMIN", Scope{OrgID: org})}, "ROOT", Scope{OrgID: org}, ErrUnknownRole},
		{"project admin grants namespace admin", []*store.Binding{bind("u", "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1})}, "NAMESPACE_ADMIN", team, nil},
		{"project admin grants project admin", []*store.Binding{bind("u", "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1})}, "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1}, nil},
		{"admin grants admin", []*store.Binding{bind("u", "ADMIN", Scope{OrgID: org})}, "ADMIN", Scope{OrgID: org}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decider(t, tc.holder...).CanGrant(tc.role, tc.at)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("CanGrant(%s at %s) = %v, want %v", tc.role, tc.at, err, tc.want)
			}
		})
	}
}

func TestGroupBindingsAndLimits(t *testing.T) {
	e, err := New(fixedBindings{
		{OrgID: org, SubjectKind: store.SubjectGroup, SubjectID: "g-sre", Role: "NAMESPACE_READ_ONLY", ProjectID: p1, Namespace: "web"},
		bind("u", "PROJECT_READ_ONLY", Scope{OrgID: org, ProjectID: p2}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, _ := e.For(ctx, Subject{UserID: "u", Groups: []string{"g-sre"}})
	if got := grants(d.ClusterAccess(org, p1, nil)); got != "view/web" {
		t.Fatalf("group grant: %s", got)
	}
	d, _ = e.For(ctx, Subject{UserID: "u"})
	if got := grants(d.ClusterAccess(org, p1, nil)); got != "-" {
		t.Fatalf("without the group: %s", got)
	}
	// A token limited to one role sees only that role's bindings.
	d, _ = e.For(ctx, Subject{UserID: "u", Groups: []string{"g-sre"}, Limit: []string{"PROJECT_READ_ONLY"}})
	if got := grants(d.ClusterAccess(org, p1, nil)); got != "-" {
		t.Fatalf("limited token: %s", got)
	}
	if !d.Allowed(Scope{OrgID: org, ProjectID: p2}, ClusterRead) {
		t.Fatal("limited token lost its own role")
	}
}

type withRoles struct {
	fixedBindings
	roles map[string]*store.Role
}

func (w withRoles) GetRole(_ context.Context, _, name string) (*store.Role, error) {
	if r := w.roles[name]; r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("%w: role %s", store.ErrNotFound, name)
}

func TestCustomRoles(t *testing.T) {
	restart := &store.Role{Name: "restart-web", Scope: store.ScopeNamespace, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{"apps"}, Resources: []string{"deployments"}, ResourceNames: []string{"web"}, Verbs: []string{"get", "patch"},
	}}}
	misplaced := &store.Role{Name: "misplaced", Scope: store.ScopeProject, Rules: restart.Rules}
	team := Scope{OrgID: org, ProjectID: p1, Namespace: "team"}
	e, err := New(withRoles{
		fixedBindings: fixedBindings{
			{ID: "b1", OrgID: org, SubjectKind: store.SubjectUser, SubjectID: "u", Role: "restart-web", ProjectID: p1, Namespace: "team"},
			{ID: "b2", OrgID: org, SubjectKind: store.SubjectUser, SubjectID: "u", Role: "misplaced", ProjectID: p1, Namespace: "x"},
			{ID: "b3", OrgID: org, SubjectKind: store.SubjectUser, SubjectID: "pa", Role: "PROJECT_ADMIN", ProjectID: p1},
			{ID: "b4", OrgID: org, SubjectKind: store.SubjectUser, SubjectID: "na", Role: "NAMESPACE_ADMIN", ProjectID: p1, Namespace: "team"},
		},
		roles: map[string]*store.Role{"restart-web": restart, "misplaced": misplaced},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, _ := e.For(ctx, Subject{UserID: "u"})
	got := d.ClusterAccess(org, p1, nil)
	if len(got) != 1 || got[0].Role != "restart-web" || got[0].Namespace != "team" || len(got[0].Rules) != 1 {
		t.Fatalf("custom grant: %+v", got)
	}
	if len(d.ClusterAccess(org, p2, nil)) != 0 {
		t.Fatal("custom grant reaches another project")
	}
	if d.Allowed(team, ProjectRead) {
		t.Fatal("a custom role gave API rights")
	}
	pa, _ := e.For(ctx, Subject{UserID: "pa"})
	if err := pa.CanGrantCustom(restart, team); err != nil {
		t.Fatalf("project admin grants a custom role: %v", err)
	}
	if err := pa.CanGrantCustom(restart, Scope{OrgID: org, ProjectID: p1}); !errors.Is(err, ErrScope) {
		t.Fatalf("custom role at the wrong scope: %v", err)
	}
	na, _ := e.For(ctx, Subject{UserID: "na"})
	if err := na.CanGrantCustom(restart, team); !errors.Is(err, ErrEscalation) {
		t.Fatalf("namespace admin grants a custom role: %v", err)
	}
}

// BenchmarkDecision is one request's worth of policy work: read a person's
// bindings (from memory here) and answer their cluster access.
func BenchmarkDecision(b *testing.B) {
	e, _ := New(fixedBindings{bind("u", "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: p1}), bind("u", "NAMESPACE_READ_ONLY", Scope{OrgID: org, ProjectID: p2, Namespace: "x"})})
	ctx := context.Background()
	for b.Loop() {
		d, err := e.For(ctx, Subject{UserID: "u"})
		if err != nil {
			b.Fatal(err)
		}
		if len(d.ClusterAccess(org, p1, nil)) == 0 {
			b.Fatal("no access")
		}
	}
}

// Decisions for different people run at once without sharing state.
func TestConcurrentDecisions(t *testing.T) {
	var bs fixedBindings
	for i := range 8 {
		bs = append(bs, bind(fmt.Sprint("u", i), "PROJECT_ADMIN", Scope{OrgID: org, ProjectID: fmt.Sprint("p", i)}))
	}
	e, _ := New(bs)
	errc := make(chan error, 8)
	for i := range 8 {
		go func() {
			for range 50 {
				d, err := e.For(context.Background(), Subject{UserID: fmt.Sprint("u", i)})
				if err != nil {
					errc <- err
					return
				}
				if len(d.ClusterAccess(org, fmt.Sprint("p", i), nil)) != 1 || len(d.ClusterAccess(org, fmt.Sprint("p", (i+1)%8), nil)) != 0 {
					errc <- fmt.Errorf("u%d sees another's access", i)
					return
				}
			}
			errc <- nil
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestNamespaceRolesSeeTheirProject(t *testing.T) {
	d := decider(t, bind("u", "NAMESPACE_READ_ONLY", Scope{OrgID: org, ProjectID: p1, Namespace: "team"}))
	if d.Allowed(Scope{OrgID: org, ProjectID: p1}, ProjectRead) {
		t.Fatal("namespace role reads at project scope")
	}
	if !d.AllowedWithin(Scope{OrgID: org, ProjectID: p1}, ProjectRead) || !d.AllowedWithin(Scope{OrgID: org, ProjectID: p1}, ClusterRead) {
		t.Fatal("namespace role cannot see its own project")
	}
	if d.AllowedWithin(Scope{OrgID: org, ProjectID: p2}, ProjectRead) || d.AllowedWithin(Scope{OrgID: org, ProjectID: p1}, ClusterDelete) {
		t.Fatal("AllowedWithin reaches too far")
	}
}
