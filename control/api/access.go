package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/grant"
)

// AccessNotifier is told that a person's access changed, so that their
// live sessions and their clusters' RBAC follow at once. *node.Node
// implements it.
type AccessNotifier interface {
	AccessChanged(ctx context.Context, user string, groups []string) error
}

// notify tells the gateway about each person a binding reaches.
func (a *API) notify(ctx context.Context, subjectKind, subjectID string) {
	if a.cfg.Notify == nil {
		return
	}
	users := []string{subjectID}
	if subjectKind == store.SubjectGroup {
		var err error
		if users, err = a.cfg.Store.GroupMembers(ctx, subjectID); err != nil {
			a.log.Warn("api: cannot list group members to notify", "err", err)
			return
		}
	}
	for _, u := range users {
		groups, err := a.cfg.Store.UserGroups(ctx, u)
		if err == nil {
			err = a.cfg.Notify.AccessChanged(context.WithoutCancel(ctx), u, groups)
		}
		if err != nil {
			a.log.Warn("api: access change not applied everywhere yet", "user", u, "err", err)
		}
	}
}

// User is apitypes.User.
type User = apitypes.User

func userOut(u *store.User) User {
	out := User{ID: u.ID, Email: u.Email, Name: u.Display, Linked: u.KratosID != "", Version: u.Version, Created: u.Created, LastLogin: u.LastLogin}
	if u.CertTTL > 0 {
		out.CertTTL = u.CertTTL.String()
	}
	return out
}

func (a *API) listUsers(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.decider.Allowed(c.scope(""), policy.UserRead) {
		return forbidden(policy.UserRead)
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	us, next, err := a.cfg.Store.ListUsers(r.Context(), c.User.OrgID, pg)
	if err != nil {
		return err
	}
	out := List[User]{Items: []User{}, Continue: next}
	for _, u := range us {
		out.Items = append(out.Items, userOut(u))
	}
	return writeJSON(w, http.StatusOK, out)
}

// createUser provisions a person by email: grants may name them before
// their first login, which links their Kratos identity.
func (a *API) createUser(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in User
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.ID != "" || in.Linked || in.Version != 0 || !in.Created.IsZero() || !in.LastLogin.IsZero() {
		return badField("id", "id, linked, version, created and lastLogin are set by the server")
	}
	u := &store.User{OrgID: c.User.OrgID, Email: in.Email, Display: in.Name}
	if in.CertTTL != "" {
		d, err := time.ParseDuration(in.CertTTL)
		if err != nil || d < time.Minute || d > MaxCertTTL {
			return badField("certTTL", "certTTL must be a duration from 1m to %s", MaxCertTTL)
		}
		u.CertTTL = d
	}
	if !c.decider.Allowed(c.scope(""), policy.UserCreate) {
		a.auditChange(r.Context(), r, c, string(policy.UserCreate), "user/"+in.Email, http.StatusForbidden, "forbidden")
		return forbidden(policy.UserCreate)
	}
	if in.Password != "" {
		if a.cfg.Identity == nil {
			return badField("password", "this gateway has no identity service for local accounts")
		}
		if len(in.Password) < 8 {
			return badField("password", "password must be at least 8 characters")
		}
	}
	if err := a.cfg.Store.CreateUser(r.Context(), u); err != nil {
		if errors.Is(err, store.ErrInvalid) {
			return badField("email", "email %q is not an address", in.Email)
		}
		if errors.Is(err, store.ErrExists) {
			return &apiError{status: http.StatusConflict, title: "already exists", detail: "a person with this email exists", field: "email"}
		}
		return err
	}
	if in.Password != "" {
		// The password goes to Kratos only; Gatehouse never stores it.
		kid, err := a.cfg.Identity.CreatePerson(r.Context(), u.Email, in.Name, in.Password)
		if err == nil {
			err = a.cfg.Store.LinkIdentity(r.Context(), u.ID, kid)
		}
		if err != nil {
			// Nothing half-made is left.
			if derr := a.cfg.Store.DeleteUser(r.Context(), u.ID); derr != nil {
				a.log.Error("api: cannot remove the person whose identity failed", "user", u.ID, "err", derr)
			}
			a.log.Warn("api: cannot create the Kratos identity", "email", u.Email, "err", err)
			return &apiError{status: http.StatusBadRequest, title: "invalid request", detail: "the identity service refused the account (password too weak, or the email is taken there)", field: "password"}
		}
		u.KratosID = kid
	}
	a.auditChange(r.Context(), r, c, string(policy.UserCreate), "user/"+u.ID, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, userOut(u))
}

func (a *API) userByRef(r *http.Request, c *Caller, ref string) (*store.User, error) {
	u, err := a.cfg.Store.GetUser(r.Context(), ref)
	if err != nil {
		return nil, err
	}
	if u.OrgID != c.User.OrgID {
		return nil, store.ErrNotFound
	}
	return u, nil
}

// InvitationRequest is apitypes.InvitationRequest.
type InvitationRequest = apitypes.InvitationRequest

// InvitationResult is apitypes.InvitationResult.
type InvitationResult = apitypes.InvitationResult

// Invitation lifetimes: a day to act on it by default, a week at most.
const (
	DefaultInvitationTTL = 24 * time.Hour
	MaxInvitationTTL     = 7 * 24 * time.Hour
)

// inviteUser issues an invitation to a person: the first password of a
// local account is set by the person, never chosen by the admin. Asked
// again, it replaces the password at the next use (an admin's reset).
func (a *API) inviteUser(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in InvitationRequest
	if r.ContentLength != 0 {
		if err := decode(w, r, &in); err != nil {
			return err
		}
	}
	ttl := DefaultInvitationTTL
	if in.TTL != "" {
		d, err := time.ParseDuration(in.TTL)
		if err != nil || d < time.Minute || d > MaxInvitationTTL {
			return badField("ttl", "ttl must be a duration from 1m to %s", MaxInvitationTTL)
		}
		ttl = d
	}
	if !c.decider.Allowed(c.scope(""), policy.UserUpdate) {
		a.auditChange(r.Context(), r, c, "user.invite", "user/"+r.PathValue("id"), http.StatusForbidden, "forbidden")
		return forbidden(policy.UserUpdate)
	}
	if a.cfg.Identity == nil {
		return &apiError{status: http.StatusBadRequest, title: "invalid request", detail: "this gateway has no identity service for local accounts"}
	}
	u, err := a.userByRef(r, c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if u.KratosID == "" {
		// An identity with no credential yet; the invitation gives it one.
		kid, err := a.cfg.Identity.CreatePerson(r.Context(), u.Email, u.Display, "")
		if err != nil {
			a.log.Warn("api: cannot create the Kratos identity", "email", u.Email, "err", err)
			return &apiError{status: http.StatusConflict, title: "conflict", detail: "the identity service refused the account (is the email taken there?)", field: "id"}
		}
		if err := a.cfg.Store.LinkIdentity(r.Context(), u.ID, kid); err != nil {
			return err
		}
		u.KratosID = kid
	}
	inv, err := a.cfg.Identity.Invite(r.Context(), u.KratosID, ttl)
	if err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, "user.invite", "user/"+u.ID, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, InvitationResult{Invitation: inv.Code, Expires: inv.Expires})
}

func (a *API) deleteUser(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.decider.Allowed(c.scope(""), policy.UserDelete) {
		return forbidden(policy.UserDelete)
	}
	u, err := a.userByRef(r, c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := a.cfg.Store.DeleteUser(r.Context(), u.ID); err != nil {
		return err
	}
	// Their bindings are gone: the gateway ends their sessions and the
	// agents remove their service accounts.
	a.notify(r.Context(), store.SubjectUser, u.ID)
	a.auditChange(r.Context(), r, c, string(policy.UserDelete), "user/"+u.ID, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Group is apitypes.Group.
type Group = apitypes.Group

func (a *API) listGroups(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.decider.Allowed(c.scope(""), policy.GroupRead) {
		return forbidden(policy.GroupRead)
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	gs, next, err := a.cfg.Store.ListGroups(r.Context(), c.User.OrgID, pg)
	if err != nil {
		return err
	}
	out := List[Group]{Items: []Group{}, Continue: next}
	for _, g := range gs {
		members, err := a.cfg.Store.GroupMembers(r.Context(), g.ID)
		if err != nil {
			return err
		}
		out.Items = append(out.Items, Group{Name: g.Name, Description: g.Description, Members: members})
	}
	return writeJSON(w, http.StatusOK, out)
}

// createGroup creates a group with its IdP mappings and local members.
func (a *API) createGroup(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in Group
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if err := validName("name", in.Name); err != nil {
		return err
	}
	if !c.decider.Allowed(c.scope(""), policy.GroupCreate) {
		a.auditChange(r.Context(), r, c, string(policy.GroupCreate), "group/"+in.Name, http.StatusForbidden, "forbidden")
		return forbidden(policy.GroupCreate)
	}
	var members []*store.User
	for _, m := range in.Members {
		u, err := a.userByRef(r, c, m)
		if errors.Is(err, store.ErrNotFound) {
			return badField("members", "no user %q", m)
		}
		if err != nil {
			return err
		}
		members = append(members, u)
	}
	g := &store.Group{OrgID: c.User.OrgID, Name: in.Name, Description: in.Description}
	if err := a.cfg.Store.CreateGroup(r.Context(), g); err != nil {
		return err
	}
	for _, idp := range in.IdPGroups {
		if err := a.cfg.Store.MapIdPGroup(r.Context(), c.User.OrgID, idp, g.ID); err != nil {
			return err
		}
	}
	for _, u := range members {
		if err := a.cfg.Store.AddMember(r.Context(), g.ID, u.ID); err != nil {
			return err
		}
	}
	a.auditChange(r.Context(), r, c, string(policy.GroupCreate), "group/"+g.Name, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, in)
}

func (a *API) deleteGroup(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.decider.Allowed(c.scope(""), policy.GroupDelete) {
		return forbidden(policy.GroupDelete)
	}
	g, err := a.cfg.Store.GetGroup(r.Context(), c.User.OrgID, r.PathValue("name"))
	if err != nil {
		return err
	}
	members, err := a.cfg.Store.GroupMembers(r.Context(), g.ID)
	if err != nil {
		return err
	}
	if err := a.cfg.Store.DeleteGroup(r.Context(), g.ID); err != nil {
		return err
	}
	for _, m := range members {
		a.notify(r.Context(), store.SubjectUser, m)
	}
	a.auditChange(r.Context(), r, c, string(policy.GroupDelete), "group/"+g.Name, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Subject is apitypes.Subject.
type Subject = apitypes.Subject

// RoleBinding is apitypes.RoleBinding.
type RoleBinding = apitypes.RoleBinding

func (a *API) bindingOut(r *http.Request, c *Caller, b *store.Binding) RoleBinding {
	out := RoleBinding{ID: b.ID, Role: b.Role, Namespace: b.Namespace, Expires: b.Expires, CreatedBy: b.CreatedBy, Subject: Subject{Kind: b.SubjectKind, Name: b.SubjectID}}
	if b.ProjectID != "" {
		if p, err := a.cfg.Store.GetProject(r.Context(), c.User.OrgID, b.ProjectID); err == nil {
			out.Project = p.Name
		}
	}
	if b.SubjectKind == store.SubjectGroup {
		if g, err := a.cfg.Store.GetGroup(r.Context(), c.User.OrgID, b.SubjectID); err == nil {
			out.Subject.Name = g.Name
		}
	} else if u, err := a.cfg.Store.GetUser(r.Context(), b.SubjectID); err == nil {
		out.Subject.Name = u.Email
	}
	return out
}

func (a *API) listBindings(w http.ResponseWriter, r *http.Request, c *Caller) error {
	pg, err := page(r)
	if err != nil {
		return err
	}
	bs, next, err := a.cfg.Store.ListBindings(r.Context(), store.BindingFilter{OrgID: c.User.OrgID}, pg)
	if err != nil {
		return err
	}
	out := List[RoleBinding]{Items: []RoleBinding{}, Continue: next}
	for _, b := range bs {
		if c.decider.Allowed(policy.Scope{OrgID: b.OrgID, ProjectID: b.ProjectID, Namespace: b.Namespace}, policy.BindingRead) {
			out.Items = append(out.Items, a.bindingOut(r, c, b))
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// createBinding grants a role. The caller may grant only what they hold in
// that scope (policy.CanGrant); the person's clusters follow at once.
func (a *API) createBinding(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in RoleBinding
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.ID != "" || in.CreatedBy != "" {
		return badField("id", "id and createdBy are set by the server")
	}
	b := &store.Binding{OrgID: c.User.OrgID, SubjectKind: in.Subject.Kind, Role: in.Role, Namespace: in.Namespace, Expires: in.Expires, CreatedBy: c.User.ID}
	switch in.Subject.Kind {
	case store.SubjectUser:
		u, err := a.userByRef(r, c, in.Subject.Name)
		if errors.Is(err, store.ErrNotFound) {
			return badField("subject.name", "no user %q", in.Subject.Name)
		} else if err != nil {
			return err
		}
		b.SubjectID = u.ID
	case store.SubjectGroup:
		g, err := a.cfg.Store.GetGroup(r.Context(), c.User.OrgID, in.Subject.Name)
		if errors.Is(err, store.ErrNotFound) {
			return badField("subject.name", "no group %q", in.Subject.Name)
		} else if err != nil {
			return err
		}
		b.SubjectID = g.ID
	default:
		return badField("subject.kind", "subject kind must be user or group")
	}
	_, err := policy.LookupRole(in.Role)
	var custom *store.Role
	if err != nil {
		custom, err = a.cfg.Store.GetRole(r.Context(), c.User.OrgID, in.Role)
		if errors.Is(err, store.ErrNotFound) {
			return badField("role", "unknown role %q", in.Role)
		} else if err != nil {
			return err
		}
	}
	if in.Project != "" {
		p, err := a.cfg.Store.GetProject(r.Context(), c.User.OrgID, in.Project)
		if errors.Is(err, store.ErrNotFound) {
			return badField("project", "no project %q", in.Project)
		} else if err != nil {
			return err
		}
		b.ProjectID = p.ID
	}
	if in.Namespace != "" {
		if in.Project == "" {
			return badField("namespace", "a namespace binding needs a project")
		}
		if err := validName("namespace", in.Namespace); err != nil {
			return err
		}
	}
	if !in.Expires.IsZero() && !in.Expires.After(time.Now()) {
		return badField("expires", "expires is in the past")
	}
	object := "rolebinding/" + in.Role + "@" + in.Project + "/" + in.Namespace
	scope := policy.Scope{OrgID: b.OrgID, ProjectID: b.ProjectID, Namespace: b.Namespace}
	check := func() error { return c.decider.CanGrant(in.Role, scope) }
	if custom != nil {
		check = func() error { return c.decider.CanGrantCustom(custom, scope) }
	}
	if err := check(); err != nil {
		if errors.Is(err, policy.ErrScope) {
			return badField("role", "%v", err)
		}
		a.auditChange(r.Context(), r, c, string(policy.BindingCreate), object, http.StatusForbidden, err.Error())
		return &apiError{status: http.StatusForbidden, title: "forbidden", detail: err.Error()}
	}
	if err := a.cfg.Store.CreateBinding(r.Context(), b); err != nil {
		return err
	}
	a.notify(r.Context(), b.SubjectKind, b.SubjectID)
	a.auditChange(r.Context(), r, c, string(policy.BindingCreate), "rolebinding/"+b.ID, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, a.bindingOut(r, c, b))
}

func (a *API) deleteBinding(w http.ResponseWriter, r *http.Request, c *Caller) error {
	b, err := a.cfg.Store.GetBinding(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	scope := policy.Scope{OrgID: b.OrgID, ProjectID: b.ProjectID, Namespace: b.Namespace}
	if b.OrgID != c.User.OrgID || !c.decider.Allowed(scope, policy.BindingRead) {
		return store.ErrNotFound
	}
	if !c.decider.Allowed(scope, policy.BindingDelete) {
		a.auditChange(r.Context(), r, c, string(policy.BindingDelete), "rolebinding/"+b.ID, http.StatusForbidden, "forbidden")
		return forbidden(policy.BindingDelete)
	}
	if err := a.cfg.Store.DeleteBinding(r.Context(), b.ID); err != nil {
		return err
	}
	a.notify(r.Context(), b.SubjectKind, b.SubjectID)
	a.auditChange(r.Context(), r, c, string(policy.BindingDelete), "rolebinding/"+b.ID, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RoleInfo is apitypes.RoleInfo.
type RoleInfo = apitypes.RoleInfo

// createRole creates a custom role: Kubernetes rules that may name
// particular objects (resourceNames), bound at project or namespace scope.
func (a *API) createRole(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in RoleInfo
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.Builtin || len(in.Actions) > 0 || in.Kube != "" {
		return badField("builtin", "custom roles carry rules only")
	}
	if _, err := policy.LookupRole(in.Name); err == nil {
		return badField("name", "%s is a built-in role", in.Name)
	}
	if in.Scope != store.ScopeProject && in.Scope != store.ScopeNamespace {
		return badField("scope", "scope must be project or namespace")
	}
	if err := grant.ValidateCustomRole(in.Name, in.Rules); err != nil {
		field := "rules"
		if strings.Contains(err.Error(), "name") {
			field = "name"
		}
		return badField(field, "%v", err)
	}
	if !c.decider.Allowed(c.scope(""), policy.RoleCreate) {
		a.auditChange(r.Context(), r, c, string(policy.RoleCreate), "role/"+in.Name, http.StatusForbidden, "forbidden")
		return forbidden(policy.RoleCreate)
	}
	role := &store.Role{OrgID: c.User.OrgID, Name: in.Name, Scope: in.Scope, Rules: in.Rules, Description: in.Description}
	if err := a.cfg.Store.CreateRole(r.Context(), role); err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, string(policy.RoleCreate), "role/"+role.Name, http.StatusCreated, "")
	in.Builtin = false
	return writeJSON(w, http.StatusCreated, in)
}

func (a *API) deleteRole(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.decider.Allowed(c.scope(""), policy.RoleDelete) {
		return forbidden(policy.RoleDelete)
	}
	role, err := a.cfg.Store.GetRole(r.Context(), c.User.OrgID, r.PathValue("name"))
	if err != nil {
		return err
	}
	bs, _, err := a.cfg.Store.ListBindings(r.Context(), store.BindingFilter{OrgID: c.User.OrgID}, store.Page{Limit: store.MaxLimit})
	if err != nil {
		return err
	}
	if err := a.cfg.Store.DeleteRole(r.Context(), c.User.OrgID, role.ID); err != nil {
		return err
	}
	for _, b := range bs {
		if b.Role == role.Name {
			a.notify(r.Context(), b.SubjectKind, b.SubjectID)
		}
	}
	a.auditChange(r.Context(), r, c, string(policy.RoleDelete), "role/"+role.Name, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) listRoles(w http.ResponseWriter, r *http.Request, c *Caller) error {
	out := List[RoleInfo]{Items: []RoleInfo{}}
	custom, _, err := a.cfg.Store.ListRoles(r.Context(), c.User.OrgID, store.Page{Limit: store.MaxLimit})
	if err != nil {
		return err
	}
	for _, cr := range custom {
		out.Items = append(out.Items, RoleInfo{Name: cr.Name, Scope: cr.Scope, Rules: cr.Rules, Description: cr.Description})
	}
	for _, r := range policy.Roles {
		ri := RoleInfo{Name: r.Name, Scope: r.Scope, Kube: r.Kube, Actions: []string{}, Builtin: true}
		for _, act := range r.Actions {
			ri.Actions = append(ri.Actions, string(act))
		}
		out.Items = append(out.Items, ri)
	}
	return writeJSON(w, http.StatusOK, out)
}

// Token is apitypes.Token.
type Token = apitypes.Token

// MaxTokenTTL bounds API tokens: a year, so that none is forever.
const MaxTokenTTL = 365 * 24 * time.Hour

func (a *API) createToken(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in Token
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if in.ID != "" || in.Secret != "" || !in.Expires.IsZero() || !in.LastUsed.IsZero() || in.Revoked {
		return badField("id", "only name, ttl and roles are set by the client")
	}
	if in.Name == "" {
		return badField("name", "name is required")
	}
	ttl, err := time.ParseDuration(in.TTL)
	if err != nil || ttl < time.Minute || ttl > MaxTokenTTL {
		return badField("ttl", "ttl must be a duration from 1m to %s", MaxTokenTTL)
	}
	for _, role := range in.Roles {
		if _, err := policy.LookupRole(role); err != nil {
			return badField("roles", "unknown role %q", role)
		}
	}
	if c.Session == nil {
		// A token cannot mint tokens: a leaked one would outlive itself.
		return &apiError{status: http.StatusForbidden, title: "forbidden", detail: "create API tokens from a login session"}
	}
	t := &store.APIToken{UserID: c.User.ID, Name: in.Name, Roles: in.Roles, Expires: time.Now().Add(ttl)}
	secret, err := a.cfg.Store.CreateAPIToken(r.Context(), t)
	if err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, "token.create", "token/"+t.ID, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, Token{ID: t.ID, Name: t.Name, Roles: t.Roles, Secret: secret, Expires: t.Expires.UTC()})
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, c *Caller) error {
	pg, err := page(r)
	if err != nil {
		return err
	}
	ts, next, err := a.cfg.Store.ListAPITokens(r.Context(), c.User.ID, pg)
	if err != nil {
		return err
	}
	out := List[Token]{Items: []Token{}, Continue: next}
	for _, t := range ts {
		out.Items = append(out.Items, Token{ID: t.ID, Name: t.Name, Roles: t.Roles, Expires: t.Expires, LastUsed: t.LastUsed, Revoked: !t.Revoked.IsZero()})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) deleteToken(w http.ResponseWriter, r *http.Request, c *Caller) error {
	id := r.PathValue("id")
	if err := a.cfg.Store.RevokeAPIToken(r.Context(), c.User.ID, id); err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, "token.revoke", "token/"+id, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// updateProject changes a project's description if the version the client
// read is still current (409 otherwise).
func (a *API) updateProject(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in Project
	if err := decode(w, r, &in); err != nil {
		return err
	}
	p, err := a.project(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	if in.Name != p.Name {
		return badField("name", "the name cannot change")
	}
	if in.Version == 0 {
		return badField("version", "send the version you read")
	}
	if !c.decider.Allowed(c.scope(p.ID), policy.ProjectUpdate) {
		return forbidden(policy.ProjectUpdate)
	}
	p.Description, p.Version = in.Description, in.Version
	if err := a.cfg.Store.UpdateProject(r.Context(), p); err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, string(policy.ProjectUpdate), "project/"+p.Name, http.StatusOK, "")
	return writeJSON(w, http.StatusOK, projectOut(p))
}
