// Package grant is the vocabulary of Kubernetes access that the control
// plane decides and the agent enforces: a Grant is a built-in ClusterRole
// (cluster-admin, admin, edit, view) or a custom role's rules, cluster-wide
// or in one namespace. It is a leaf package: the policy (control) produces
// grants, the tunnel carries them and the agent turns them into RBAC, and
// none of those needs to import another for it.
//
// Permits is the gateway's own check of the requests a read-only grant must
// never open (secrets, exec, attach, port-forward, proxy), made before
// anything reaches the cluster, so that a cluster whose RBAC was changed by
// hand does not open them either.
package grant

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"

	rbacv1 "k8s.io/api/rbac/v1"
)

// ErrInvalid is returned (wrapped) for a grant the agent would refuse.
var ErrInvalid = errors.New("grant: invalid")

// Built-in roles: ClusterRoles every Kubernetes cluster has.
const (
	ClusterAdmin = "cluster-admin"
	Admin        = "admin"
	Edit         = "edit"
	View         = "view"
)

// MaxGrants bounds the grants of one person on one cluster.
const MaxGrants = 1024

// Grant is Kubernetes access a person holds on the cluster. The agent turns
// grants into RBAC bindings of the person's service account.
type Grant struct {
	// Role names a ClusterRole: "cluster-admin", "admin", "edit" or "view";
	// or, with Rules, a custom role of the organization.
	Role string `json:"role"`
	// Namespace limits the grant to one namespace; empty means the whole
	// cluster.
	Namespace string `json:"namespace,omitempty"`
	// Rules make the grant a custom role: the agent creates a Role (in
	// Namespace) or ClusterRole with exactly these rules for the person and
	// binds it. Rules name resources explicitly: no wildcards, no
	// non-resource URLs.
	Rules []rbacv1.PolicyRule `json:"rules,omitempty"`
}

// Key identifies the grant: its role, namespace and rules.
func (g Grant) Key() string {
	if len(g.Rules) == 0 {
		return g.Role + "/" + g.Namespace
	}
	b, _ := json.Marshal(g.Rules)
	sum := sha256.Sum256(b)
	return g.Role + "/" + g.Namespace + "/" + hex.EncodeToString(sum[:8])
}

// ValidateCustomRole checks a custom role as the agent will: a DNS-label
// name of at most 40 characters and at most 64 rules, each with verbs and
// resources, none with a wildcard or a non-resource URL.
func ValidateCustomRole(name string, rules []rbacv1.PolicyRule) error {
	return validRules(Grant{Role: name, Rules: rules})
}

var customRoleName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$`)

func validRules(g Grant) error {
	if !customRoleName.MatchString(g.Role) {
		return fmt.Errorf("%w: custom role name %q must be a DNS label of at most 40 characters", ErrInvalid, g.Role)
	}
	if len(g.Rules) == 0 || len(g.Rules) > 64 {
		return fmt.Errorf("%w: custom role %q needs 1 to 64 rules", ErrInvalid, g.Role)
	}
	for _, r := range g.Rules {
		if len(r.Verbs) == 0 || len(r.Resources) == 0 || len(r.NonResourceURLs) > 0 {
			return fmt.Errorf("%w: custom role %q: each rule needs verbs and resources, and no non-resource URLs", ErrInvalid, g.Role)
		}
		for _, list := range [][]string{r.Verbs, r.Resources, r.APIGroups, r.ResourceNames} {
			if slices.Contains(list, "*") {
				return fmt.Errorf("%w: custom role %q: wildcards are not allowed", ErrInvalid, g.Role)
			}
		}
	}
	return nil
}

// Validate checks a person's grants on a cluster as the agent relies on
// them: at least one, at most MaxGrants, each a built-in role or a valid
// custom role, cluster-admin never limited to a namespace.
func Validate(grants []Grant) error {
	if len(grants) == 0 {
		return fmt.Errorf("%w: no grants", ErrInvalid)
	}
	if len(grants) > MaxGrants {
		return fmt.Errorf("%w: more than %d grants", ErrInvalid, MaxGrants)
	}
	for _, g := range grants {
		if len(g.Rules) > 0 {
			if err := validRules(g); err != nil {
				return err
			}
		} else if !ValidRole(g.Role) {
			return fmt.Errorf("%w: unknown role %q", ErrInvalid, g.Role)
		}
		if g.Role == ClusterAdmin && g.Namespace != "" {
			return fmt.Errorf("%w: cluster-admin cannot be limited to a namespace", ErrInvalid)
		}
		if len(g.Namespace) > 63 {
			return fmt.Errorf("%w: namespace %q too long", ErrInvalid, g.Namespace)
		}
	}
	return nil
}

// ValidRole reports whether role is one the agent binds.
func ValidRole(role string) bool {
	switch role {
	case ClusterAdmin, Admin, Edit, View:
		return true
	}
	return false
}

// Request is what the gateway reads of a Kubernetes API request (the API
// server's own request parser fills it).
type Request struct {
	// Verb is the Kubernetes verb: get, list, watch, create, update,
	// patch, delete, deletecollection.
	Verb        string
	APIGroup    string
	Resource    string
	Subresource string
	// Namespace is empty for cluster-scoped requests and for lists across
	// every namespace.
	Namespace string
}

// Sensitive reports whether r reads or writes Secrets or opens a shell, an
// attachment, a port-forward or a proxy into the cluster: what the view
// role never gives.
func (r Request) Sensitive() bool {
	if r.APIGroup == "" && r.Resource == "secrets" {
		return true
	}
	switch r.Subresource {
	case "exec", "attach", "portforward", "proxy":
		return true
	}
	return false
}

// Permits reports whether grants can allow r as far as the gateway checks:
// every request that is not Sensitive passes (the cluster's RBAC, made from
// the same grants, decides it); a sensitive one needs cluster-admin, or
// admin or edit cluster-wide or in r's namespace, or a custom role with a
// rule naming r's resource (with its subresource) and verb in a scope that
// covers r's namespace. view never permits a sensitive request.
func Permits(grants []Grant, r Request) bool {
	if !r.Sensitive() {
		return true
	}
	for _, g := range grants {
		// A namespaced grant covers requests in its namespace only; a
		// request across every namespace needs a cluster-wide grant.
		if g.Namespace != "" && g.Namespace != r.Namespace {
			continue
		}
		if len(g.Rules) == 0 {
			switch g.Role {
			case ClusterAdmin, Admin, Edit:
				return true
			}
			continue
		}
		if rulesAllow(g.Rules, r) {
			return true
		}
	}
	return false
}

func rulesAllow(rules []rbacv1.PolicyRule, r Request) bool {
	resource := r.Resource
	if r.Subresource != "" {
		resource += "/" + r.Subresource
	}
	for _, rule := range rules {
		if slices.Contains(rule.APIGroups, r.APIGroup) && slices.Contains(rule.Resources, resource) && slices.Contains(rule.Verbs, r.Verb) {
			return true
		}
	}
	return false
}

// Covers reports whether grants still allow a request that is in flight
// (a watch, exec, attach or port-forward): Permits, and a grant that
// reaches the request's namespace (a cluster-wide one for a request across
// every namespace or of a cluster-scoped resource). A stream that its
// person's new grants no longer cover is ended by the gateway.
func Covers(grants []Grant, r Request) bool {
	if !Permits(grants, r) {
		return false
	}
	for _, g := range grants {
		if g.Namespace == "" || g.Namespace == r.Namespace {
			return true
		}
	}
	return false
}
