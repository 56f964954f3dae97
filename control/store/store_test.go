package store_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

// One PostgreSQL server for the package; every test gets its own database.
var pg struct {
	once   sync.Once
	server *testenv.Postgres
	err    error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pg.server != nil {
		pg.server.Close()
	}
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// clock is an adjustable clock.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// eachStore runs fn against a fresh, migrated store on each engine: the
// suite is the same for CockroachDB's stand-in and the embedded store.
func eachStore(t *testing.T, fn func(t *testing.T, s *store.Store, clk *clock)) {
	for _, driver := range []string{store.DriverPostgres, store.DriverSQLite} {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			cfg := store.DefaultConfig()
			cfg.Driver = driver
			if driver == store.DriverPostgres {
				pg.once.Do(func() { pg.server, pg.err = testenv.StartPostgres(ctx, testenv.DefaultPostgresConfig()) })
				if pg.err != nil {
					t.Fatal(pg.err)
				}
				dsn, err := pg.server.NewDatabase(ctx)
				if err != nil {
					t.Fatal(err)
				}
				cfg.DSN = dsn
			} else {
				cfg.DSN = filepath.Join(t.TempDir(), "gatehouse.db")
			}
			clk := &clock{}
			cfg.Now = clk.Now
			s, err := store.Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			applied, err := s.Migrate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(applied) == 0 {
				t.Fatal("no migration applied to an empty database")
			}
			fn(t, s, clk)
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

// fixture is an organization with a project and a cluster.
type fixture struct {
	org     *store.Org
	project *store.Project
	cluster *store.Cluster
}

func newFixture(t *testing.T, s *store.Store) fixture {
	t.Helper()
	ctx := context.Background()
	f := fixture{org: &store.Org{Name: "acme"}}
	must(t, s.CreateOrg(ctx, f.org))
	f.project = &store.Project{OrgID: f.org.ID, Name: "payments"}
	must(t, s.CreateProject(ctx, f.project))
	f.cluster = &store.Cluster{ProjectID: f.project.ID, Name: "prod-eu"}
	must(t, s.CreateCluster(ctx, f.cluster))
	return f
}

func TestMigrateIsIdempotent(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		v, err := s.SchemaVersion(ctx)
		must(t, err)
		if v < 1 {
			t.Fatalf("schema version %d", v)
		}
		again, err := s.Migrate(ctx)
		must(t, err)
		if len(again) != 0 {
			t.Fatalf("second Migrate applied %v", again)
		}
	})
}

func TestOrgsProjectsClusters(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		wantErr(t, s.CreateOrg(ctx, &store.Org{Name: "acme"}), store.ErrExists)
		wantErr(t, s.CreateOrg(ctx, &store.Org{}), store.ErrInvalid)
		got, err := s.GetOrg(ctx, "acme")
		must(t, err)
		if got.ID != f.org.ID || got.Version != 1 {
			t.Fatalf("GetOrg by name: %+v", got)
		}
		_, err = s.GetOrg(ctx, "nope")
		wantErr(t, err, store.ErrNotFound)

		// Optimistic concurrency: a stale version is refused.
		a, _ := s.GetOrg(ctx, f.org.ID)
		b, _ := s.GetOrg(ctx, f.org.ID)
		a.CertTTL = 4 * time.Hour
		must(t, s.UpdateOrg(ctx, a))
		b.CertTTL = 2 * time.Hour
		wantErr(t, s.UpdateOrg(ctx, b), store.ErrConflict)
		if got, _ := s.GetOrg(ctx, f.org.ID); got.CertTTL != 4*time.Hour || got.Version != 2 {
			t.Fatalf("after update: %+v", got)
		}
		wantErr(t, s.UpdateOrg(ctx, &store.Org{ID: "missing", Version: 1}), store.ErrNotFound)

		// Names are unique per org for projects, globally for clusters.
		wantErr(t, s.CreateProject(ctx, &store.Project{OrgID: f.org.ID, Name: "payments"}), store.ErrExists)
		wantErr(t, s.CreateProject(ctx, &store.Project{OrgID: "no-such-org", Name: "x"}), store.ErrInvalid)
		other := &store.Project{OrgID: f.org.ID, Name: "search"}
		must(t, s.CreateProject(ctx, other))
		wantErr(t, s.CreateCluster(ctx, &store.Cluster{ProjectID: other.ID, Name: "prod-eu"}), store.ErrExists)

		// Sharing makes a cluster appear in another project's list.
		c, err := s.GetCluster(ctx, "prod-eu")
		must(t, err)
		c.SharedWith = []string{other.ID}
		must(t, s.UpdateCluster(ctx, c))
		shared, _, err := s.ListClusters(ctx, other.ID, store.Page{})
		must(t, err)
		if len(shared) != 1 || shared[0].Name != "prod-eu" || !slices.Equal(shared[0].SharedWith, []string{other.ID}) {
			t.Fatalf("shared clusters: %+v", shared)
		}

		// Deleting a project deletes its clusters.
		must(t, s.DeleteProject(ctx, f.project.ID))
		_, err = s.GetCluster(ctx, "prod-eu")
		wantErr(t, err, store.ErrNotFound)
		wantErr(t, s.DeleteProject(ctx, f.project.ID), store.ErrNotFound)
	})
}

func TestPagination(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		for i := range 25 {
			must(t, s.CreateProject(ctx, &store.Project{OrgID: f.org.ID, Name: fmt.Sprintf("p-%02d", i)}))
		}
		var names []string
		page := store.Page{Limit: 10}
		for pages := 0; ; pages++ {
			if pages > 5 {
				t.Fatal("pagination does not end")
			}
			ps, next, err := s.ListProjects(ctx, f.org.ID, page)
			must(t, err)
			for _, p := range ps {
				names = append(names, p.Name)
			}
			if next == "" {
				break
			}
			page.Continue = next
		}
		if len(names) != 26 || !slices.IsSorted(names) || slices.Contains(names[:25], "payments") {
			t.Fatalf("paged through %d names: %v", len(names), names)
		}
		_, _, err := s.ListProjects(ctx, f.org.ID, store.Page{Continue: "garbage!"})
		wantErr(t, err, store.ErrBadContinue)
	})
}

func TestUsersGroupsAndIdPSync(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		u := &store.User{OrgID: f.org.ID, Email: "Ada@Example.com"}
		must(t, s.CreateUser(ctx, u))
		wantErr(t, s.CreateUser(ctx, &store.User{OrgID: f.org.ID, Email: "ada@example.COM"}), store.ErrExists)
		wantErr(t, s.CreateUser(ctx, &store.User{OrgID: f.org.ID, Email: "not-an-email"}), store.ErrInvalid)

		ops := &store.Group{OrgID: f.org.ID, Name: "ops"}
		devs := &store.Group{OrgID: f.org.ID, Name: "devs"}
		local := &store.Group{OrgID: f.org.ID, Name: "oncall"}
		for _, g := range []*store.Group{ops, devs, local} {
			must(t, s.CreateGroup(ctx, g))
		}
		must(t, s.MapIdPGroup(ctx, f.org.ID, "github:acme/ops", ops.ID))
		must(t, s.MapIdPGroup(ctx, f.org.ID, "github:acme/devs", devs.ID))
		must(t, s.AddMember(ctx, local.ID, u.ID))

		// First login links the identity and maps the IdP's groups.
		got, err := s.RecordLogin(ctx, "ada@example.com", "kratos-1", []string{"github:acme/ops", "unmapped"})
		must(t, err)
		if got.ID != u.ID || got.KratosID != "kratos-1" || got.LastLogin.IsZero() {
			t.Fatalf("login: %+v", got)
		}
		groups, _ := s.UserGroups(ctx, u.ID)
		if want := sorted(ops.ID, local.ID); !slices.Equal(groups, want) {
			t.Fatalf("groups after first login: %v, want %v", groups, want)
		}
		// A later login with other IdP groups replaces them (Paralus
		// synced groups only at the first login); local membership stays.
		_, err = s.RecordLogin(ctx, "ada@example.com", "kratos-1", []string{"github:acme/devs"})
		must(t, err)
		groups, _ = s.UserGroups(ctx, u.ID)
		if want := sorted(devs.ID, local.ID); !slices.Equal(groups, want) {
			t.Fatalf("groups after second login: %v, want %v", groups, want)
		}
		// Another identity cannot take over the account.
		_, err = s.RecordLogin(ctx, "ada@example.com", "kratos-2", nil)
		wantErr(t, err, store.ErrConflict)
		_, err = s.RecordLogin(ctx, "nobody@example.com", "kratos-3", nil)
		wantErr(t, err, store.ErrNotFound)
		byKratos, err := s.GetUserByKratosID(ctx, "kratos-1")
		must(t, err)
		if byKratos.ID != u.ID {
			t.Fatal("GetUserByKratosID found someone else")
		}

		must(t, s.RemoveMember(ctx, local.ID, u.ID))
		wantErr(t, s.RemoveMember(ctx, local.ID, u.ID), store.ErrNotFound)
		members, _ := s.GroupMembers(ctx, devs.ID)
		if !slices.Equal(members, []string{u.ID}) {
			t.Fatalf("members of devs: %v", members)
		}
		must(t, s.DeleteUser(ctx, u.ID))
		if members, _ := s.GroupMembers(ctx, devs.ID); len(members) != 0 {
			t.Fatalf("memberships outlive the person: %v", members)
		}
	})
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func TestRolesAndBindings(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		u := &store.User{OrgID: f.org.ID, Email: "bob@example.com"}
		must(t, s.CreateUser(ctx, u))
		g := &store.Group{OrgID: f.org.ID, Name: "sre"}
		must(t, s.CreateGroup(ctx, g))
		must(t, s.AddMember(ctx, g.ID, u.ID))

		role := &store.Role{OrgID: f.org.ID, Name: "restart-web", Scope: store.ScopeNamespace, Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"apps"}, Resources: []string{"deployments"}, ResourceNames: []string{"web"}, Verbs: []string{"get", "patch"},
		}}}
		must(t, s.CreateRole(ctx, role))
		wantErr(t, s.CreateRole(ctx, &store.Role{OrgID: f.org.ID, Name: "restart-web", Scope: store.ScopeOrg}), store.ErrExists)
		got, err := s.GetRole(ctx, f.org.ID, "restart-web")
		must(t, err)
		if len(got.Rules) != 1 || got.Rules[0].ResourceNames[0] != "web" {
			t.Fatalf("role rules round trip: %+v", got.Rules)
		}

		forever := &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectGroup, SubjectID: g.ID, Role: "PROJECT_READ_ONLY", ProjectID: f.project.ID}
		brief := &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: "restart-web", ProjectID: f.project.ID,
			Namespace: "web", Expires: clk.Now().Add(time.Hour)}
		must(t, s.CreateBinding(ctx, forever))
		must(t, s.CreateBinding(ctx, brief))
		if brief.Scope() != store.ScopeNamespace || forever.Scope() != store.ScopeProject {
			t.Fatal("scopes")
		}
		// Bad bindings.
		wantErr(t, s.CreateBinding(ctx, &store.Binding{OrgID: f.org.ID, SubjectKind: "robot", SubjectID: u.ID, Role: "ADMIN"}), store.ErrInvalid)
		wantErr(t, s.CreateBinding(ctx, &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectUser, SubjectID: "ghost", Role: "ADMIN"}), store.ErrInvalid)
		wantErr(t, s.CreateBinding(ctx, &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: "ADMIN", Namespace: "x"}), store.ErrInvalid)
		otherOrg := &store.Org{Name: "other"}
		must(t, s.CreateOrg(ctx, otherOrg))
		wantErr(t, s.CreateBinding(ctx, &store.Binding{OrgID: otherOrg.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: "ADMIN"}), store.ErrInvalid)

		groups, _ := s.UserGroups(ctx, u.ID)
		active, err := s.ActiveBindings(ctx, u.ID, groups)
		must(t, err)
		if len(active) != 2 {
			t.Fatalf("active bindings: %d", len(active))
		}
		list, _, err := s.ListBindings(ctx, store.BindingFilter{OrgID: f.org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID}, store.Page{})
		must(t, err)
		if len(list) != 1 || list[0].ID != brief.ID {
			t.Fatalf("filtered list: %+v", list)
		}

		// Time-bound access: after expiry the binding is not in force, and
		// the cleanup returns it for the clusters' RBAC.
		clk.Advance(2 * time.Hour)
		active, _ = s.ActiveBindings(ctx, u.ID, groups)
		if len(active) != 1 || active[0].ID != forever.ID {
			t.Fatalf("after expiry: %+v", active)
		}
		expired, err := s.DeleteExpiredBindings(ctx)
		must(t, err)
		if len(expired) != 1 || expired[0].ID != brief.ID || expired[0].SubjectID != u.ID {
			t.Fatalf("expired: %+v", expired)
		}
		_, err = s.GetBinding(ctx, brief.ID)
		wantErr(t, err, store.ErrNotFound)

		// Deleting a role deletes its bindings.
		again := &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: "restart-web", ProjectID: f.project.ID, Namespace: "web"}
		must(t, s.CreateBinding(ctx, again))
		must(t, s.DeleteRole(ctx, f.org.ID, role.ID))
		_, err = s.GetBinding(ctx, again.ID)
		wantErr(t, err, store.ErrNotFound)
		// Deleting a group deletes its bindings.
		must(t, s.DeleteGroup(ctx, g.ID))
		_, err = s.GetBinding(ctx, forever.ID)
		wantErr(t, err, store.ErrNotFound)
	})
}

func TestBootstrapTokens(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		token, err := s.CreateBootstrapToken(ctx, f.cluster.ID, time.Hour)
		must(t, err)

		// Wrong secret, wrong format, no fingerprint.
		tampered := token[:len(token)-1] + map[bool]string{true: "b", false: "a"}[token[len(token)-1] == 'a']
		for _, bad := range []string{tampered, "gh1.x.y", "", token + "x"} {
			_, err := s.Redeem(ctx, bad, "uid-1")
			wantErr(t, err, store.ErrTokenInvalid)
		}
		_, err = s.Redeem(ctx, token, "")
		wantErr(t, err, store.ErrTokenInvalid)

		// Concurrent redemptions: exactly one wins.
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if name, err := s.Redeem(ctx, token, fmt.Sprintf("uid-%d", i)); err == nil && name == "prod-eu" {
					wins.Add(1)
				} else if err != nil && !errors.Is(err, store.ErrTokenUsed) {
					t.Errorf("redeem: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d redemptions of one token succeeded", wins.Load())
		}
		c, _ := s.GetCluster(ctx, f.cluster.ID)
		if c.Fingerprint == "" {
			t.Fatal("fingerprint not recorded")
		}
		_, err = s.Redeem(ctx, token, c.Fingerprint)
		wantErr(t, err, store.ErrTokenUsed)

		// A registered cluster keeps its fingerprint: another token for it,
		// presented from another API server, is refused and stays unused.
		again, err := s.CreateBootstrapToken(ctx, f.cluster.ID, time.Hour)
		must(t, err)
		_, err = s.Redeem(ctx, again, "impostor-uid")
		wantErr(t, err, store.ErrFingerprintMismatch)
		if c, _ := s.GetCluster(ctx, f.cluster.ID); c.Fingerprint == "impostor-uid" {
			t.Fatal("the impostor's fingerprint was recorded")
		}
		// The real agent (same fingerprint) may use it, to re-register
		// after losing its identity.
		name, err := s.Redeem(ctx, again, c.Fingerprint)
		must(t, err)
		if name != "prod-eu" {
			t.Fatalf("redeemed for %q", name)
		}
		// One physical cluster cannot be registered as a second one.
		second := &store.Cluster{ProjectID: f.project.ID, Name: "prod-eu-copy"}
		must(t, s.CreateCluster(ctx, second))
		copyToken, err := s.CreateBootstrapToken(ctx, second.ID, time.Hour)
		must(t, err)
		_, err = s.Redeem(ctx, copyToken, c.Fingerprint)
		wantErr(t, err, store.ErrFingerprintInUse)
		// Re-homing: the admin's explicit act lets a new fingerprint in
		// and revokes the old agent's certificates.
		rev, err := s.RehomeCluster(ctx, f.cluster.ID, clk.Now().Add(time.Hour))
		must(t, err)
		if rev.ClusterID != f.cluster.ID || rev.Before.IsZero() {
			t.Fatalf("re-home revocation: %+v", rev)
		}
		moved, err := s.CreateBootstrapToken(ctx, f.cluster.ID, time.Hour)
		must(t, err)
		_, err = s.Redeem(ctx, moved, "rebuilt-uid")
		must(t, err)
		if c, _ := s.GetCluster(ctx, f.cluster.ID); c.Fingerprint != "rebuilt-uid" {
			t.Fatalf("fingerprint after re-homing: %q", c.Fingerprint)
		}
		_, err = s.RehomeCluster(ctx, "no-such-cluster", clk.Now().Add(time.Hour))
		wantErr(t, err, store.ErrNotFound)

		// Expiry; and a new token replaces an unused old one.
		late, err := s.CreateBootstrapToken(ctx, f.cluster.ID, time.Minute)
		must(t, err)
		newer, err := s.CreateBootstrapToken(ctx, f.cluster.ID, time.Hour)
		must(t, err)
		_, err = s.Redeem(ctx, late, "uid")
		wantErr(t, err, store.ErrTokenInvalid)
		clk.Advance(2 * time.Hour)
		_, err = s.Redeem(ctx, newer, "uid")
		wantErr(t, err, store.ErrTokenExpired)
	})
}

func TestAPITokens(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		u := &store.User{OrgID: f.org.ID, Email: "ci@example.com"}
		must(t, s.CreateUser(ctx, u))
		tok := &store.APIToken{UserID: u.ID, Name: "ci", Roles: []string{"PROJECT_READ_ONLY"}, Expires: clk.Now().Add(24 * time.Hour)}
		secret, err := s.CreateAPIToken(ctx, tok)
		must(t, err)
		_, err = s.CreateAPIToken(ctx, &store.APIToken{UserID: u.ID, Name: "ci", Expires: clk.Now().Add(time.Hour)})
		wantErr(t, err, store.ErrExists)
		_, err = s.CreateAPIToken(ctx, &store.APIToken{UserID: u.ID, Name: "old", Expires: clk.Now().Add(-time.Hour)})
		wantErr(t, err, store.ErrInvalid)

		got, err := s.VerifyAPIToken(ctx, secret)
		must(t, err)
		if got.UserID != u.ID || !slices.Equal(got.Roles, tok.Roles) || got.LastUsed.IsZero() {
			t.Fatalf("verify: %+v", got)
		}
		_, err = s.VerifyAPIToken(ctx, secret[:len(secret)-2]+"zz")
		wantErr(t, err, store.ErrTokenInvalid)
		listed, _, err := s.ListAPITokens(ctx, u.ID, store.Page{})
		must(t, err)
		if len(listed) != 1 || listed[0].LastUsed.IsZero() {
			t.Fatalf("list: %+v", listed)
		}

		must(t, s.RevokeAPIToken(ctx, u.ID, tok.ID))
		_, err = s.VerifyAPIToken(ctx, secret)
		wantErr(t, err, store.ErrTokenRevoked)

		// Revoking the person revokes every token they hold.
		keep := &store.APIToken{UserID: u.ID, Name: "deploy", Expires: clk.Now().Add(24 * time.Hour)}
		deploy, err := s.CreateAPIToken(ctx, keep)
		must(t, err)
		_, err = s.VerifyAPIToken(ctx, deploy)
		must(t, err)
		must(t, s.Revoke(ctx, &store.Revocation{UserID: u.ID, Until: clk.Now().Add(time.Hour)}))
		_, err = s.VerifyAPIToken(ctx, deploy)
		wantErr(t, err, store.ErrTokenRevoked)

		other := &store.APIToken{UserID: u.ID, Name: "short", Expires: clk.Now().Add(time.Hour)}
		secret2, err := s.CreateAPIToken(ctx, other)
		must(t, err)
		clk.Advance(2 * time.Hour)
		_, err = s.VerifyAPIToken(ctx, secret2)
		wantErr(t, err, store.ErrTokenExpired)
	})
}

func TestRevocations(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		issued := clk.Now()
		clk.Advance(time.Minute)
		must(t, s.Revoke(ctx, &store.Revocation{Serial: "ABC123", Until: clk.Now().Add(time.Hour)}))
		must(t, s.Revoke(ctx, &store.Revocation{UserID: "u1", Until: clk.Now().Add(8 * time.Hour)}))
		wantErr(t, s.Revoke(ctx, &store.Revocation{Until: clk.Now()}), store.ErrInvalid)

		for _, tc := range []struct {
			serial, user string
			issued       time.Time
			want         bool
		}{
			{"abc123", "u2", issued, true},                   // by serial, any case
			{"def", "u1", issued, true},                      // issued before the person's revocation
			{"def", "u1", clk.Now().Add(time.Second), false}, // issued after it
			{"def", "u2", issued, false},
		} {
			got, err := s.Revoked(ctx, tc.serial, tc.user, tc.issued, "")
			must(t, err)
			if got != tc.want {
				t.Errorf("Revoked(%s, %s) = %v", tc.serial, tc.user, got)
			}
		}
		// A token's revocation refuses what was minted through it.
		must(t, s.Revoke(ctx, &store.Revocation{TokenID: "tok1", Until: clk.Now().Add(time.Hour)}))
		if got, err := s.Revoked(ctx, "fff", "u2", issued, "tok1"); err != nil || !got {
			t.Errorf("minted through a revoked token: revoked=%v err=%v", got, err)
		}
		if got, err := s.Revoked(ctx, "fff", "u2", issued, "tok2"); err != nil || got {
			t.Errorf("minted through another token: revoked=%v err=%v", got, err)
		}
		wantErr(t, s.Revoke(ctx, &store.Revocation{UserID: "u3", TokenID: "tok3", Until: clk.Now()}), store.ErrInvalid)
		all, err := s.Revocations(ctx, time.Time{})
		must(t, err)
		if len(all) != 3 {
			t.Fatalf("revocations: %d", len(all))
		}
		clk.Advance(2 * time.Hour)
		n, err := s.PruneRevocations(ctx)
		must(t, err)
		if n != 2 {
			t.Fatalf("pruned %d, want the serial's and the token's", n)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []store.Config{
		{Driver: "mysql", DSN: "x", MaxOpenConns: 1},
		{Driver: store.DriverSQLite, MaxOpenConns: 1},
		{Driver: store.DriverSQLite, DSN: "x"},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if err := store.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSSOTokens(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		u := &store.User{OrgID: f.org.ID, Email: "ada@example.com"}
		must(t, s.CreateUser(ctx, u))
		_, err := s.GetSSOToken(ctx, u.ID, "corp")
		wantErr(t, err, store.ErrNotFound)

		must(t, s.PutSSOToken(ctx, &store.SSOToken{UserID: u.ID, Provider: "corp", Subject: "sub-1", Source: "a", Sealed: []byte{0, 1, 2}}))
		// A rotated token replaces the one before.
		must(t, s.PutSSOToken(ctx, &store.SSOToken{UserID: u.ID, Provider: "corp", Subject: "sub-1", Source: "a", Sealed: []byte{3, 4}}))
		got, err := s.GetSSOToken(ctx, u.ID, "corp")
		must(t, err)
		if got.Subject != "sub-1" || got.Source != "a" || !slices.Equal(got.Sealed, []byte{3, 4}) || got.Updated.IsZero() {
			t.Fatalf("token: %+v", got)
		}
		// A token to another user's row is refused by the foreign key.
		if err := s.PutSSOToken(ctx, &store.SSOToken{UserID: "nobody", Provider: "corp", Subject: "x", Source: "a", Sealed: []byte{1}}); err == nil {
			t.Fatal("a token for a person who does not exist was kept")
		}
		// Tokens go with the person.
		must(t, s.DeleteUser(ctx, u.ID))
		_, err = s.GetSSOToken(ctx, u.ID, "corp")
		wantErr(t, err, store.ErrNotFound)
	})
}

func TestValidEmail(t *testing.T) {
	for _, ok := range []string{"ana@example.com", "a.b+c@sub.example.co", "admin@gatehouse.local", "o'brien@example.com"} {
		if err := store.ValidEmail(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "x'); DROP TABLE users;--@x.test", "ana", "ana@", "@example.com", "Ana <ana@example.com>",
		"ana@example.com (work)", `"a b"@example.com`, "ana@exa_mple.com", "ana@[127.0.0.1]", "ana@-example.com",
		"ana\n@example.com", "ana@example.com\r\nBcc: x@y.z", "ána@example.com", "ana@exämple.com",
		strings.Repeat("a", 250) + "@x.io",
	} {
		if err := store.ValidEmail(bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%q accepted (err %v)", bad, err)
		}
	}
}

// The CA's state lives in the store, sealed: Init once (concurrent inits:
// one wins), Open with the same key-encryption key on any node, a clear
// refusal with another, no private key in the clear.
func TestCAState(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		kek, err := ca.NewLocalKEK(bytes.Repeat([]byte{7}, 32))
		must(t, err)
		_, err = ca.Open(ctx, ca.DefaultConfig(), kek, s)
		wantErr(t, err, ca.ErrNoState)

		var wins atomic.Int32
		var first atomic.Pointer[ca.Authority]
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := ca.Init(ctx, ca.DefaultConfig(), kek, s)
				if err == nil {
					wins.Add(1)
					first.Store(a)
				} else if !errors.Is(err, ca.ErrInitialized) {
					t.Errorf("init: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d inits won", wins.Load())
		}
		// Another node opens the same authority: same root, and what one
		// issues the other verifies.
		b, err := ca.Open(ctx, ca.DefaultConfig(), kek, s)
		must(t, err)
		if !bytes.Equal(b.RootPEM(), first.Load().RootPEM()) {
			t.Fatal("another root after Open")
		}
		key, _, err := pki.NewKey()
		must(t, err)
		chain, err := first.Load().IssueUser(context.Background(), "ada", nil, key.Public(), time.Hour)
		must(t, err)
		if id, err := b.VerifyUser(parseCerts(t, chain)); err != nil || id.User != "ada" {
			t.Fatalf("verify on the other node: %v", err)
		}
		// Another KEK is refused by name; a tampered key does not open.
		other, err := ca.NewLocalKEK(bytes.Repeat([]byte{8}, 32))
		must(t, err)
		if _, err := ca.Open(ctx, ca.DefaultConfig(), other, s); err == nil || !strings.Contains(err.Error(), "key-encryption key") {
			t.Fatalf("open with another KEK: %v", err)
		}
		_, err = ca.Open(ctx, ca.DefaultConfig(), nil, s)
		wantErr(t, err, ca.ErrNoKEK)
		st, err := s.LoadCA(ctx)
		must(t, err)
		if len(st.Keys) != 4 {
			t.Fatalf("%d keys stored, want root, users, agents, nodes", len(st.Keys))
		}
		for _, k := range st.Keys {
			if bytes.Contains(k.SealedKey, []byte("PRIVATE KEY")) || len(k.SealedKey) < 64 {
				t.Fatalf("the %s key is not sealed", k.Role)
			}
		}
	})
}

// Every change of access writes the feed in its own transaction, one row
// per person it touches (groups expanded), however many there are.
func TestChangeFeed(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		start := clk.Now().Add(-time.Second)
		var people []string
		for i := range 3 {
			u := &store.User{OrgID: f.org.ID, Email: fmt.Sprintf("p%d@example.com", i)}
			must(t, s.CreateUser(ctx, u))
			people = append(people, u.ID)
		}
		g := &store.Group{OrgID: f.org.ID, Name: "sre"}
		must(t, s.CreateGroup(ctx, g))
		must(t, s.AddMember(ctx, g.ID, people[0]))
		must(t, s.AddMember(ctx, g.ID, people[1]))
		role := &store.Role{OrgID: f.org.ID, Name: "reader", Scope: store.ScopeProject, Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods"}}}}
		must(t, s.CreateRole(ctx, role))
		gb := &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectGroup, SubjectID: g.ID, Role: "reader", ProjectID: f.project.ID}
		must(t, s.CreateBinding(ctx, gb))
		ub := &store.Binding{OrgID: f.org.ID, SubjectKind: store.SubjectUser, SubjectID: people[2], Role: "reader", ProjectID: f.project.ID, Expires: clk.Now().Add(time.Minute)}
		must(t, s.CreateBinding(ctx, ub))
		all := func() []store.Change {
			t.Helper()
			var out []store.Change
			var lastAt time.Time
			lastID := ""
			for {
				page, err := s.Changes(ctx, start, lastAt, lastID, 2)
				must(t, err)
				out = append(out, page...)
				if len(page) < 2 {
					return out
				}
				lastAt, lastID = page[len(page)-1].At, page[len(page)-1].ID
			}
		}
		count := func(cs []store.Change, kind, subject string) int {
			n := 0
			for _, c := range cs {
				if c.Kind == kind && c.Subject == subject {
					n++
				}
			}
			return n
		}
		before := all()
		// The group binding reached both members; memberships too.
		if count(before, store.ChangeAccess, people[0]) != 2 || count(before, store.ChangeAccess, people[1]) != 2 || count(before, store.ChangeAccess, people[2]) != 1 {
			t.Fatalf("changes after bindings: %+v", before)
		}
		// Deleting the role reaches everyone it was bound to.
		must(t, s.DeleteRole(ctx, f.org.ID, role.ID))
		after := all()[len(before):]
		for _, p := range people {
			if count(after, store.ChangeAccess, p) != 1 {
				t.Fatalf("role deletion: changes %+v miss %s", after, p)
			}
		}
		// Revocations of each kind.
		n := len(all())
		must(t, s.Revoke(ctx, &store.Revocation{Serial: "ABCD", Until: clk.Now().Add(time.Hour)}))
		must(t, s.Revoke(ctx, &store.Revocation{UserID: people[0], Until: clk.Now().Add(time.Hour)}))
		_, err := s.RehomeCluster(ctx, f.cluster.ID, clk.Now().Add(time.Hour))
		must(t, err)
		revs := all()[n:]
		if count(revs, store.ChangeRevokeSerial, "abcd") != 1 || count(revs, store.ChangeRevokeUser, people[0]) != 1 || count(revs, store.ChangeRevokeCluster, f.cluster.Name) != 1 {
			t.Fatalf("revocation changes: %+v", revs)
		}
		// Old changes are pruned.
		clk.Advance(2 * store.ChangeRetention)
		pruned, err := s.PruneChanges(ctx)
		must(t, err)
		if pruned == 0 || len(all()) != 0 {
			t.Fatalf("pruned %d, %d left", pruned, len(all()))
		}
	})
}

func TestAgentTunnels(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		other := &store.Cluster{ProjectID: f.project.ID, Name: "prod-us"}
		must(t, s.CreateCluster(ctx, other))
		must(t, s.TunnelUp(ctx, &store.AgentTunnel{Cluster: "prod-eu", Node: "a", Session: "s1", AgentVersion: "v1", KubeVersion: "v1.37.2"}))
		must(t, s.TunnelUp(ctx, &store.AgentTunnel{Cluster: "prod-us", Node: "a", Session: "s2"}))
		// prod-eu's agent moves to node b: the new row wins, and the old
		// connection's end does not remove it.
		must(t, s.TunnelUp(ctx, &store.AgentTunnel{Cluster: "prod-eu", Node: "b", Session: "s3", AgentVersion: "v2"}))
		must(t, s.TunnelDown(ctx, "s1"))
		clk.Advance(time.Minute)
		// Node a still holds s2, and a row it left behind goes.
		must(t, s.TunnelHeartbeat(ctx, "a", []string{"s2"}))
		got, err := s.AgentTunnels(ctx, f.org.ID)
		must(t, err)
		if len(got) != 2 || got[0].Cluster != "prod-eu" || got[0].Node != "b" || got[0].AgentVersion != "v2" || got[1].Node != "a" || !got[1].Heartbeat.After(got[1].Connected) {
			t.Fatalf("tunnels: %+v %+v", got[0], got[1])
		}
		must(t, s.TunnelHeartbeat(ctx, "a", nil))
		got, err = s.AgentTunnels(ctx, f.org.ID)
		must(t, err)
		if len(got) != 1 || got[0].Node != "b" {
			t.Fatalf("after node a holds nothing: %+v", got)
		}
	})
}

// Many clusters made and registered at once (a fleet enrolling, or the
// loadtest tool): every token issued works, once. Under serializable
// isolation the writers conflict and are retried; a token must never be
// lost to a retry.
func TestBootstrapTokensOfManyClustersAtOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 4 {
					cl := &store.Cluster{ProjectID: f.project.ID, Name: fmt.Sprintf("c-%d-%d", i, j)}
					if err := s.CreateCluster(ctx, cl); err != nil {
						t.Errorf("create %s: %v", cl.Name, err)
						return
					}
					token, err := s.CreateBootstrapToken(ctx, cl.ID, time.Hour)
					if err != nil {
						t.Errorf("token of %s: %v", cl.Name, err)
						return
					}
					if name, err := s.Redeem(ctx, token, "uid-"+cl.Name); err != nil || name != cl.Name {
						t.Errorf("redeem the token of %s: %q %v", cl.Name, name, err)
					}
				}
			}()
		}
		wg.Wait()
	})
}

// Deleting a cluster revokes its agents' certificates, through the change
// feed, and a cluster made again under the name is another.
func TestDeleteClusterRevokesItsAgents(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		f := newFixture(t, s)
		if _, err := s.DeleteCluster(ctx, "nope", time.Now().Add(time.Hour)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("delete of a missing cluster: %v", err)
		}
		rev, err := s.DeleteCluster(ctx, f.cluster.ID, time.Now().Add(time.Hour))
		must(t, err)
		if rev.ClusterName != "prod-eu" || rev.Before.IsZero() {
			t.Fatalf("revocation: %+v", rev)
		}
		revs, err := s.Revocations(ctx, time.Time{})
		must(t, err)
		if len(revs) != 1 || revs[0].ClusterName != "prod-eu" || revs[0].ClusterID != f.cluster.ID {
			t.Fatalf("revocations: %+v", revs)
		}
		if _, err := s.GetCluster(ctx, "prod-eu"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the cluster is still there: %v", err)
		}
		changes, err := s.Changes(ctx, time.Time{}, time.Time{}, "", 100)
		must(t, err)
		found := false
		for _, c := range changes {
			if c.Kind == store.ChangeRevokeCluster && c.Subject == "prod-eu" {
				found = true
			}
		}
		if !found {
			t.Fatalf("no %s change: %+v", store.ChangeRevokeCluster, changes)
		}
	})
}

// A serial is recorded once: a second record of it is refused (the signer
// then signs again under another serial); expired records are pruned.
func TestIssuedCertificatesAreUnique(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		now := time.Now()
		c := store.IssuedCert{Serial: "ABCDEF0123", Kind: "user", Subject: "ada", Issued: now, NotAfter: now.Add(time.Hour)}
		must(t, s.RecordIssued(ctx, c))
		c.Serial = "abcdef0123" // the same serial, in other letters
		if err := s.RecordIssued(ctx, c); !errors.Is(err, store.ErrExists) {
			t.Fatalf("a serial recorded twice: %v", err)
		}
		if err := s.RecordIssued(ctx, store.IssuedCert{Kind: "user"}); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("no serial: %v", err)
		}
		must(t, s.RecordIssued(ctx, store.IssuedCert{Serial: "01", Kind: "agent", Subject: "prod", Issued: now, NotAfter: now.Add(-time.Minute)}))
		n, err := s.PruneIssued(ctx, now)
		must(t, err)
		if n != 1 {
			t.Fatalf("pruned %d, want the one expired", n)
		}
	})
}

// A rotation through the store (issue 11): intermediates, then the root.
// Each phase is seen by an unsealed authority (the leader) and a sealed
// one (a follower) once they reload; what the old generation signed is
// trusted until it retires; node certificates stay under the old root
// until it retires.
func TestCARotation(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, clk *clock) {
		ctx := context.Background()
		kek, err := ca.NewLocalKEK(bytes.Repeat([]byte{7}, 32))
		must(t, err)
		leader, err := ca.Init(ctx, ca.DefaultConfig(), kek, s)
		must(t, err)
		follower, err := ca.OpenPublic(ctx, ca.DefaultConfig(), s)
		must(t, err)
		reload := func() {
			t.Helper()
			must(t, leader.Reload(ctx, kek, s))
			must(t, follower.Reload(ctx, nil, s))
		}
		issue := func() []*x509.Certificate {
			t.Helper()
			key, _, err := pki.NewKey()
			must(t, err)
			chain, err := leader.IssueUser(ctx, "ada", nil, key.Public(), time.Hour)
			must(t, err)
			return parseCerts(t, chain)
		}
		verifies := func(what string, chain []*x509.Certificate, want bool) {
			t.Helper()
			for _, a := range []*ca.Authority{leader, follower} {
				if _, err := a.VerifyUser(chain); (err == nil) != want {
					t.Fatalf("%s: verify: %v, want ok %v", what, err, want)
				}
			}
		}
		nodeIssuer := func() string {
			t.Helper()
			key, _, err := pki.NewKey()
			must(t, err)
			chain, err := leader.IssueNode(ctx, []string{"node-1"}, key.Public(), time.Hour)
			must(t, err)
			return parseCerts(t, chain)[0].Issuer.CommonName
		}
		first := issue()
		root1 := leader.RootPEM()
		changes := func() int {
			t.Helper()
			cs, err := s.Changes(ctx, time.Time{}, time.Time{}, "", 1000)
			must(t, err)
			n := 0
			for _, c := range cs {
				if c.Kind == store.ChangeCA {
					n++
				}
			}
			return n
		}

		// Intermediates: standby, trusted everywhere, signing nothing.
		_, err = ca.Rotate(ctx, ca.DefaultConfig(), nil, s, false, time.Hour)
		wantErr(t, err, ca.ErrNoKEK)
		g2, err := ca.Rotate(ctx, ca.DefaultConfig(), kek, s, false, time.Hour)
		must(t, err)
		if g2.Number != 2 || g2.Phase != ca.PhaseStandby || g2.NewRoot || g2.Overlap != time.Hour {
			t.Fatalf("rotation: %+v", g2)
		}
		_, err = ca.Rotate(ctx, ca.DefaultConfig(), kek, s, false, time.Hour)
		wantErr(t, err, ca.ErrRotating)
		reload()
		if leader.Active() != 1 || follower.Newest() != 2 || !bytes.Equal(leader.RootPEM(), root1) {
			t.Fatalf("standby: active %d, newest %d", leader.Active(), follower.Newest())
		}
		if got := issue()[0].Issuer.CommonName; got != "gatehouse users" {
			t.Fatalf("in standby, issued by %q", got)
		}
		// Active: the new intermediates sign; the old stays trusted.
		must(t, s.ActivateCAGeneration(ctx, 2, clk.Now().Add(time.Hour)))
		wantErr(t, s.ActivateCAGeneration(ctx, 2, clk.Now().Add(time.Hour)), store.ErrConflict)
		reload()
		second := issue()
		if leader.Active() != 2 || second[0].Issuer.CommonName != "gatehouse users (generation 2)" || nodeIssuer() != "gatehouse nodes (generation 2)" {
			t.Fatalf("active: generation %d, issued by %q", leader.Active(), second[0].Issuer.CommonName)
		}
		verifies("first generation's, while it retires", first, true)
		verifies("second generation's", second, true)
		if !bytes.Equal(leader.RootPEM(), root1) || !bytes.Equal(follower.RootPEM(), root1) {
			t.Fatal("the root changed in an intermediate rotation")
		}
		gens := follower.Generations()
		if len(gens) != 2 || gens[0].Phase != ca.PhaseRetiring || gens[1].Phase != ca.PhaseActive || gens[0].RootFingerprint != gens[1].RootFingerprint {
			t.Fatalf("generations: %+v", gens)
		}
		// Retired: the old generation's certificates are refused.
		wantErr(t, s.RetireCAGeneration(ctx, 1), store.ErrConflict)
		must(t, s.SunsetCAGeneration(ctx, 1))
		reload()
		verifies("first generation's, at sunset", first, true)
		must(t, s.RetireCAGeneration(ctx, 1))
		reload()
		verifies("first generation's, retired", first, false)
		verifies("second generation's", second, true)

		// The root: both roots in the bundle from standby on; node
		// certificates under the old root until it retires.
		g3, err := ca.Rotate(ctx, ca.DefaultConfig(), kek, s, true, time.Hour)
		must(t, err)
		if !g3.NewRoot {
			t.Fatalf("root rotation: %+v", g3)
		}
		reload()
		if n := strings.Count(string(follower.RootPEM()), "BEGIN CERTIFICATE"); n != 2 {
			t.Fatalf("%d roots in the bundle during a root rotation", n)
		}
		must(t, s.ActivateCAGeneration(ctx, 3, clk.Now().Add(time.Hour)))
		reload()
		third := issue()
		if third[0].Issuer.CommonName != "gatehouse users (generation 3)" || nodeIssuer() != "gatehouse nodes (generation 2)" {
			t.Fatalf("root rotation, active: issued by %q, nodes by %q", third[0].Issuer.CommonName, nodeIssuer())
		}
		verifies("second generation's, under the old root", second, true)
		verifies("third generation's, under the new root", third, true)
		must(t, s.SunsetCAGeneration(ctx, 2))
		reload()
		// At sunset the new root serves, and the old one is still trusted.
		if nodeIssuer() != "gatehouse nodes (generation 3)" || strings.Count(string(follower.RootPEM()), "BEGIN CERTIFICATE") != 2 {
			t.Fatalf("at sunset: nodes by %q", nodeIssuer())
		}
		verifies("second generation's, at sunset", second, true)
		must(t, s.RetireCAGeneration(ctx, 2))
		reload()
		if nodeIssuer() != "gatehouse nodes (generation 3)" || bytes.Equal(follower.RootPEM(), root1) || strings.Count(string(follower.RootPEM()), "BEGIN CERTIFICATE") != 1 {
			t.Fatalf("after the old root retired: nodes by %q", nodeIssuer())
		}
		verifies("second generation's, old root retired", second, false)
		verifies("third generation's", third, true)
		// A node that opens the store now sees the same.
		late, err := ca.Open(ctx, ca.DefaultConfig(), kek, s)
		must(t, err)
		if late.Active() != 3 || !bytes.Equal(late.RootPEM(), follower.RootPEM()) {
			t.Fatalf("a late node: active %d", late.Active())
		}
		if n := changes(); n != 8 {
			t.Fatalf("%d CA changes in the feed, want 8 (two rotations of four phases)", n)
		}
	})
}

func parseCerts(t *testing.T, chain []byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for rest := chain; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		must(t, err)
		certs = append(certs, c)
	}
	return certs
}

// A shared secret is made once, sealed under the KEK: every node reads the
// same, another KEK is refused by name, and nothing is in the clear.
func TestSharedSecret(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		kek, err := ca.NewLocalKEK(bytes.Repeat([]byte{7}, 32))
		must(t, err)
		var wg sync.WaitGroup
		secrets := make([][]byte, 4)
		for i := range secrets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b, err := ca.SharedSecret(ctx, kek, s, "enrolment")
				if err != nil {
					t.Error(err)
				}
				secrets[i] = b
			}()
		}
		wg.Wait()
		for _, b := range secrets[1:] {
			if len(b) != 32 || !bytes.Equal(b, secrets[0]) {
				t.Fatal("the nodes read different secrets")
			}
		}
		sealed, _, err := s.SealedSecret(ctx, "enrolment")
		must(t, err)
		if bytes.Contains(sealed, secrets[0]) {
			t.Fatal("the secret is in the clear")
		}
		other, err := ca.NewLocalKEK(bytes.Repeat([]byte{8}, 32))
		must(t, err)
		if _, err := ca.SharedSecret(ctx, other, s, "enrolment"); err == nil || !strings.Contains(err.Error(), "key-encryption key") {
			t.Fatalf("another KEK: %v", err)
		}
		if _, _, err := s.SealedSecret(ctx, "other"); !errors.Is(err, ca.ErrNoSecret) {
			t.Fatalf("a missing secret: %v", err)
		}
	})
}

// Audit search (issue 12): filters, keyset pagination newest first with
// nothing twice and nothing skipped, a project's view, idempotent
// indexing, and retention.
func TestAuditSearch(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		base := time.Date(2026, 11, 15, 14, 13, 0, 0, time.UTC)
		var evs []*store.AuditEvent
		for i := range 250 {
			e := &store.AuditEvent{ID: fmt.Sprintf("ev-%04d", i), At: base.Add(time.Duration(i/2) * time.Second), // pairs share a time
				OrgID: "acme", ProjectID: []string{"web", "data"}[i%2], Kind: "kube", Node: fmt.Sprintf("node-%d", i%3),
				User: []string{"john", "ana", "bob"}[i%3], Cluster: []string{"staging", "prod"}[i%2], Namespace: "default",
				Verb: []string{"list", "get", "delete"}[i%3], Resource: "pods", Status: 200, Body: []byte(fmt.Sprintf(`{"id":"ev-%04d"}`, i))}
			if i%5 == 0 {
				e.Groups = []string{"sre", "on_call"}
			}
			if i%10 == 0 {
				e.OrgID = "other"
			}
			evs = append(evs, e)
		}
		must(t, s.InsertAuditEvents(ctx, evs))
		must(t, s.InsertAuditEvents(ctx, evs[:10])) // read again from the topic
		all := func(q store.AuditQuery) []*store.AuditEvent {
			t.Helper()
			var out []*store.AuditEvent
			for {
				page, next, err := s.QueryAudit(ctx, q)
				must(t, err)
				out = append(out, page...)
				if next == nil {
					return out
				}
				q.After = next
			}
		}
		// Every event of the org, 7 at a time, newest first, each once.
		got := all(store.AuditQuery{OrgID: "acme", Limit: 7})
		if len(got) != 225 {
			t.Fatalf("%d events of acme, want 225", len(got))
		}
		seen := map[string]bool{}
		for i, e := range got {
			if seen[e.ID] {
				t.Fatalf("%s twice", e.ID)
			}
			seen[e.ID] = true
			if i > 0 && (e.At.After(got[i-1].At) || (e.At.Equal(got[i-1].At) && e.ID > got[i-1].ID)) {
				t.Fatalf("out of order at %d: %s after %s", i, e.ID, got[i-1].ID)
			}
		}
		// John listed the pods in default on staging, at 14:13 on the
		// 15th (the first minute).
		got = all(store.AuditQuery{OrgID: "acme", User: "john", Verb: "list", Cluster: "staging", Namespace: "default", Resource: "pods",
			From: base, To: base.Add(time.Minute)})
		for _, e := range got {
			if e.User != "john" || e.Verb != "list" || e.Cluster != "staging" || e.At.Before(base) || !e.At.Before(base.Add(time.Minute)) {
				t.Fatalf("a filter let %+v through", e)
			}
		}
		if len(got) == 0 || string(got[0].Body) != `{"id":"`+got[0].ID+`"}` {
			t.Fatalf("john's lists: %d", len(got))
		}
		// Groups match whole names (on_call is not on, and _ is not a wildcard).
		if n := len(all(store.AuditQuery{OrgID: "acme", Group: "on_call"})); n != 25 {
			t.Fatalf("group on_call: %d, want 25", n)
		}
		if n := len(all(store.AuditQuery{OrgID: "acme", Group: "on"})); n != 0 {
			t.Fatalf("group on: %d, want 0", n)
		}
		if n := len(all(store.AuditQuery{OrgID: "acme", Group: "on%call"})); n != 0 {
			t.Fatalf("group on%%call: %d, want 0", n)
		}
		// A project's view.
		for _, e := range all(store.AuditQuery{OrgID: "acme", Projects: []string{"web"}}) {
			if e.ProjectID != "web" {
				t.Fatalf("the web view saw %s's event", e.ProjectID)
			}
		}
		if n := len(all(store.AuditQuery{OrgID: "acme", Projects: []string{}})); n != 0 {
			t.Fatalf("a view of no project saw %d", n)
		}
		// Retention.
		gone, err := s.DeleteAuditBefore(ctx, base.Add(50*time.Second), 30)
		must(t, err)
		if gone != 100 {
			t.Fatalf("retention removed %d, want 100", gone)
		}
		if n := len(all(store.AuditQuery{OrgID: "acme"})) + len(all(store.AuditQuery{OrgID: "other"})); n != 150 {
			t.Fatalf("%d left after retention, want 150", n)
		}
	})
}

func TestRecordingsAndClusterPolicy(t *testing.T) {
	eachStore(t, func(t *testing.T, s *store.Store, _ *clock) {
		ctx := context.Background()
		org := &store.Org{Name: "rec-org"}
		must(t, s.CreateOrg(ctx, org))
		p := &store.Project{OrgID: org.ID, Name: "web"}
		must(t, s.CreateProject(ctx, p))
		c := &store.Cluster{Name: "rec-1", ProjectID: p.ID, RecordRoles: []string{"cluster-admin", "edit"}}
		must(t, s.CreateCluster(ctx, c))
		got, err := s.GetCluster(ctx, "rec-1")
		must(t, err)
		if strings.Join(got.RecordRoles, ",") != "cluster-admin,edit" {
			t.Fatalf("record roles %v", got.RecordRoles)
		}
		got.RecordRoles = []string{"*"}
		must(t, s.UpdateCluster(ctx, got))
		if got, _ = s.GetCluster(ctx, "rec-1"); strings.Join(got.RecordRoles, ",") != "*" {
			t.Fatalf("record roles after the update %v", got.RecordRoles)
		}
		got.RecordRoles = []string{"a,b"}
		if err := s.UpdateCluster(ctx, got); !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("a role with a comma: %v", err)
		}

		old, now := time.Now().Add(-48*time.Hour), time.Now()
		var chunks []*store.RecordingChunk
		for i := range 5 {
			chunks = append(chunks, &store.RecordingChunk{OrgID: org.ID, ProjectID: p.ID, Recording: "r-old", Seq: i, At: old, Cluster: "rec-1", Data: fmt.Sprint(i), Final: i == 4})
		}
		chunks = append(chunks, &store.RecordingChunk{OrgID: org.ID, ProjectID: p.ID, Recording: "r-new", Seq: 0, At: now, Cluster: "rec-1", Data: "a"},
			&store.RecordingChunk{OrgID: org.ID, ProjectID: p.ID, Recording: "r-new", Seq: 2, At: now, Cluster: "rec-1", Data: "c", Final: true})
		must(t, s.InsertRecordingChunks(ctx, chunks))
		must(t, s.InsertRecordingChunks(ctx, chunks)) // again: no harm
		rec, err := s.GetRecording(ctx, org.ID, "r-old")
		must(t, err)
		if rec.Data != "01234" || !rec.Complete || rec.Cluster != "rec-1" || rec.ProjectID != p.ID {
			t.Fatalf("recording %+v", rec)
		}
		// A gap: what is after it is not returned, and it is not complete.
		if rec, err = s.GetRecording(ctx, org.ID, "r-new"); err != nil || rec.Data != "a" || rec.Complete {
			t.Fatalf("a recording with a gap: %+v %v", rec, err)
		}
		// Retention, in small batches.
		if _, err := s.DeleteAuditBefore(ctx, now.Add(-time.Hour), 2); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetRecording(ctx, org.ID, "r-old"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("an old recording outlived retention: %v", err)
		}
		if _, err := s.GetRecording(ctx, org.ID, "r-new"); err != nil {
			t.Fatalf("a new recording went: %v", err)
		}
	})
}
