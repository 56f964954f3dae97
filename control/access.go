package control

import (
	"context"
	"errors"
	"fmt"

	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

// Access answers the gateway's question - what Kubernetes access has this
// person on this cluster - from the store and the policy. It implements
// node.Grants.
type Access struct {
	Store  *store.Store
	Policy *policy.Engine
}

// Grants returns the person's grants on the cluster named cluster. user is
// the person's store id (the CN of their certificate). The groups a
// certificate carries are ignored: groups are read from the store, so that
// a change of membership counts before the certificate expires. An unknown
// person or cluster has no access.
func (a *Access) Grants(ctx context.Context, user string, _ []string, cluster string) ([]tunnel.Grant, error) {
	c, err := a.Store.GetCluster(ctx, cluster)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	u, err := a.Store.GetUser(ctx, user)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if u.ID != user || u.OrgID != c.OrgID {
		return nil, nil // looked up by id only; and never across organizations
	}
	groups, err := a.Store.UserGroups(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	d, err := a.Policy.For(ctx, policy.Subject{UserID: u.ID, Groups: groups})
	if err != nil {
		return nil, err
	}
	return d.ClusterAccess(c.OrgID, c.ProjectID, c.SharedWith), nil
}
