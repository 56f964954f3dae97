// Package control owns Gatehouse's configuration and decisions: the store
// (CockroachDB through pgx and cockroach-go, an embedded store for single-node
// use), authorization policy (Casbin over organizations, projects,
// namespaces and roles), identity (Ory Kratos sessions, SSO group mapping,
// API tokens), the certificate authority (control/ca) and the REST API.
//
// Access answers the gateway from the store (control/store) and the policy
// (control/policy); StaticGrants is a fixed table for tests that exercise
// the gateway rather than the policy.
package control

import (
	"context"
	"slices"
	"sync"

	"github.com/gatehouse-dev/gatehouse/grant"
)

// StaticGrants is an in-memory grant table. It is safe for concurrent use;
// the zero value is empty.
type StaticGrants struct {
	mu sync.RWMutex                        // guards m
	m  map[string]map[string][]grant.Grant // subject -> cluster -> grants
}

// GroupSubject names a group as a subject of Set.
func GroupSubject(group string) string { return "group:" + group }

// Set replaces what subject (a user id, or GroupSubject(name)) holds on
// cluster. No grants removes the subject's access there.
func (s *StaticGrants) Set(subject, cluster string, grants ...grant.Grant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]map[string][]grant.Grant{}
	}
	if s.m[subject] == nil {
		s.m[subject] = map[string][]grant.Grant{}
	}
	if len(grants) == 0 {
		delete(s.m[subject], cluster)
		return
	}
	s.m[subject][cluster] = slices.Clone(grants)
}

// Grants returns the union of what the user and their groups hold on
// cluster.
func (s *StaticGrants) Grants(_ context.Context, user string, groups []string, cluster string) ([]grant.Grant, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []grant.Grant
	add := func(subject string) {
		for _, g := range s.m[subject][cluster] {
			if !slices.ContainsFunc(out, func(o grant.Grant) bool { return o.Key() == g.Key() }) {
				out = append(out, g)
			}
		}
	}
	add(user)
	for _, g := range groups {
		add(GroupSubject(g))
	}
	return out, nil
}
