package control

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/grant"
)

// Access answers the gateway's question - what Kubernetes access has this
// person on this cluster - from the store and the policy. It implements
// node.Grants.
type Access struct {
	Store  *store.Store
	Policy *policy.Engine
	// CacheTTL, when positive, keeps each answer that long. A second bounds
	// how long another node's grant change or an expiry takes to reach
	// this node's decisions (a change through this node's API, and every
	// revocation, act at once: see Invalidate); it saves the store four
	// queries per request.
	CacheTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu    sync.Mutex // guards cache
	cache map[accessKey]accessEntry
}

type accessKey struct{ user, cluster string }

type accessEntry struct {
	grants []grant.Grant
	at     time.Time
}

// Invalidate forgets cached answers for user. *node.Node calls it when it
// is told the person's access changed.
func (a *Access) Invalidate(user string) {
	a.mu.Lock()
	for k := range a.cache {
		if k.user == user {
			delete(a.cache, k)
		}
	}
	a.mu.Unlock()
}

// InvalidateAll forgets every cached answer.
func (a *Access) InvalidateAll() {
	a.mu.Lock()
	a.cache = nil
	a.mu.Unlock()
}

func (a *Access) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Grants returns the person's grants on the cluster named cluster. user is
// the person's store id (the CN of their certificate). The groups a
// certificate carries are ignored: groups are read from the store, so that
// a change of membership counts before the certificate expires. An unknown
// person or cluster has no access.
func (a *Access) Grants(ctx context.Context, user string, _ []string, cluster string) ([]grant.Grant, error) {
	if a.CacheTTL <= 0 {
		return a.grants(ctx, user, cluster)
	}
	key := accessKey{user, cluster}
	now := a.now()
	a.mu.Lock()
	e, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Sub(e.at) < a.CacheTTL {
		return e.grants, nil
	}
	gs, err := a.grants(ctx, user, cluster)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.cache == nil || len(a.cache) > 100000 {
		a.cache = map[accessKey]accessEntry{}
	}
	a.cache[key] = accessEntry{grants: gs, at: now}
	a.mu.Unlock()
	return gs, nil
}

func (a *Access) grants(ctx context.Context, user, cluster string) ([]grant.Grant, error) {
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

// RecordRoles returns the roles whose holders' exec and attach sessions on
// cluster are recorded (the cluster's setting; none for a cluster the
// store does not know). It implements node.RecordingPolicy; it is read at
// each session, not cached: sessions are few, and a policy made stricter
// counts at once.
func (a *Access) RecordRoles(ctx context.Context, cluster string) ([]string, error) {
	c, err := a.Store.GetCluster(ctx, cluster)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return c.RecordRoles, nil
}
