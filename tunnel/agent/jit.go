package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Labels and annotations on everything the agent creates for a person.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "gatehouse"
	// LabelUser holds the hash that names the person's objects; label values
	// cannot hold arbitrary user ids.
	LabelUser = "gatehouse.dev/user-hash"
	// LabelAgent holds the namespace of the agent that made the object.
	// Every list and sweep selects by it, and binding names carry a hash of
	// it, so that two agents on one API server (two Gatehouse clusters, or
	// two installations) never touch each other's objects.
	LabelAgent = "gatehouse.dev/agent-namespace"
	// AnnotationUser holds the person's user id, for people reading the
	// cluster.
	AnnotationUser = "gatehouse.dev/user"
	// AnnotationLastUsed holds when the agent last issued a token for the
	// service account (RFC 3339); the sweep deletes accounts idle too long.
	AnnotationLastUsed = "gatehouse.dev/last-used"
)

// ServiceAccountName returns the DNS-safe name of a person's service
// account: a prefix and 40 hex digits of SHA-256 of the user id. Distinct
// ids never share a name in practice (a collision would need a SHA-256
// collision), and the name reveals nothing about the person.
func ServiceAccountName(user string) string {
	return "gatehouse-" + userHash(user)
}

func userHash(user string) string {
	sum := sha256.Sum256([]byte(user))
	return hex.EncodeToString(sum[:20])
}

// JIT keeps one ServiceAccount per person in the agent's namespace, the
// (Cluster)RoleBindings their grants call for, and short-lived tokens for it.
type JIT struct {
	cs        kubernetes.Interface
	namespace string
	prefix    string // of binding and role names: "gatehouse-" and a hash of namespace
	tokenTTL  time.Duration
	now       func() time.Time

	// waitEffective, when set, waits until new bindings are honoured.
	waitEffective func(ctx context.Context, token string, grants []grant.Grant) error

	mu    sync.Mutex // guards users
	users map[string]*jitUser
}

type jitUser struct {
	mu        sync.Mutex // serialises work for one person
	grantsKey string     // the grants the bindings were made for
	token     string
	refreshAt time.Time
}

// NewJIT returns a manager working in namespace. tokenTTL is what tokens are
// requested for (the API server enforces at least 10 minutes).
func NewJIT(cs kubernetes.Interface, namespace string, tokenTTL time.Duration, now func() time.Time) *JIT {
	if now == nil {
		now = time.Now
	}
	sum := sha256.Sum256([]byte(namespace))
	return &JIT{cs: cs, namespace: namespace, prefix: "gatehouse-" + hex.EncodeToString(sum[:4]) + "-", tokenTTL: tokenTTL, now: now, users: map[string]*jitUser{}}
}

func (j *JIT) user(user string) *jitUser {
	j.mu.Lock()
	defer j.mu.Unlock()
	u := j.users[user]
	if u == nil {
		u = &jitUser{}
		j.users[user] = u
	}
	return u
}

func grantsKey(gs []grant.Grant) string {
	keys := make([]string, 0, len(gs))
	for _, g := range gs {
		keys = append(keys, g.Key())
	}
	slices.Sort(keys)
	return strings.Join(slices.Compact(keys), ",")
}

// Token returns a token for the person h names, first making sure their
// service account and bindings match h.Grants. Tokens are cached until 80 %
// of their life.
func (j *JIT) Token(ctx context.Context, h *tunnel.Header) (string, error) {
	u := j.user(h.User)
	u.mu.Lock()
	defer u.mu.Unlock()
	key := grantsKey(h.Grants)
	if u.grantsKey == key && u.token != "" && j.now().Before(u.refreshAt) {
		return u.token, nil
	}
	fresh := u.grantsKey != key
	if fresh {
		if err := j.ensure(ctx, h.User, h.Grants); err != nil {
			return "", err
		}
		u.grantsKey = key
	}
	tr, err := j.cs.CoreV1().ServiceAccounts(j.namespace).CreateToken(ctx, ServiceAccountName(h.User), &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrInt64(int64(j.tokenTTL / time.Second))},
	}, metav1.CreateOptions{})
	if err != nil {
		u.grantsKey = "" // the service account may be gone; ensure again next time
		return "", fmt.Errorf("agent: token request: %w", err)
	}
	issued := j.now()
	life := tr.Status.ExpirationTimestamp.Sub(issued)
	u.token = tr.Status.Token
	u.refreshAt = issued.Add(life * 8 / 10)
	if !fresh {
		// In use: keep the sweep away (ensure stamped a new account).
		if err := j.stampLastUsed(ctx, h.User); err != nil {
			return "", err
		}
	}
	if j.waitEffective != nil && fresh {
		if err := j.waitEffective(ctx, u.token, h.Grants); err != nil {
			return "", err
		}
	}
	return u.token, nil
}

// WaitEffective makes Token wait, after creating bindings, until the API
// server's authorizer (which learns of bindings from a watch, a moment
// later) honours them, so a person's first request is not refused. It asks
// as the person's own service account with SelfSubjectAccessReview, which
// every authenticated identity may use: the agent needs no extra rights.
func (j *JIT) WaitEffective(base *rest.Config) {
	j.waitEffective = func(ctx context.Context, token string, grants []grant.Grant) error {
		cfg := rest.AnonymousClientConfig(base)
		cfg.BearerToken = token
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for _, g := range grants {
			// Every built-in role the agent binds may get pods where it
			// applies.
			attrs := &authorizationv1.ResourceAttributes{Verb: "get", Resource: "pods", Namespace: g.Namespace}
			if len(g.Rules) > 0 {
				// A custom role: what its first rule allows first.
				r := g.Rules[0]
				attrs = &authorizationv1.ResourceAttributes{Verb: r.Verbs[0], Resource: r.Resources[0], Namespace: g.Namespace}
				if len(r.APIGroups) > 0 {
					attrs.Group = r.APIGroups[0]
				}
				if len(r.ResourceNames) > 0 {
					attrs.Name = r.ResourceNames[0]
				}
			}
			review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs}}
			for {
				res, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
				if err == nil && res.Status.Allowed {
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("agent: bindings not effective yet: %w", ctx.Err())
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
		return nil
	}
}

func ptrInt64(v int64) *int64 { return &v }

type binding struct {
	namespace string // "" for a ClusterRoleBinding
	name      string
	role      string
	rules     []rbacv1.PolicyRule // a custom role: made as a Role (or ClusterRole) named name
}

func (j *JIT) desired(user string, grants []grant.Grant) []binding {
	h := userHash(user)
	var out []binding
	for _, g := range grants {
		if len(g.Rules) > 0 {
			// Named by the grant's key: changed rules make a new role, and
			// the old one goes with its binding.
			sum := sha256.Sum256([]byte(g.Key()))
			name := j.prefix + h + "-x" + hex.EncodeToString(sum[:8])
			out = append(out, binding{namespace: g.Namespace, name: name, role: name, rules: g.Rules})
			continue
		}
		out = append(out, binding{namespace: g.Namespace, name: j.prefix + h + "-" + g.Role, role: g.Role})
	}
	return out
}

// ensureRole creates or updates the Role (ClusterRole when cluster-wide) of
// a custom grant.
func (j *JIT) ensureRole(ctx context.Context, b binding, meta metav1.ObjectMeta) error {
	meta.Name = b.name
	if b.namespace == "" {
		return createOrUpdate(ctx, j.cs.RbacV1().ClusterRoles(), &rbacv1.ClusterRole{ObjectMeta: meta, Rules: b.rules},
			func(r *rbacv1.ClusterRole) { r.Rules = b.rules })
	}
	meta.Namespace = b.namespace
	return createOrUpdate(ctx, j.cs.RbacV1().Roles(b.namespace), &rbacv1.Role{ObjectMeta: meta, Rules: b.rules},
		func(r *rbacv1.Role) { r.Rules = b.rules })
}

// objectClient is the part of a typed client-go client createOrUpdate uses.
type objectClient[T metav1.Object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// createOrUpdate creates obj; if it exists, it reads the current object,
// applies set to it and updates it.
func createOrUpdate[T metav1.Object](ctx context.Context, c objectClient[T], obj T, set func(T)) error {
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur, err := c.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil {
		return err
	}
	set(cur)
	_, err = c.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// ensure creates the person's service account and exactly the bindings
// their grants call for, deleting any others.
func (j *JIT) ensure(ctx context.Context, user string, grants []grant.Grant) error {
	name := ServiceAccountName(user)
	meta := metav1.ObjectMeta{
		Labels:      map[string]string{LabelManagedBy: ManagedBy, LabelUser: userHash(user), LabelAgent: j.namespace},
		Annotations: map[string]string{AnnotationUser: user},
	}
	sa := &corev1.ServiceAccount{ObjectMeta: *meta.DeepCopy()}
	sa.Name = name
	sa.Annotations[AnnotationLastUsed] = j.now().UTC().Format(time.RFC3339)
	// The token is requested explicitly; nothing should mount one.
	sa.AutomountServiceAccountToken = new(bool)
	if _, err := j.cs.CoreV1().ServiceAccounts(j.namespace).Create(ctx, sa, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if err := j.stampLastUsed(ctx, user); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("agent: create service account: %w", err)
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: j.namespace}}
	want := map[string]bool{}
	for _, b := range j.desired(user, grants) {
		ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: b.role}
		if len(b.rules) > 0 {
			if err := j.ensureRole(ctx, b, *meta.DeepCopy()); err != nil {
				return fmt.Errorf("agent: custom role in %q: %w", b.namespace, err)
			}
			if b.namespace != "" {
				ref.Kind = "Role"
			}
		}
		om := *meta.DeepCopy()
		om.Name = b.name
		var err error
		if b.namespace == "" {
			want["/"+b.name] = true
			crbs := j.cs.RbacV1().ClusterRoleBindings()
			err = createOrReplace(ctx,
				func() error {
					_, err := crbs.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: om, RoleRef: ref, Subjects: subject}, metav1.CreateOptions{})
					return err
				},
				func() (rbacv1.RoleRef, []rbacv1.Subject, error) {
					cur, err := crbs.Get(ctx, b.name, metav1.GetOptions{})
					if err != nil {
						return rbacv1.RoleRef{}, nil, err
					}
					return cur.RoleRef, cur.Subjects, nil
				},
				func() error { return crbs.Delete(ctx, b.name, metav1.DeleteOptions{}) },
				ref, subject)
		} else {
			want[b.namespace+"/"+b.name] = true
			rbs := j.cs.RbacV1().RoleBindings(b.namespace)
			err = createOrReplace(ctx,
				func() error {
					_, err := rbs.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: om, RoleRef: ref, Subjects: subject}, metav1.CreateOptions{})
					return err
				},
				func() (rbacv1.RoleRef, []rbacv1.Subject, error) {
					cur, err := rbs.Get(ctx, b.name, metav1.GetOptions{})
					if err != nil {
						return rbacv1.RoleRef{}, nil, err
					}
					return cur.RoleRef, cur.Subjects, nil
				},
				func() error { return rbs.Delete(ctx, b.name, metav1.DeleteOptions{}) },
				ref, subject)
		}
		if err != nil {
			return fmt.Errorf("agent: bind %s in %q: %w", b.role, b.namespace, err)
		}
	}
	return j.deleteBindings(ctx, user, want)
}

// rbacObject is one of the (Cluster)Roles and (Cluster)RoleBindings the
// agent makes for people. Namespace is empty for the cluster-wide kinds.
type rbacObject struct {
	kind, namespace, name, userHash string
}

// key is how ensure names what it keeps: "ns/name", "/name" cluster-wide.
// A custom role shares its binding's name and key.
func (o rbacObject) key() string { return o.namespace + "/" + o.name }

// rbacObjects lists the people's RBAC objects the selector matches.
func (j *JIT) rbacObjects(ctx context.Context, sel metav1.ListOptions) ([]rbacObject, error) {
	var out []rbacObject
	add := func(kind string, m metav1.ObjectMeta) {
		out = append(out, rbacObject{kind: kind, namespace: m.Namespace, name: m.Name, userHash: m.Labels[LabelUser]})
	}
	rbac := j.cs.RbacV1()
	crbs, err := rbac.ClusterRoleBindings().List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("agent: list cluster role bindings: %w", err)
	}
	rbs, err := rbac.RoleBindings("").List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("agent: list role bindings: %w", err)
	}
	crs, err := rbac.ClusterRoles().List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("agent: list cluster roles: %w", err)
	}
	roles, err := rbac.Roles("").List(ctx, sel)
	if err != nil {
		return nil, fmt.Errorf("agent: list roles: %w", err)
	}
	for _, x := range crbs.Items {
		add("ClusterRoleBinding", x.ObjectMeta)
	}
	for _, x := range rbs.Items {
		add("RoleBinding", x.ObjectMeta)
	}
	for _, x := range crs.Items {
		add("ClusterRole", x.ObjectMeta)
	}
	for _, x := range roles.Items {
		add("Role", x.ObjectMeta)
	}
	return out, nil
}

func (j *JIT) deleteRBAC(ctx context.Context, o rbacObject) error {
	rbac := j.cs.RbacV1()
	var err error
	switch o.kind {
	case "ClusterRoleBinding":
		err = rbac.ClusterRoleBindings().Delete(ctx, o.name, metav1.DeleteOptions{})
	case "RoleBinding":
		err = rbac.RoleBindings(o.namespace).Delete(ctx, o.name, metav1.DeleteOptions{})
	case "ClusterRole":
		err = rbac.ClusterRoles().Delete(ctx, o.name, metav1.DeleteOptions{})
	case "Role":
		err = rbac.Roles(o.namespace).Delete(ctx, o.name, metav1.DeleteOptions{})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("agent: delete %s %s: %w", o.kind, o.key(), err)
	}
	return nil
}

// deleteBindings removes the person's bindings and custom roles not in
// keep (keys as rbacObject.key).
func (j *JIT) deleteBindings(ctx context.Context, user string, keep map[string]bool) error {
	objs, err := j.rbacObjects(ctx, metav1.ListOptions{LabelSelector: LabelUser + "=" + userHash(user) + "," + LabelAgent + "=" + j.namespace})
	if err != nil {
		return err
	}
	for _, o := range objs {
		if !keep[o.key()] {
			if err := j.deleteRBAC(ctx, o); err != nil {
				return err
			}
		}
	}
	return nil
}

func (j *JIT) stampLastUsed(ctx context.Context, user string) error {
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, AnnotationLastUsed, j.now().UTC().Format(time.RFC3339))
	_, err := j.cs.CoreV1().ServiceAccounts(j.namespace).Patch(ctx, ServiceAccountName(user), types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("agent: stamp service account: %w", err)
	}
	return nil
}

// Sync makes the bindings of a person who already has a service account
// match grants now, so that a narrowed grant takes effect before their next
// request. A person without one is left alone: their first request creates
// it.
func (j *JIT) Sync(ctx context.Context, user string, grants []grant.Grant) error {
	u := j.user(user)
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, err := j.cs.CoreV1().ServiceAccounts(j.namespace).Get(ctx, ServiceAccountName(user), metav1.GetOptions{}); apierrors.IsNotFound(err) {
		u.grantsKey = ""
		return nil
	} else if err != nil {
		return fmt.Errorf("agent: sync: %w", err)
	}
	if err := j.ensure(ctx, user, grants); err != nil {
		u.grantsKey = ""
		return err
	}
	// The token stays valid: it names the account, and the bindings
	// decide what it may do.
	u.grantsKey = grantsKey(grants)
	return nil
}

// Sweep deletes the service accounts (and bindings) of people who have not
// used the cluster for idle, and bindings whose service account is gone
// (left by a crash between two deletions). It returns how many accounts it
// deleted.
func (j *JIT) Sweep(ctx context.Context, idle time.Duration) (int, error) {
	sel := metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy + "," + LabelUser + "," + LabelAgent + "=" + j.namespace}
	sas, err := j.cs.CoreV1().ServiceAccounts(j.namespace).List(ctx, sel)
	if err != nil {
		return 0, fmt.Errorf("agent: sweep: %w", err)
	}
	live := map[string]bool{}
	deleted := 0
	cutoff := j.now().Add(-idle)
	for _, sa := range sas.Items {
		hash := sa.Labels[LabelUser]
		last, err := time.Parse(time.RFC3339, sa.Annotations[AnnotationLastUsed])
		if err == nil && last.After(cutoff) {
			live[hash] = true
			continue
		}
		user := sa.Annotations[AnnotationUser]
		if user == "" || userHash(user) != hash {
			live[hash] = true // not ours to judge; a person can read it
			continue
		}
		if err := j.Remove(ctx, user); err != nil {
			return deleted, err
		}
		deleted++
	}
	// Bindings and roles without an account.
	objs, err := j.rbacObjects(ctx, sel)
	if err != nil {
		return deleted, fmt.Errorf("agent: sweep: %w", err)
	}
	for _, o := range objs {
		if !live[o.userHash] {
			if err := j.deleteRBAC(ctx, o); err != nil {
				return deleted, fmt.Errorf("agent: sweep: %w", err)
			}
		}
	}
	return deleted, nil
}

// Remove deletes the person's bindings and service account and forgets
// their token: used when a person loses access.
func (j *JIT) Remove(ctx context.Context, user string) error {
	u := j.user(user)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.grantsKey, u.token = "", ""
	j.mu.Lock()
	delete(j.users, user)
	j.mu.Unlock()
	if err := j.deleteBindings(ctx, user, nil); err != nil {
		return err
	}
	err := j.cs.CoreV1().ServiceAccounts(j.namespace).Delete(ctx, ServiceAccountName(user), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// createOrReplace creates a binding; if one of that name exists but binds
// another role or subject (left by an earlier install, or tampered with), it
// is deleted and created again (a roleRef cannot be changed in place).
func createOrReplace(ctx context.Context, create func() error, get func() (rbacv1.RoleRef, []rbacv1.Subject, error), del func() error, ref rbacv1.RoleRef, subjects []rbacv1.Subject) error {
	err := create()
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	curRef, curSubjects, err := get()
	if err != nil {
		return err
	}
	if curRef == ref && slices.Equal(curSubjects, subjects) {
		return nil
	}
	if err := del(); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return create()
}
