// Package policy decides who may do what, where. It answers two questions
// with one Casbin model:
//
//  1. May this person perform this API action on an object in this scope
//     (organization, project, or namespace of a project)?
//  2. What Kubernetes access does this person have on this cluster - which
//     ClusterRoles, cluster-wide or per namespace - for the agent to turn
//     into the person's just-in-time service account's RBAC?
//
// Roles are bound to people and groups at a scope (control/store.Binding);
// a binding at a scope reaches everything under it. Bindings are read from
// the store on every decision, so a revoked or expired grant stops working
// at once on every node (no cache to invalidate across the cluster).
//
// No escalation: a person may bind a role at a scope only if they may
// manage bindings there and already hold every permission of the role
// there (the rule Kubernetes RBAC applies to RoleBindings).
package policy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
	"github.com/casbin/casbin/v2/util"

	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/grant"
)

// Errors returned by the engine.
var (
	// ErrEscalation: the caller tried to grant more than they hold.
	ErrEscalation = errors.New("policy: cannot grant a role with permissions you do not hold there")
	// ErrUnknownRole: no built-in role has that name.
	ErrUnknownRole = errors.New("policy: unknown role")
	// ErrScope: the role cannot be bound at that scope.
	ErrScope = errors.New("policy: role cannot be bound at this scope")
)

// Action is an API action, "KIND.VERB".
type Action string

// API actions.
const (
	OrgRead       Action = "org.read"
	OrgUpdate     Action = "org.update"
	ProjectCreate Action = "project.create"
	ProjectRead   Action = "project.read"
	ProjectUpdate Action = "project.update"
	ProjectDelete Action = "project.delete"
	ClusterCreate Action = "cluster.create"
	ClusterRead   Action = "cluster.read"
	ClusterUpdate Action = "cluster.update"
	ClusterDelete Action = "cluster.delete"
	UserCreate    Action = "user.create"
	UserRead      Action = "user.read"
	UserUpdate    Action = "user.update"
	UserDelete    Action = "user.delete"
	GroupCreate   Action = "group.create"
	GroupRead     Action = "group.read"
	GroupUpdate   Action = "group.update"
	GroupDelete   Action = "group.delete"
	RoleCreate    Action = "role.create"
	RoleRead      Action = "role.read"
	RoleUpdate    Action = "role.update"
	RoleDelete    Action = "role.delete"
	BindingCreate Action = "binding.create"
	BindingRead   Action = "binding.read"
	BindingDelete Action = "binding.delete"
	// Revoke ends a person's sessions and certificates.
	Revoke Action = "revoke"
	// AuditRead: search the audit events of the clusters in scope.
	AuditRead Action = "audit.read"
	// ClusterRecording: change a cluster's session recording so that it
	// records fewer people. Only organization admins hold it, so that no
	// one whose sessions are recorded (a project's or a cluster's admin)
	// can switch that off; recording more needs only cluster.update.
	ClusterRecording Action = "cluster.recording"
)

// Actions lists every API action, for tests and documentation.
var Actions = []Action{
	OrgRead, OrgUpdate,
	ProjectCreate, ProjectRead, ProjectUpdate, ProjectDelete,
	ClusterCreate, ClusterRead, ClusterUpdate, ClusterDelete,
	UserCreate, UserRead, UserUpdate, UserDelete,
	GroupCreate, GroupRead, GroupUpdate, GroupDelete,
	RoleCreate, RoleRead, RoleUpdate, RoleDelete,
	BindingCreate, BindingRead, BindingDelete,
	Revoke, AuditRead, ClusterRecording,
}

// Kubernetes access levels, as the agent binds them: ClusterRoles, strongest
// first. "view" has no secrets, exec, attach or port-forward.
const (
	KubeClusterAdmin = "cluster-admin"
	KubeAdmin        = "admin"
	KubeEdit         = "edit"
	KubeView         = "view"
)

func kubeRank(role string) int {
	switch role {
	case KubeClusterAdmin:
		return 4
	case KubeAdmin:
		return 3
	case KubeEdit:
		return 2
	case KubeView:
		return 1
	}
	return 0
}

// Role is a built-in role.
type Role struct {
	Name string
	// Scope is the one scope the role is bound at.
	Scope string
	// Actions are the API actions the role allows within its scope.
	Actions []Action
	// Kube is the Kubernetes access the role gives on the clusters in its
	// scope: cluster-wide for org and project roles, in the namespace for
	// namespace roles. Empty gives none.
	Kube string
}

func readActions() []Action {
	var out []Action
	for _, a := range Actions {
		if strings.HasSuffix(string(a), ".read") {
			out = append(out, a)
		}
	}
	return out
}

// Roles are the built-in roles, as Paralus has them.
var Roles = []Role{
	{Name: "ADMIN", Scope: store.ScopeOrg, Actions: Actions, Kube: KubeClusterAdmin},
	{Name: "ADMIN_READ_ONLY", Scope: store.ScopeOrg, Actions: readActions(), Kube: KubeView},
	{Name: "PROJECT_ADMIN", Scope: store.ScopeProject, Kube: KubeClusterAdmin, Actions: []Action{
		ProjectRead, ProjectUpdate, ClusterCreate, ClusterRead, ClusterUpdate, ClusterDelete,
		UserRead, GroupRead, RoleRead, BindingCreate, BindingRead, BindingDelete, Revoke, AuditRead,
	}},
	{Name: "PROJECT_READ_ONLY", Scope: store.ScopeProject, Kube: KubeView, Actions: []Action{
		ProjectRead, ClusterRead, UserRead, GroupRead, RoleRead, BindingRead, AuditRead,
	}},
	{Name: "CLUSTER_ADMIN", Scope: store.ScopeProject, Kube: KubeClusterAdmin, Actions: []Action{
		ProjectRead, ClusterCreate, ClusterRead, ClusterUpdate, ClusterDelete,
	}},
	{Name: "NAMESPACE_ADMIN", Scope: store.ScopeNamespace, Kube: KubeAdmin, Actions: []Action{ProjectRead, ClusterRead}},
	{Name: "NAMESPACE_READ_ONLY", Scope: store.ScopeNamespace, Kube: KubeView, Actions: []Action{ProjectRead, ClusterRead}},
}

// LookupRole returns the built-in role of that name.
func LookupRole(name string) (Role, error) {
	for _, r := range Roles {
		if r.Name == name {
			return r, nil
		}
	}
	return Role{}, fmt.Errorf("%w: %q", ErrUnknownRole, name)
}

// Scope is where an object lives: an organization, a project in it, or a
// namespace of a project's clusters.
type Scope struct {
	OrgID, ProjectID, Namespace string
}

// path returns the scope as a path that its ancestors' patterns match:
// "/o/ORG/", "/o/ORG/p/PROJECT/", "/o/ORG/p/PROJECT/n/NS/". Ids and
// namespaces never contain "/" (ids are base32, namespaces DNS labels).
func (s Scope) path() string {
	p := "/o/" + s.OrgID + "/"
	if s.ProjectID != "" {
		p += "p/" + s.ProjectID + "/"
		if s.Namespace != "" {
			p += "n/" + s.Namespace + "/"
		}
	}
	return p
}

func bindingScope(b *store.Binding) Scope {
	return Scope{OrgID: b.OrgID, ProjectID: b.ProjectID, Namespace: b.Namespace}
}

// The Casbin model: a person holds a role in a domain (g), where the
// domain stored is a scope path pattern ("/o/ORG/*") that matches the
// request's scope path and everything under it; a role allows actions (p).
// Kubernetes access is an action too ("kube:admin").
const modelText = `
[request_definition]
r = sub, dom, act

[policy_definition]
p = role, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.role, r.dom) && r.act == p.act
`

func kubeAction(level string) string { return "kube:" + level }

// Bindings is what the engine reads from the store. *store.Store implements
// it.
type Bindings interface {
	// ActiveBindings returns the bindings in force now for a person and
	// their groups.
	ActiveBindings(ctx context.Context, userID string, groupIDs []string) ([]*store.Binding, error)
	// GetRole returns an organization's custom role by name, or an error
	// wrapping store.ErrNotFound.
	GetRole(ctx context.Context, orgID, idOrName string) (*store.Role, error)
}

// Engine makes decisions. It is safe for concurrent use.
type Engine struct {
	st    Bindings
	model model.Model
}

// New returns an engine reading bindings from st.
func New(st Bindings) (*Engine, error) {
	m, err := model.NewModelFromString(modelText)
	if err != nil {
		return nil, fmt.Errorf("policy: model: %w", err)
	}
	// The roles' permissions are the same for everyone: load them once;
	// each decision copies the model and adds only the person's bindings.
	var policies [][]string
	for _, r := range Roles {
		for _, a := range r.Actions {
			policies = append(policies, []string{r.Name, string(a)})
		}
		if r.Kube != "" {
			policies = append(policies, []string{r.Name, kubeAction(r.Kube)})
		}
	}
	if err := m.AddPolicies("p", "p", policies); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &Engine{st: st, model: m}, nil
}

// Subject is the person a decision is for.
type Subject struct {
	UserID string
	// Groups are the ids of the person's groups (from the store, never
	// from a client).
	Groups []string
	// Limit, when set, keeps only bindings of these roles (an API token
	// limited to some of its owner's roles).
	Limit []string
}

// Decider answers for one subject; it holds their bindings as read once.
type Decider struct {
	enf      *casbin.Enforcer
	bindings []*store.Binding
	custom   map[string]*store.Role // binding id -> its custom role
}

// For reads the subject's bindings in force now and returns a decider.
func (e *Engine) For(ctx context.Context, sub Subject) (*Decider, error) {
	bs, err := e.st.ActiveBindings(ctx, sub.UserID, sub.Groups)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if sub.Limit != nil {
		bs = slices.DeleteFunc(bs, func(b *store.Binding) bool { return !slices.Contains(sub.Limit, b.Role) })
	}
	enf, err := casbin.NewEnforcer(e.model.Copy())
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	enf.EnableLog(false)
	enf.AddNamedDomainMatchingFunc("g", "keyMatch", util.KeyMatch)
	var groupings [][]string
	custom := map[string]*store.Role{}
	for _, b := range bs {
		r, err := LookupRole(b.Role)
		if err != nil {
			// A custom role: Kubernetes rules only, no API rights.
			cr, err := e.st.GetRole(ctx, b.OrgID, b.Role)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
			if cr.Scope == b.Scope() && cr.Scope != store.ScopeOrg {
				custom[b.ID] = cr
			}
			continue
		}
		if r.Scope != b.Scope() {
			continue // a misplaced binding gives nothing
		}
		groupings = append(groupings, []string{"me", b.Role, bindingScope(b).path() + "*"})
	}
	if len(groupings) > 0 {
		if _, err := enf.AddGroupingPolicies(groupings); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	return &Decider{enf: enf, bindings: bs, custom: custom}, nil
}

func (d *Decider) enforce(scope Scope, act string) bool {
	ok, err := d.enf.Enforce("me", scope.path(), act)
	return err == nil && ok
}

// Allowed reports whether the subject may perform act on an object in
// scope.
func (d *Decider) Allowed(scope Scope, act Action) bool { return d.enforce(scope, string(act)) }

// AllowedWithin reports whether act is allowed at scope or somewhere under
// it: a person whose only role is in a namespace of a project may read that
// project and its clusters (project.read, cluster.read), though not at the
// project's own scope.
func (d *Decider) AllowedWithin(scope Scope, act Action) bool {
	if d.Allowed(scope, act) {
		return true
	}
	for _, b := range d.bindings {
		bs := bindingScope(b)
		if bs.OrgID == scope.OrgID && (scope.ProjectID == "" || bs.ProjectID == scope.ProjectID) && d.Allowed(bs, act) {
			return true
		}
	}
	return false
}

// Allowed is For followed by Decider.Allowed.
func (e *Engine) Allowed(ctx context.Context, sub Subject, scope Scope, act Action) (bool, error) {
	d, err := e.For(ctx, sub)
	if err != nil {
		return false, err
	}
	return d.Allowed(scope, act), nil
}

// kubeAt returns the strongest Kubernetes access the subject has at scope.
func (d *Decider) kubeAt(scope Scope) string {
	for _, level := range []string{KubeClusterAdmin, KubeAdmin, KubeEdit, KubeView} {
		if d.enforce(scope, kubeAction(level)) {
			return level
		}
	}
	return ""
}

// ClusterAccess returns the subject's Kubernetes access on a cluster that
// belongs to projectID in orgID and is shared with sharedWith: cluster-wide
// grants from org and project bindings, namespace grants from namespace
// bindings. Empty means no access.
func (d *Decider) ClusterAccess(orgID, projectID string, sharedWith []string) []grant.Grant {
	projects := append([]string{projectID}, sharedWith...)
	wide := ""
	for _, p := range projects {
		if l := d.kubeAt(Scope{OrgID: orgID, ProjectID: p}); kubeRank(l) > kubeRank(wide) {
			wide = l
		}
	}
	var out []grant.Grant
	if wide != "" {
		out = append(out, grant.Grant{Role: wide})
	}
	if wide == KubeClusterAdmin {
		return out
	}
	// Custom roles bound in the cluster's projects.
	for _, b := range d.bindings {
		cr := d.custom[b.ID]
		if cr == nil || b.OrgID != orgID || !slices.Contains(projects, b.ProjectID) {
			continue
		}
		g := grant.Grant{Role: cr.Name, Namespace: b.Namespace, Rules: cr.Rules}
		if !slices.ContainsFunc(out, func(o grant.Grant) bool { return o.Key() == g.Key() }) {
			out = append(out, g)
		}
	}
	seen := map[string]bool{}
	for _, b := range d.bindings {
		if b.Namespace == "" || seen[b.Namespace] || !slices.Contains(projects, b.ProjectID) || b.OrgID != orgID {
			continue
		}
		seen[b.Namespace] = true
		l := d.kubeAt(Scope{OrgID: orgID, ProjectID: b.ProjectID, Namespace: b.Namespace})
		if kubeRank(l) > kubeRank(wide) {
			out = append(out, grant.Grant{Role: l, Namespace: b.Namespace})
		}
	}
	slices.SortFunc(out, func(a, b grant.Grant) int { return strings.Compare(a.Namespace, b.Namespace) })
	return out
}

// CanGrantCustom checks that the subject may bind a custom role at scope:
// the role is bound at its own scope, the subject may create bindings
// there, and has cluster-admin Kubernetes access there (a custom role's
// rules can name anything, so only someone who holds everything may hand
// them out).
func (d *Decider) CanGrantCustom(role *store.Role, scope Scope) error {
	b := store.Binding{ProjectID: scope.ProjectID, Namespace: scope.Namespace}
	if role.Scope != b.Scope() {
		return fmt.Errorf("%w: %s is bound at %s scope", ErrScope, role.Name, role.Scope)
	}
	if !d.Allowed(scope, BindingCreate) {
		return fmt.Errorf("%w: you may not create bindings here", ErrEscalation)
	}
	if d.kubeAt(scope) != KubeClusterAdmin {
		return fmt.Errorf("%w: granting a custom role needs cluster-admin access here", ErrEscalation)
	}
	return nil
}

// CanGrant checks that the subject may bind role at scope: the role exists
// and is bound at its own scope, the subject may create bindings there, and
// holds every permission of the role there - its API actions and at least
// its Kubernetes access.
func (d *Decider) CanGrant(role string, scope Scope) error {
	r, err := LookupRole(role)
	if err != nil {
		return err
	}
	b := store.Binding{ProjectID: scope.ProjectID, Namespace: scope.Namespace}
	if r.Scope != b.Scope() {
		return fmt.Errorf("%w: %s is bound at %s scope", ErrScope, r.Name, r.Scope)
	}
	if !d.Allowed(scope, BindingCreate) {
		return fmt.Errorf("%w: you may not create bindings here", ErrEscalation)
	}
	for _, a := range r.Actions {
		if !d.Allowed(scope, a) {
			return fmt.Errorf("%w: %s allows %s", ErrEscalation, r.Name, a)
		}
	}
	if r.Kube != "" && kubeRank(d.kubeAt(scope)) < kubeRank(r.Kube) {
		return fmt.Errorf("%w: %s gives Kubernetes %s", ErrEscalation, r.Name, r.Kube)
	}
	return nil
}
