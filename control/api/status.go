package api

import (
	"net/http"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/policy"
)

// Status is apitypes.Status.
type Status = apitypes.Status

// ClusterView is the gateway cluster as the answering node sees it. The
// gateway implements it (a node alone is a cluster of one).
type ClusterView interface {
	// Members returns the live nodes, by name.
	Members() []apitypes.Member
	// Owner returns the node that should hold cluster's tunnel.
	Owner(cluster string) string
}

// CAView is an optional side interface of ClusterView: the certificate
// authority's generations, as the answering node trusts them.
type CAView interface {
	CAGenerations() []apitypes.CAGeneration
}

// heartbeatFresh is how recent a tunnel's heartbeat must be for its
// cluster to count as connected: nodes write one every 30 s.
const heartbeatFresh = 90 * time.Second

// status serves GET /api/v1/status: the members, and each of the
// organization's clusters with its owner and its agent's connection.
func (a *API) status(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if !c.decider.Allowed(c.scope(""), policy.OrgRead) {
		return forbidden(policy.OrgRead)
	}
	clusters, err := a.cfg.Store.OrgClusters(r.Context(), c.User.OrgID)
	if err != nil {
		return err
	}
	tunnels, err := a.cfg.Store.AgentTunnels(r.Context(), c.User.OrgID)
	if err != nil {
		return err
	}
	out := Status{Node: a.cfg.Node, Members: []apitypes.Member{}, Clusters: []apitypes.ClusterStatus{}}
	if a.cfg.View != nil {
		out.Members = a.cfg.View.Members()
	}
	if v, ok := a.cfg.View.(CAView); ok {
		out.CA = v.CAGenerations()
	}
	byName := map[string]int{}
	for _, cl := range clusters {
		cs := apitypes.ClusterStatus{Name: cl.Name, Project: cl.Project}
		if a.cfg.View != nil {
			cs.Owner = a.cfg.View.Owner(cl.Name)
		}
		byName[cl.Name] = len(out.Clusters)
		out.Clusters = append(out.Clusters, cs)
	}
	now := time.Now()
	for _, t := range tunnels {
		i, ok := byName[t.Cluster]
		if !ok {
			continue
		}
		cs := &out.Clusters[i]
		cs.Node, cs.AgentVersion, cs.KubeVersion = t.Node, t.AgentVersion, t.KubeVersion
		cs.Since, cs.LastHeartbeat = t.Connected.UTC(), t.Heartbeat.UTC()
		cs.Connected = now.Sub(t.Heartbeat) < heartbeatFresh
	}
	return writeJSON(w, http.StatusOK, out)
}
