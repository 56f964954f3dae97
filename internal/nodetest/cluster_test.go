package nodetest_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/ring"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
	)
}

// fakeAPI stands for a cluster's API server: namespaces to list, and a
// watch of pods that sends an event every 50 ms until the client goes.
func fakeAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"kind":"NamespaceList","apiVersion":"v1","items":[{"metadata":{"name":"demo"}}]}`)
	})
	mux.HandleFunc("/api/v1/namespaces/demo/pods", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") != "true" {
			fmt.Fprint(w, `{"kind":"PodList","apiVersion":"v1","items":[]}`)
			return
		}
		rc := http.NewResponseController(w)
		for i := 0; ; i++ {
			fmt.Fprintf(w, `{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"p%d"}}}`+"\n", i)
			rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	return mux
}

func get(t testing.TB, c *nodetest.Cluster, n *nodetest.Node, cert tls.Certificate, path string) int {
	t.Helper()
	hc := c.HTTPClient(&cert)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(n.URL() + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, timeout, testenv.Cond(what, cond))
}

// Restarting a `gatehouse node` process keeps every identity: the agent
// reconnects with the certificate it had (no new token), and a person's
// certificate issued before the restart still works (issue 9, section 2).
func TestNodeRestartKeepsIdentities(t *testing.T) {
	c := nodetest.Start(t, 1)
	n := c.Nodes[0]
	agent := c.StartAgent("prod", n, fakeAPI())
	ada, token := c.Person("ada@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	cert := c.Credential(n, token)
	eventually(t, 10*time.Second, "a request through the tunnel", func() bool { return get(t, c, n, cert, "/k8s/prod/api/v1/namespaces") == http.StatusOK })
	root := c.RootPEM()

	n.Stop()
	n.Start()
	if string(c.RootPEM()) != string(root) {
		t.Fatal("the node came back with another root")
	}
	start := time.Now()
	eventually(t, 30*time.Second, "the same certificate works after the restart", func() bool {
		return get(t, c, n, cert, "/k8s/prod/api/v1/namespaces") == http.StatusOK
	})
	t.Logf("the person's request went through %s after the node was back (agent reconnect)", time.Since(start))
	if agent.Sessions() < 2 {
		t.Fatalf("the agent has had %d tunnel sessions; it should have reconnected", agent.Sessions())
	}
	// Revocations outlive the process too: revoke, restart, still refused.
	code, body := c.Do(n, http.MethodPost, "/api/v1/revocations", c.AdminToken, api.RevocationRequest{User: ada.ID})
	if code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, body)
	}
	n.Stop()
	n.Start()
	if code := get(t, c, n, cert, "/k8s/prod/api/v1/namespaces"); code != http.StatusUnauthorized {
		t.Fatalf("a revoked certificate after a restart: %d", code)
	}
}

// watch opens a watch through node n with cert and returns a channel closed
// when it ends.
func watch(t *testing.T, c *nodetest.Cluster, n *nodetest.Node, cert tls.Certificate) <-chan struct{} {
	t.Helper()
	hc := c.HTTPClient(&cert)
	resp, err := hc.Get(n.URL() + "/k8s/prod/api/v1/namespaces/demo/pods?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %d", resp.StatusCode)
	}
	done := make(chan struct{})
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() {
		t.Fatal("the watch sent nothing")
	}
	go func() {
		defer close(done)
		defer hc.CloseIdleConnections()
		defer resp.Body.Close()
		for lines.Scan() {
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return done
}

func waitEnded(t *testing.T, done <-chan struct{}, since time.Time, what string) time.Duration {
	t.Helper()
	select {
	case <-done:
		took := time.Since(since)
		t.Logf("%s: the watch ended %s later", what, took.Round(time.Millisecond))
		return took
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: the watch is still open after 15 s", what)
	}
	return 0
}

// Every change reaches every node (issue 9, section 3): two node processes
// on one PostgreSQL; a person watches through node B; a revocation, a
// narrowed grant and an expiring grant made through node A (or the store)
// end the watch. The times are logged, not asserted.
func TestChangesReachEveryNode(t *testing.T) {
	c := nodetest.Start(t, 2)
	a, b := c.Nodes[0], c.Nodes[1]
	c.StartAgent("prod", b, fakeAPI())

	t.Run("revocation", func(t *testing.T) {
		u, token := c.Person("rev@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
		cert := c.Credential(a, token)
		done := watch(t, c, b, cert)
		start := time.Now()
		if code, body := c.Do(a, http.MethodPost, "/api/v1/revocations", c.AdminToken, api.RevocationRequest{User: u.ID}); code != http.StatusNoContent {
			t.Fatalf("revoke through node A: %d %s", code, body)
		}
		waitEnded(t, done, start, "revocation through node A")
		if code := get(t, c, b, cert, "/k8s/prod/api/v1/namespaces"); code != http.StatusUnauthorized {
			t.Fatalf("node B after the revocation: %d", code)
		}
	})

	t.Run("narrowed grant", func(t *testing.T) {
		u, token := c.Person("narrow@acme.test", "", "", "")
		wide := c.Bind(u.ID, "PROJECT_READ_ONLY", c.Project.ID, "", time.Time{})
		c.Bind(u.ID, "NAMESPACE_READ_ONLY", c.Project.ID, "other", time.Time{})
		cert := c.Credential(a, token)
		done := watch(t, c, b, cert)
		start := time.Now()
		if code, body := c.Do(a, http.MethodDelete, "/api/v1/rolebindings/"+wide.ID, c.AdminToken, nil); code != http.StatusNoContent {
			t.Fatalf("narrow through node A: %d %s", code, body)
		}
		waitEnded(t, done, start, "grant narrowed through node A")
		if code := get(t, c, b, cert, "/k8s/prod/api/v1/namespaces/other/pods"); code != http.StatusOK && code != http.StatusNotFound {
			t.Fatalf("the narrowed grant should still reach its namespace: %d", code)
		}
	})

	t.Run("expiring grant", func(t *testing.T) {
		u, token := c.Person("brief@acme.test", "", "", "")
		expires := time.Now().Add(3 * time.Second)
		c.Bind(u.ID, "PROJECT_READ_ONLY", c.Project.ID, "", expires)
		cert := c.Credential(a, token)
		done := watch(t, c, b, cert)
		waitEnded(t, done, expires, "grant expired")
		if code := get(t, c, b, cert, "/k8s/prod/api/v1/namespaces"); code != http.StatusForbidden {
			t.Fatalf("after expiry: %d", code)
		}
	})
}

// A 3-node gateway cluster (real processes): agents that all dial one node
// (the stand-in for the anycast address) are redirected to the rendezvous
// owner of their cluster, and every cluster is reachable through every
// node, forwarded one hop where the node does not hold the tunnel.
func TestRingPlacesRedirectsAndForwards(t *testing.T) {
	var clusters []string
	for i := range 12 {
		clusters = append(clusters, fmt.Sprintf("c%02d", i))
	}
	c := nodetest.StartRing(t, 3, append(clusters, "ghost")...)
	names := []string{}
	byAddr := map[string]string{}
	for _, n := range c.Nodes {
		names = append(names, n.Name)
		byAddr[n.Addr] = n.Name
	}
	want := ring.Place(append(slices.Clone(clusters), "ghost"), names, ring.DefaultEpsilon)
	agents := map[string]*nodetest.Agent{}
	for _, cl := range clusters {
		agents[cl] = c.StartAgent(cl, c.Nodes[0], fakeAPI())
	}
	redirected := 0
	for _, cl := range clusters {
		a := agents[cl]
		eventually(t, 30*time.Second, cl+" held by its owner "+want[cl], func() bool { return byAddr[a.Remote()] == want[cl] })
		if a.Redirects() > 0 {
			redirected++
		}
	}
	t.Logf("owners %v; %d of %d agents were redirected from %s", want, redirected, len(clusters), c.Nodes[0].Name)
	_, token := c.Person("ada@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	cert := c.Credential(c.Nodes[0], token)
	for _, cl := range clusters {
		for _, n := range c.Nodes {
			if code := get(t, c, n, cert, "/k8s/"+cl+"/api/v1/namespaces"); code != http.StatusOK {
				t.Fatalf("%s through %s (owner %s): %d", cl, n.Name, want[cl], code)
			}
		}
	}
	// gatehouse status says the same, through any node, by API and CLI.
	code, body := c.Do(c.Nodes[2], http.MethodGet, "/api/v1/status", c.AdminToken, nil)
	var st apitypes.Status
	if code != http.StatusOK || json.Unmarshal(body, &st) != nil {
		t.Fatalf("status: %d %s", code, body)
	}
	if len(st.Members) != 3 || len(st.Clusters) != len(clusters)+1 {
		t.Fatalf("status: %d members, %d clusters", len(st.Members), len(st.Clusters))
	}
	for _, cs := range st.Clusters {
		connected := cs.Name != "ghost"
		if cs.Owner != want[cs.Name] || cs.Connected != connected || (connected && (cs.Node != want[cs.Name] || cs.AgentVersion != "nodetest" || cs.KubeVersion != "v0.0.0-fake")) {
			t.Fatalf("status of %s: %+v (owner %s)", cs.Name, cs, want[cs.Name])
		}
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	os.WriteFile(tokenFile, []byte(c.AdminToken), 0o600)
	os.WriteFile(caFile, c.RootPEM(), 0o600)
	out, err := exec.Command(c.Bin, "status", "--server", c.Nodes[1].URL(), "--token-file", tokenFile, "--ca-file", caFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node-3") || !regexp.MustCompile(`c00\s+web\s+node-\d\s+true\s+node-\d\s+nodetest\s+v0\.0\.0-fake`).Match(out) {
		t.Fatalf("gatehouse status: %v\n%s", err, out)
	}
	t.Logf("gatehouse status:\n%s", out)
	// The metrics say the same.
	forwards, redirects := 0.0, c.Nodes[0].Metric("gatehouse_agent_redirects_total")
	for _, n := range c.Nodes {
		forwards += n.Metric(`gatehouse_forwards_total{result="ok"}`)
		if m := n.Metric("gatehouse_ring_members"); m != 3 {
			t.Fatalf("%s counts %v members", n.Name, m)
		}
	}
	t.Logf("metrics: %v forwards, %v redirects by node-1", forwards, redirects)
	if forwards == 0 || redirects == 0 {
		t.Fatalf("metrics: %v forwards, %v redirects", forwards, redirects)
	}
	// A cluster whose agent is nowhere: after the bounded wait, 503 with
	// Retry-After and a Kubernetes Status that says why.
	hc := c.HTTPClient(&cert)
	defer hc.CloseIdleConnections()
	start := time.Now()
	resp, err := hc.Get(c.Nodes[1].URL() + "/k8s/ghost/api/v1/namespaces")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("no tunnel: %d after %s, Retry-After %q", resp.StatusCode, time.Since(start).Round(100*time.Millisecond), resp.Header.Get("Retry-After"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(body), `"kind":"Status"`) || !strings.Contains(string(body), "not connected") {
		t.Fatalf("no tunnel: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

// A node joins a 2-node cluster: the clusters it now owns move to it, new
// tunnel first; requests go on without a failure, and a watch open on a
// moving tunnel keeps streaming.
func TestHandoverWhenANodeJoins(t *testing.T) {
	var clusters []string
	for i := range 20 {
		clusters = append(clusters, fmt.Sprintf("h%02d", i))
	}
	c := nodetest.StartRing(t, 2, clusters...)
	before := ring.Place(clusters, []string{"node-1", "node-2"}, ring.DefaultEpsilon)
	after := ring.Place(clusters, []string{"node-1", "node-2", "node-3"}, ring.DefaultEpsilon)
	agents := map[string]*nodetest.Agent{}
	for _, cl := range clusters {
		agents[cl] = c.StartAgent(cl, c.Nodes[0], fakeAPI())
	}
	addrOf := map[string]string{"node-1": c.Nodes[0].Addr, "node-2": c.Nodes[1].Addr}
	for _, cl := range clusters {
		eventually(t, 30*time.Second, cl+" on "+before[cl], func() bool { return agents[cl].Remote() == addrOf[before[cl]] })
	}
	moving := ""
	for _, cl := range clusters {
		if after[cl] == "node-3" {
			moving = cl
			break
		}
	}
	if moving == "" {
		t.Fatal("no cluster moves to the new node")
	}
	_, token := c.Person("hana@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	cert := c.Credential(c.Nodes[0], token)
	// A watch on the moving cluster, and requests all along.
	hc := c.HTTPClient(&cert)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(c.Nodes[0].URL() + "/k8s/" + moving + "/api/v1/namespaces/demo/pods?watch=true")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %v %v", resp, err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	first := slices.Clone(c.Nodes[:2])
	stop := make(chan struct{})
	type result struct{ ok, failed int }
	done := make(chan result)
	go func() {
		var r result
		for {
			select {
			case <-stop:
				done <- r
				return
			default:
			}
			for _, n := range first {
				if get(t, c, n, cert, "/k8s/"+moving+"/api/v1/namespaces") == http.StatusOK {
					r.ok++
				} else {
					r.failed++
				}
			}
		}
	}()
	n3 := c.AddNode()
	start := time.Now()
	eventually(t, 30*time.Second, moving+" moved to node-3", func() bool { return agents[moving].Remote() == n3.Addr })
	t.Logf("%s moved to node-3 %s after it started", moving, time.Since(start).Round(10*time.Millisecond))
	// The watch opened before the move still streams.
	for i := 0; i < 5; i++ {
		if !lines.Scan() {
			t.Fatalf("the watch ended at the move: %v", lines.Err())
		}
	}
	// Every cluster ends on its new owner, and answers through node-3.
	addrOf["node-3"] = n3.Addr
	for _, cl := range clusters {
		eventually(t, 30*time.Second, cl+" on "+after[cl], func() bool { return agents[cl].Remote() == addrOf[after[cl]] })
	}
	close(stop)
	r := <-done
	t.Logf("requests during the join: %d ok, %d failed", r.ok, r.failed)
	if r.failed > 0 {
		t.Fatalf("%d requests failed during the hand-over", r.failed)
	}
	if code := get(t, c, n3, cert, "/k8s/"+moving+"/api/v1/namespaces"); code != http.StatusOK {
		t.Fatalf("through node-3: %d", code)
	}
	handovers, moved := 0.0, 0
	for _, n := range c.Nodes {
		handovers += n.Metric(`gatehouse_handovers_total{result="ok"}`)
	}
	for _, cl := range clusters {
		if before[cl] != after[cl] {
			moved++
		}
	}
	if int(handovers) != moved {
		t.Fatalf("%v hand-overs counted, %d clusters moved", handovers, moved)
	}
}

// A cluster deleted through one node: its agent's tunnel, held by the
// other node, closes (the change feed carries the revocation), and the
// agent cannot come back, even through a node started afterwards (the
// revocation names the cluster though its row is gone).
func TestDeletedClusterLosesItsAgent(t *testing.T) {
	c := nodetest.Start(t, 2)
	agent := c.StartAgent("doomed", c.Nodes[1], fakeAPI())
	eventually(t, 10*time.Second, "the tunnel", func() bool { return agent.Remote() != "" })
	code, body := c.Do(c.Nodes[0], http.MethodDelete, "/api/v1/clusters/doomed", c.AdminToken, nil)
	if code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, body)
	}
	start := time.Now()
	eventually(t, 10*time.Second, "the deleted cluster's tunnel closed", func() bool { return agent.Remote() == "" })
	t.Logf("tunnel closed %s after the deletion through the other node", time.Since(start).Round(time.Millisecond))
	sessions := agent.Sessions()
	c.Nodes[1].Stop()
	c.Nodes[1].Start()
	// The agent tries again, with backoff, against a node that is up:
	// every try is refused.
	tried := agent.Attempts()
	eventually(t, 30*time.Second, "two more tries of the agent", func() bool { return agent.Attempts() >= tried+2 })
	if agent.Remote() != "" || agent.Sessions() != sessions {
		t.Fatalf("the deleted cluster's agent is back: remote %q, %d sessions (was %d)", agent.Remote(), agent.Sessions(), sessions)
	}
}

// raftRoles asks node n for the members' places in the Raft group (nil
// if it cannot say); it may run outside the test's goroutine.
func raftRoles(t testing.TB, c *nodetest.Cluster, n *nodetest.Node) map[string]string {
	req, _ := http.NewRequest(http.MethodGet, n.URL()+"/api/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+c.AdminToken)
	hc := c.HTTPClient(nil)
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st apitypes.Status
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil
	}
	roles := map[string]string{}
	for _, m := range st.Members {
		roles[m.Name] = m.Raft
	}
	return roles
}

// Three node processes form one Raft group (design 0006): one leader and
// two voters, as every node reports. The leader's graceful stop hands
// leadership to another; back, it is a voter again.
func TestRaftGroupAmongNodeProcesses(t *testing.T) {
	c := nodetest.StartRing(t, 3)
	leaderOf := func(roles map[string]string) string {
		leader, voters := "", 0
		for name, r := range roles {
			switch r {
			case "leader":
				leader = name
			case "voter":
				voters++
			}
		}
		if voters != 2 {
			return ""
		}
		return leader
	}
	var leader string
	eventually(t, 30*time.Second, "one leader and two voters, as every node sees it", func() bool {
		leader = ""
		for _, n := range c.Nodes {
			l := leaderOf(raftRoles(t, c, n))
			if l == "" || (leader != "" && l != leader) {
				return false
			}
			leader = l
		}
		return true
	})
	t.Logf("%s leads", leader)
	leaders, voters, commits := 0.0, 0.0, 0.0
	for _, n := range c.Nodes {
		leaders += n.Metric("gatehouse_raft_leader ")
		voters += n.Metric("gatehouse_raft_voter ")
		commits += n.Metric("gatehouse_raft_commit_index ")
	}
	if leaders != 1 || voters != 3 || commits == 0 {
		t.Fatalf("metrics: %v leaders, %v voters, commit indexes adding to %v", leaders, voters, commits)
	}
	// Only the leader holds the signing keys; a credential asked of any
	// node is signed by it, and works through every node.
	eventually(t, 10*time.Second, "the leader alone holds the signing keys", func() bool {
		held := 0.0
		for _, n := range c.Nodes {
			held += n.Metric("gatehouse_ca_signing ")
			if n.Name == leader && n.Metric("gatehouse_ca_signing ") != 1 {
				return false
			}
		}
		return held == 1
	})
	agent := c.StartAgent("signed", c.Nodes[0], fakeAPI())
	eventually(t, 10*time.Second, "the agent's tunnel", func() bool { return agent.Remote() != "" })
	_, token := c.Person("sign@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	for _, n := range c.Nodes {
		cert := c.Credential(n, token)
		for _, through := range c.Nodes {
			if code := get(t, c, through, cert, "/k8s/signed/api/v1/namespaces"); code != http.StatusOK {
				t.Fatalf("a credential from %s (leader %s) through %s: %d", n.Name, leader, through.Name, code)
			}
		}
	}
	// The followers' signing went to the leader; the leader's own signed
	// where it was asked.
	forwarded, local := 0.0, 0.0
	for _, n := range c.Nodes {
		forwarded += n.Metric(`gatehouse_sign_seconds_count{kind="user",where="leader"}`)
		local += n.Metric(`gatehouse_sign_seconds_count{kind="user",where="local"}`)
	}
	if forwarded != 2 || local != 1 {
		t.Fatalf("credentials signed: %v through the leader, %v where asked (want 2 and 1)", forwarded, local)
	}
	var old *nodetest.Node
	var others []*nodetest.Node
	for _, n := range c.Nodes {
		if n.Name == leader {
			old = n
		} else {
			others = append(others, n)
		}
	}
	// Leadership moves at the start of the leader's drain, before its
	// process ends.
	start := time.Now()
	moved := make(chan time.Duration, 1)
	go func() {
		for time.Since(start) < 30*time.Second {
			roles := raftRoles(t, c, others[0])
			if roles[others[0].Name] == "leader" || roles[others[1].Name] == "leader" {
				moved <- time.Since(start)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		moved <- -1
	}()
	old.Stop()
	stopped := time.Since(start)
	d := <-moved
	if d < 0 {
		t.Fatal("no other node leads")
	}
	t.Logf("%s asked to stop: another node led %s later; the process ended after %s", old.Name, d.Round(time.Millisecond), stopped.Round(time.Millisecond))
	// The new leader signs: a credential asked of the other follower.
	cert := c.Credential(others[1], token)
	if code := get(t, c, others[0], cert, "/k8s/signed/api/v1/namespaces"); code != http.StatusOK {
		t.Fatalf("a credential signed after the hand-over: %d", code)
	}
	old.Start()
	eventually(t, 30*time.Second, old.Name+" a voter again", func() bool {
		return raftRoles(t, c, others[0])[old.Name] == "voter"
	})
	// It came back with the serving certificate it kept (its key sealed),
	// so it never unsealed the signing keys: it does not lead.
	if !old.LogContains("serving certificate kept from the last run") || old.Metric("gatehouse_ca_signing ") != 0 {
		t.Fatalf("%s did not start sealed with its kept certificate (signing: %v)", old.Name, old.Metric("gatehouse_ca_signing "))
	}
}

// A revocation reaches every node through the Raft log (design 0006): three
// node processes whose change feed is slowed to 30 s, so that only the
// group can carry it in time. A person watches through each node; the
// revocation is made through a follower (forwarded to the leader, which
// commits it); every watch ends, and every node refuses the certificate.
// The times are logged, not asserted.
func TestRevocationThroughRaftReachesEveryNode(t *testing.T) {
	c := nodetest.StartRingArgs(t, 3, "--feed-interval", "30s")
	agent := c.StartAgent("prod", c.Nodes[0], fakeAPI())
	eventually(t, 10*time.Second, "the agent's tunnel", func() bool { return agent.Remote() != "" })
	var from *nodetest.Node
	eventually(t, 10*time.Second, "a follower", func() bool {
		roles := raftRoles(t, c, c.Nodes[0])
		for _, n := range c.Nodes {
			if roles[n.Name] == "voter" {
				from = n
				return true
			}
		}
		return false
	})
	for round := range 3 {
		u, token := c.Person(fmt.Sprintf("raft-rev-%d@acme.test", round), "PROJECT_READ_ONLY", c.Project.ID, "")
		cert := c.Credential(c.Nodes[round], token)
		var watches []<-chan struct{}
		for _, n := range c.Nodes {
			watches = append(watches, watch(t, c, n, cert))
		}
		start := time.Now()
		if code, body := c.Do(from, http.MethodPost, "/api/v1/revocations", c.AdminToken, api.RevocationRequest{User: u.ID}); code != http.StatusNoContent {
			t.Fatalf("revoke through %s: %d %s", from.Name, code, body)
		}
		answered := time.Since(start)
		var took []string
		for i, n := range c.Nodes {
			d := waitEnded(t, watches[i], start, fmt.Sprintf("round %d, revoked through %s, through %s", round, from.Name, n.Name))
			took = append(took, fmt.Sprintf("%s %s", n.Name, d.Round(time.Millisecond)))
			if code := get(t, c, n, cert, "/k8s/prod/api/v1/namespaces"); code != http.StatusUnauthorized {
				t.Fatalf("%s after the revocation: %d", n.Name, code)
			}
		}
		t.Logf("round %d: the API answered in %s; watches ended after: %s", round, answered.Round(time.Millisecond), strings.Join(took, ", "))
	}
	for _, n := range c.Nodes {
		if n == from {
			continue
		}
		if got := n.Metric(`gatehouse_changes_applied_total{via="raft"}`); got < 3 {
			t.Errorf("%s applied %v revocations from the Raft log, want 3", n.Name, got)
		}
	}
	if got := from.Metric(`gatehouse_raft_broadcasts_total{result="ok"}`); got != 3 {
		t.Errorf("%s sent %v revocations through the group, want 3", from.Name, got)
	}
}
