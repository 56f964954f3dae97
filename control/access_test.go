package control

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

func TestAccessFromStoreWithCache(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	cfg := store.DefaultConfig()
	cfg.DSN = filepath.Join(t.TempDir(), "gatehouse.db")
	st, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	org := &store.Org{Name: "o"}
	st.CreateOrg(ctx, org)
	p := &store.Project{OrgID: org.ID, Name: "p"}
	st.CreateProject(ctx, p)
	st.CreateCluster(ctx, &store.Cluster{ProjectID: p.ID, Name: "c1"})
	u := &store.User{OrgID: org.ID, Email: "u@example.com"}
	st.CreateUser(ctx, u)
	b := &store.Binding{OrgID: org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: "NAMESPACE_ADMIN", ProjectID: p.ID, Namespace: "team"}
	if err := st.CreateBinding(ctx, b); err != nil {
		t.Fatal(err)
	}
	engine, _ := policy.New(st)
	a := &Access{Store: st, Policy: engine, CacheTTL: time.Second, Now: func() time.Time { return now }}

	gs, err := a.Grants(ctx, u.ID, nil, "c1")
	if err != nil || len(gs) != 1 || gs[0].Role != "admin" || gs[0].Namespace != "team" {
		t.Fatalf("grants: %+v %v", gs, err)
	}
	for _, tc := range []struct{ user, cluster string }{{"nobody", "c1"}, {u.ID, "no-such-cluster"}, {u.Email, "c1"}} {
		if gs, err := a.Grants(ctx, tc.user, nil, tc.cluster); err != nil || len(gs) != 0 {
			t.Fatalf("%s on %s: %+v %v", tc.user, tc.cluster, gs, err)
		}
	}
	// Within the TTL the answer is the cached one; Invalidate or the TTL
	// ends that.
	if err := st.DeleteBinding(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if gs, _ := a.Grants(ctx, u.ID, nil, "c1"); len(gs) != 1 {
		t.Fatalf("cached answer: %+v", gs)
	}
	a.Invalidate(u.ID)
	if gs, _ := a.Grants(ctx, u.ID, nil, "c1"); len(gs) != 0 {
		t.Fatalf("after Invalidate: %+v", gs)
	}
	st.CreateBinding(ctx, &store.Binding{OrgID: org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: "ADMIN"})
	now = now.Add(2 * time.Second)
	if gs, _ := a.Grants(ctx, u.ID, nil, "c1"); len(gs) != 1 || gs[0].Role != "cluster-admin" {
		t.Fatalf("after the TTL: %+v", gs)
	}
}
