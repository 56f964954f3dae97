package nodetest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/ring"
)

// groupLeader waits until every running node in nodes sees the same leader
// and voters voters, and returns the leader.
func groupLeader(t *testing.T, c *nodetest.Cluster, nodes []*nodetest.Node, voters int) *nodetest.Node {
	t.Helper()
	var leader *nodetest.Node
	eventually(t, 60*time.Second, fmt.Sprintf("one leader and %d voters, as every node sees it", voters), func() bool {
		leader = nil
		for _, n := range nodes {
			roles := raftRoles(t, c, n)
			count := 0
			for name, r := range roles {
				switch r {
				case "leader":
					for _, o := range nodes {
						if o.Name == name {
							if leader != nil && leader != o {
								return false
							}
							leader = o
						}
					}
					count++
				case "voter":
					count++
				}
			}
			if count != voters {
				return false
			}
		}
		return leader != nil
	})
	return leader
}

// A voter that loses its disk rejoins by itself, and the whole gateway
// cluster stopped and started again forms its group again (issue 11). The
// leader is killed and its state directory wiped (its Raft log, its kept
// certificate and sealed key): it comes back under its name, empty, and is
// a voter again, caught up by the new leader. Then every node stops and
// starts: a leader is elected from the disks, the certificates issued
// before still work through every node, and every node gets new ones
// signed.
func TestVoterWipedAndClusterRestarted(t *testing.T) {
	c := nodetest.StartRing(t, 3)
	agent := c.StartAgent("kept", c.Nodes[0], fakeAPI())
	eventually(t, 10*time.Second, "the agent's tunnel", func() bool { return agent.Remote() != "" })
	_, token := c.Person("kept@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	before := c.Credential(c.Nodes[1], token)

	leader := groupLeader(t, c, c.Nodes, 3)
	leader.Kill()
	entries, err := os.ReadDir(leader.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "node.log" { // the test's record of the process
			if err := os.RemoveAll(filepath.Join(leader.Dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	start := time.Now()
	mark := leader.LogSize()
	leader.Start()
	groupLeader(t, c, c.Nodes, 3)
	eventually(t, 30*time.Second, leader.Name+" caught up", func() bool {
		return leader.Metric("gatehouse_raft_applied_index ") > 0 && leader.Metric("gatehouse_raft_last_contact_seconds ") >= 0
	})
	t.Logf("%s, wiped, was a voter again and caught up %s after its start", leader.Name, time.Since(start).Round(time.Millisecond))
	// Its first certificate came from the new leader: it never held the
	// signing keys.
	if log := leader.LogSince(mark); !strings.Contains(log, "serving certificate from the leader (enrolled)") || strings.Contains(log, "signs its own serving certificate") {
		t.Fatalf("%s did not enrol with the leader:\n%s", leader.Name, leader.Problems(20))
	}
	if got := leader.Metric("gatehouse_raft_voter "); got != 1 {
		t.Fatalf("%s votes: %v", leader.Name, got)
	}
	if got := get(t, c, leader, before, "/k8s/kept/api/v1/namespaces"); got != http.StatusOK {
		t.Fatalf("an earlier credential through the wiped node: %d", got)
	}

	// The whole cluster stops, and starts again.
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.Stop() }()
	}
	wg.Wait()
	start = time.Now()
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.Start() }()
	}
	wg.Wait()
	groupLeader(t, c, c.Nodes, 3)
	t.Logf("all three nodes stopped; started again, they led again %s later", time.Since(start).Round(time.Millisecond))
	eventually(t, 30*time.Second, "the agent back", func() bool { return agent.Sessions() >= 2 && agent.Remote() != "" })
	for _, n := range c.Nodes {
		if got := get(t, c, n, before, "/k8s/kept/api/v1/namespaces"); got != http.StatusOK {
			t.Fatalf("a credential issued before the restart, through %s: %d", n.Name, got)
		}
		cert := c.Credential(n, token)
		for _, through := range c.Nodes {
			if got := get(t, c, through, cert, "/k8s/kept/api/v1/namespaces"); got != http.StatusOK {
				t.Fatalf("a credential from %s after the restart, through %s: %d", n.Name, through.Name, got)
			}
		}
	}
}

// A node cut off from the leader (issue 11): three nodes on their own
// addresses, a follower partitioned from the other two by iptables. It
// keeps serving kubectl requests, for the cluster whose tunnel it holds,
// with the credentials people already have: verification is local. A
// credential asked of it fails after the bounded wait with 503, a
// Retry-After and a message that says to retry; the other side signs all
// along. After the heal it signs again (through the leader).
func TestPartitionedFollowerServesAndRefusesToSign(t *testing.T) {
	c := nodetest.StartRingApart(t, 3)
	leader := groupLeader(t, c, c.Nodes, 3)
	var cut, other *nodetest.Node
	for _, n := range c.Nodes {
		switch {
		case n == leader:
		case cut == nil:
			cut = n
		default:
			other = n
		}
	}
	// A cluster that the cut node owns, its agent on it.
	names := []string{c.Nodes[0].Name, c.Nodes[1].Name, c.Nodes[2].Name}
	cluster := ""
	for i := 0; cluster == ""; i++ {
		k := fmt.Sprintf("alone-%d", i)
		if ring.Place([]string{k}, names, ring.DefaultEpsilon)[k] == cut.Name {
			cluster = k
		}
	}
	agent := c.StartAgent(cluster, cut, fakeAPI())
	eventually(t, 20*time.Second, "the agent's tunnel on "+cut.Name, func() bool { return agent.Remote() == cut.Addr })
	_, token := c.Person("cut@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	cert := c.Credential(other, token)

	heal := c.Partition(cut)
	eventually(t, 30*time.Second, cut.Name+" alone", func() bool {
		return cut.Metric("gatehouse_ring_members") == 1 && cut.Metric("gatehouse_raft_leader ") == 0
	})
	for range 5 {
		if got := get(t, c, cut, cert, "/k8s/"+cluster+"/api/v1/namespaces"); got != http.StatusOK {
			t.Fatalf("kubectl through the cut node: %d", got)
		}
	}
	// Its signing fails, clearly and retryably.
	start := time.Now()
	code, retry, body := askCredentialRaw(t, c, cut, token)
	took := time.Since(start)
	if code != http.StatusServiceUnavailable || retry == "" || !strings.Contains(body, "retry") {
		t.Fatalf("a credential asked of the cut node: %d, Retry-After %q, %s", code, retry, body)
	}
	t.Logf("a credential asked of the cut node: %d after %s, Retry-After %s: %s", code, took.Round(time.Millisecond), retry, body)
	// The other side signs.
	c.Credential(other, token)
	c.Credential(leader, token)

	heal()
	start = time.Now()
	eventually(t, 60*time.Second, cut.Name+" signs again", func() bool {
		code, _, _ := askCredentialRaw(t, c, cut, token)
		return code == http.StatusOK
	})
	t.Logf("after the heal, %s had a credential signed %s later", cut.Name, time.Since(start).Round(time.Millisecond))
}

// askCredentialRaw asks node n for a credential and returns the status,
// the Retry-After header and the body.
func askCredentialRaw(t *testing.T, c *nodetest.Cluster, n *nodetest.Node, token string) (int, string, string) {
	t.Helper()
	key, _, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CSR(key)
	if err != nil {
		t.Fatal(err)
	}
	hc := c.HTTPClient(nil)
	defer hc.CloseIdleConnections()
	b, _ := json.Marshal(api.CredentialRequest{CSR: string(csr)})
	req, _ := http.NewRequest(http.MethodPost, n.URL()+"/api/v1/credentials", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(body)
}
