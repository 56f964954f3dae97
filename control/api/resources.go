package api

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/deploy/bootstrap"
)

// Whoami is apitypes.Whoami.
type Whoami = apitypes.Whoami

func (a *API) whoami(w http.ResponseWriter, r *http.Request, c *Caller) error {
	org, err := a.cfg.Store.GetOrg(r.Context(), c.User.OrgID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, Whoami{ID: c.User.ID, Email: c.User.Email, Org: org.Name})
}

// Project is apitypes.Project.
type Project = apitypes.Project

func projectOut(p *store.Project) Project {
	return Project{Name: p.Name, Description: p.Description, Version: p.Version, Created: p.Created}
}

func (c *Caller) scope(projectID string) policy.Scope {
	return policy.Scope{OrgID: c.User.OrgID, ProjectID: projectID}
}

// project reads a project of the caller's organization, answering 404
// both when it does not exist and when the caller may not see it (so that
// names do not leak).
func (a *API) project(r *http.Request, c *Caller, name string) (*store.Project, error) {
	p, err := a.cfg.Store.GetProject(r.Context(), c.User.OrgID, name)
	if err != nil {
		return nil, err
	}
	if !c.decider.AllowedWithin(c.scope(p.ID), policy.ProjectRead) {
		return nil, store.ErrNotFound
	}
	return p, nil
}

func (a *API) listProjects(w http.ResponseWriter, r *http.Request, c *Caller) error {
	pg, err := page(r)
	if err != nil {
		return err
	}
	ps, next, err := a.cfg.Store.ListProjects(r.Context(), c.User.OrgID, pg)
	if err != nil {
		return err
	}
	out := List[Project]{Items: []Project{}, Continue: next}
	for _, p := range ps {
		if c.decider.AllowedWithin(c.scope(p.ID), policy.ProjectRead) {
			out.Items = append(out.Items, projectOut(p))
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getProject(w http.ResponseWriter, r *http.Request, c *Caller) error {
	p, err := a.project(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, projectOut(p))
}

func (a *API) createProject(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in Project
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if err := validName("name", in.Name); err != nil {
		return err
	}
	if in.Version != 0 || !in.Created.IsZero() {
		return badField("version", "version and created are set by the server")
	}
	if !c.decider.Allowed(c.scope(""), policy.ProjectCreate) {
		a.auditChange(r.Context(), r, c, string(policy.ProjectCreate), "project/"+in.Name, http.StatusForbidden, "forbidden")
		return forbidden(policy.ProjectCreate)
	}
	p := &store.Project{OrgID: c.User.OrgID, Name: in.Name, Description: in.Description}
	if err := a.cfg.Store.CreateProject(r.Context(), p); err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, string(policy.ProjectCreate), "project/"+p.Name, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, projectOut(p))
}

func (a *API) deleteProject(w http.ResponseWriter, r *http.Request, c *Caller) error {
	p, err := a.project(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	if !c.decider.Allowed(c.scope(p.ID), policy.ProjectDelete) {
		a.auditChange(r.Context(), r, c, string(policy.ProjectDelete), "project/"+p.Name, http.StatusForbidden, "forbidden")
		return forbidden(policy.ProjectDelete)
	}
	if err := a.cfg.Store.DeleteProject(r.Context(), p.ID); err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, string(policy.ProjectDelete), "project/"+p.Name, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Cluster is apitypes.Cluster.
type Cluster = apitypes.Cluster

// Bootstrap is apitypes.Bootstrap.
type Bootstrap = apitypes.Bootstrap

// ClusterCreated is apitypes.ClusterCreated.
type ClusterCreated = apitypes.ClusterCreated

func clusterOut(c *store.Cluster, project string) Cluster {
	return Cluster{Name: c.Name, Project: project, Description: c.Description, SessionRecording: c.RecordRoles, Registered: c.Fingerprint != "", Version: c.Version, Created: c.Created}
}

// cluster reads a cluster the caller may see (404 otherwise) and its
// project.
func (a *API) cluster(r *http.Request, c *Caller, name string) (*store.Cluster, *store.Project, error) {
	cl, err := a.cfg.Store.GetCluster(r.Context(), name)
	if err != nil {
		return nil, nil, err
	}
	if cl.OrgID != c.User.OrgID || !c.decider.AllowedWithin(c.scope(cl.ProjectID), policy.ClusterRead) {
		return nil, nil, store.ErrNotFound
	}
	p, err := a.cfg.Store.GetProject(r.Context(), c.User.OrgID, cl.ProjectID)
	if err != nil {
		return nil, nil, err
	}
	return cl, p, nil
}

func (a *API) listClusters(w http.ResponseWriter, r *http.Request, c *Caller) error {
	name := r.URL.Query().Get("project")
	if name == "" {
		return badField("project", "the project query parameter is required")
	}
	p, err := a.project(r, c, name)
	if errors.Is(err, store.ErrNotFound) {
		return badField("project", "no project %q", name)
	}
	if err != nil {
		return err
	}
	if !c.decider.AllowedWithin(c.scope(p.ID), policy.ClusterRead) {
		return forbidden(policy.ClusterRead)
	}
	pg, err := page(r)
	if err != nil {
		return err
	}
	cs, next, err := a.cfg.Store.ListClusters(r.Context(), p.ID, pg)
	if err != nil {
		return err
	}
	out := List[Cluster]{Items: []Cluster{}, Continue: next}
	for _, cl := range cs {
		out.Items = append(out.Items, clusterOut(cl, p.Name))
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getCluster(w http.ResponseWriter, r *http.Request, c *Caller) error {
	cl, p, err := a.cluster(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, clusterOut(cl, p.Name))
}

func (a *API) createCluster(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in Cluster
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if err := validName("name", in.Name); err != nil {
		return err
	}
	if in.Project == "" {
		return badField("project", "project is required")
	}
	if in.Version != 0 || in.Registered || !in.Created.IsZero() {
		return badField("version", "version, registered and created are set by the server")
	}
	p, err := a.project(r, c, in.Project)
	if errors.Is(err, store.ErrNotFound) {
		return badField("project", "no project %q", in.Project)
	}
	if err != nil {
		return err
	}
	object := "cluster/" + in.Name
	if !c.decider.Allowed(c.scope(p.ID), policy.ClusterCreate) {
		a.auditChange(r.Context(), r, c, string(policy.ClusterCreate), object, http.StatusForbidden, "forbidden")
		return forbidden(policy.ClusterCreate)
	}
	if err := validRecording(in.SessionRecording); err != nil {
		return err
	}
	cl := &store.Cluster{Name: in.Name, ProjectID: p.ID, Description: in.Description, RecordRoles: in.SessionRecording}
	if err := a.cfg.Store.CreateCluster(r.Context(), cl); err != nil {
		return err
	}
	boot, err := a.bootstrap(r, cl)
	if err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, string(policy.ClusterCreate), object, http.StatusCreated, "")
	return writeJSON(w, http.StatusCreated, ClusterCreated{Cluster: clusterOut(cl, p.Name), Bootstrap: boot})
}

// validRecording checks a cluster's session recording policy.
func validRecording(roles []string) error {
	if len(roles) > store.MaxRecordRoles {
		return badField("sessionRecording", "at most %d roles", store.MaxRecordRoles)
	}
	for _, r := range roles {
		if r != "*" && validName("sessionRecording", r) != nil {
			return badField("sessionRecording", "%q is neither * nor a role name", r)
		}
	}
	return nil
}

// recordsFewer says whether a recording policy of after records someone
// that of before does not: unless after records everyone, or every role
// before names (and not everyone, unless after does too).
func recordsFewer(before, after []string) bool {
	if slices.Contains(after, "*") {
		return false
	}
	for _, r := range before {
		if !slices.Contains(after, r) {
			return true
		}
	}
	return false
}

// updateCluster changes a cluster's description and session recording
// policy (optimistic concurrency: the version read must be sent).
func (a *API) updateCluster(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in Cluster
	if err := decode(w, r, &in); err != nil {
		return err
	}
	cl, p, err := a.cluster(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	switch {
	case in.Name != cl.Name:
		return badField("name", "the name cannot change")
	case in.Project != p.Name:
		return badField("project", "the project cannot change")
	case in.Version == 0:
		return badField("version", "send the version you read")
	}
	if err := validRecording(in.SessionRecording); err != nil {
		return err
	}
	object := "cluster/" + cl.Name
	if !c.decider.Allowed(c.scope(cl.ProjectID), policy.ClusterUpdate) {
		a.auditChange(r.Context(), r, c, string(policy.ClusterUpdate), object, http.StatusForbidden, "forbidden")
		return forbidden(policy.ClusterUpdate)
	}
	if recordsFewer(cl.RecordRoles, in.SessionRecording) && !c.decider.Allowed(c.scope(cl.ProjectID), policy.ClusterRecording) {
		a.auditChange(r.Context(), r, c, string(policy.ClusterRecording), object, http.StatusForbidden, "forbidden: it would record fewer sessions")
		return forbidden(policy.ClusterRecording)
	}
	before := strings.Join(cl.RecordRoles, ",")
	cl.Description, cl.RecordRoles, cl.Version = in.Description, in.SessionRecording, in.Version
	if err := a.cfg.Store.UpdateCluster(r.Context(), cl); err != nil {
		return err
	}
	detail := ""
	if after := strings.Join(cl.RecordRoles, ","); after != before {
		detail = fmt.Sprintf("session recording: [%s] -> [%s]", before, after)
	}
	a.auditEvent(r.Context(), r, c, &audit.Event{Action: string(policy.ClusterUpdate), Object: object, Status: http.StatusOK, Detail: detail})
	return writeJSON(w, http.StatusOK, clusterOut(cl, p.Name))
}

// bootstrap issues a token for the cluster and renders its manifest.
func (a *API) bootstrap(r *http.Request, cl *store.Cluster) (Bootstrap, error) {
	token, err := a.cfg.Store.CreateBootstrapToken(r.Context(), cl.ID, a.cfg.BootstrapTTL)
	if err != nil {
		return Bootstrap{}, err
	}
	expires := time.Now().Add(a.cfg.BootstrapTTL).UTC().Truncate(time.Second)
	m, err := bootstrap.Manifest(bootstrap.Params{
		Cluster: cl.Name, Namespace: bootstrap.DefaultNamespace, GatewayURL: a.cfg.GatewayURL, GatewayCA: string(a.trustBundle()),
		Token: token, Expires: expires, Image: a.cfg.AgentImage, Replicas: 1,
	})
	if err != nil {
		return Bootstrap{}, err
	}
	return Bootstrap{Token: token, Expires: expires, Manifest: string(m)}, nil
}

// bootstrapCluster issues a new token and manifest (the old unused token
// stops working): to re-register a cluster whose agent lost its identity.
func (a *API) bootstrapCluster(w http.ResponseWriter, r *http.Request, c *Caller) error {
	cl, _, err := a.cluster(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	object := "cluster/" + cl.Name
	if !c.decider.Allowed(c.scope(cl.ProjectID), policy.ClusterUpdate) {
		a.auditChange(r.Context(), r, c, "cluster.bootstrap", object, http.StatusForbidden, "forbidden")
		return forbidden(policy.ClusterUpdate)
	}
	boot, err := a.bootstrap(r, cl)
	if err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, "cluster.bootstrap", object, http.StatusOK, "")
	return writeJSON(w, http.StatusOK, boot)
}

// rehomeCluster moves a registered cluster to a new fingerprint, as an
// explicit, audited act: a cluster rebuilt with a new kube-system UID. The
// old fingerprint is forgotten, the old agent's certificates are revoked
// and its tunnel closed, and a new bootstrap token and manifest come back.
// Without it, a registered cluster accepts only its own fingerprint.
func (a *API) rehomeCluster(w http.ResponseWriter, r *http.Request, c *Caller) error {
	cl, _, err := a.cluster(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	object := "cluster/" + cl.Name
	if !c.decider.Allowed(c.scope(cl.ProjectID), policy.ClusterUpdate) {
		a.auditChange(r.Context(), r, c, "cluster.rehome", object, http.StatusForbidden, "forbidden")
		return forbidden(policy.ClusterUpdate)
	}
	rev, err := a.cfg.Store.RehomeCluster(r.Context(), cl.ID, time.Now().Add(MaxAgentCertTTL+time.Hour))
	if err != nil {
		return err
	}
	if ar, ok := a.cfg.Revoker.(AgentRevoker); ok {
		if err := ar.RevokeAgents(r.Context(), cl.Name, rev.Before); err != nil {
			a.auditChange(r.Context(), r, c, "cluster.rehome", object, http.StatusInternalServerError, err.Error())
			return fmt.Errorf("api: re-homing recorded but not applied everywhere: %w", err)
		}
	}
	boot, err := a.bootstrap(r, cl)
	if err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, "cluster.rehome", object, http.StatusOK, "fingerprint was "+cl.Fingerprint)
	return writeJSON(w, http.StatusOK, boot)
}

func (a *API) deleteCluster(w http.ResponseWriter, r *http.Request, c *Caller) error {
	cl, _, err := a.cluster(r, c, r.PathValue("name"))
	if err != nil {
		return err
	}
	object := "cluster/" + cl.Name
	if !c.decider.Allowed(c.scope(cl.ProjectID), policy.ClusterDelete) {
		a.auditChange(r.Context(), r, c, string(policy.ClusterDelete), object, http.StatusForbidden, "forbidden")
		return forbidden(policy.ClusterDelete)
	}
	rev, err := a.cfg.Store.DeleteCluster(r.Context(), cl.ID, time.Now().Add(MaxAgentCertTTL+time.Hour))
	if err != nil {
		return err
	}
	// The deleted cluster's agent goes at once here; the change feed
	// tells the other nodes.
	if ar, ok := a.cfg.Revoker.(AgentRevoker); ok {
		if err := ar.RevokeAgents(r.Context(), cl.Name, rev.Before); err != nil {
			a.log.Warn("cluster deleted; its agent not yet disconnected here", "cluster", cl.Name, "err", err)
		}
	}
	a.auditChange(r.Context(), r, c, string(policy.ClusterDelete), object, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}
