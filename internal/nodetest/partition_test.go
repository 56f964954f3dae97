package nodetest_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
	"github.com/gatehouse-dev/gatehouse/ring"
)

// Four nodes cut in two halves (iptables between their addresses; agents,
// clients and the store still reach every node). Each side declares the
// other dead and believes it owns the other's clusters, but no cluster is
// ever held twice: every agent keeps its one tunnel where it was, every
// node serves the clusters its side holds, and a request for a cluster
// held across the cut waits its bounded time and gets 503. Once the
// network heals, the sides find each other again and ownership converges
// on the rendezvous choice of all four. Neither half is alone, so neither
// retries its seeds: the ring's reconnection to members it saw die heals
// it (memberlist's own gossip to the dead stops after 30 s).
func TestPartitionHealsWithoutSplitOwnership(t *testing.T) {
	c := nodetest.StartRingApart(t, 4)
	const agents = 30
	run := startLoad(t, c, agents, 0)
	settled(t, c, run, c.Nodes)
	cert := c.Credential(c.Nodes[0], c.AdminToken)
	get := func(n *nodetest.Node, cluster string) int {
		hc := c.HTTPClient(&cert)
		defer hc.CloseIdleConnections()
		resp, err := hc.Get(n.URL() + "/k8s/" + cluster + "/api/v1/namespaces/default/configmaps/loadtest")
		if err != nil {
			t.Fatalf("through %s: %v", n.Name, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	near, far := c.Nodes[:2], c.Nodes[2:]
	heal := c.Partition(far...)
	start := time.Now()
	eventually(t, 30*time.Second, "both sides see the other dead", func() bool {
		for _, n := range c.Nodes {
			if n.Metric("gatehouse_ring_members") != 2 {
				return false
			}
		}
		return true
	})
	t.Logf("partition detected by both sides %s after the cut", time.Since(start).Round(10*time.Millisecond))

	// The split lasts longer than memberlist's gossip to the dead (30 s on
	// LAN settings), after which memberlist alone would never heal it.
	// All along, every cluster has exactly one holder, and the nodes'
	// tunnels add up to the agents.
	holders := run.Holders()
	across := "" // a cluster held on the far side
	for end := time.Now().Add(35 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		h := run.Holders()
		if len(h) != agents {
			t.Fatalf("%d of %d agents hold a tunnel during the partition", len(h), agents)
		}
		total := 0.0
		for _, n := range c.Nodes {
			total += n.Metric("gatehouse_tunnels_open")
		}
		if total != agents {
			t.Fatalf("the nodes hold %v tunnels for %d agents during the partition", total, agents)
		}
		for cl, n := range h {
			if holders[cl] != n {
				t.Fatalf("%s moved from %s to %s during the partition", cl, holders[cl], n)
			}
			if n == far[0].Name || n == far[1].Name {
				across = cl
			}
		}
	}
	// Every node serves what its side holds, forwarding within the side.
	for cl, holder := range holders {
		side := near
		if slices.ContainsFunc(far, func(n *nodetest.Node) bool { return n.Name == holder }) {
			side = far
		}
		for _, n := range side {
			if code := get(n, cl); code != http.StatusOK {
				t.Fatalf("%s (on %s) through %s during the partition: %d", cl, holder, n.Name, code)
			}
		}
	}
	if across == "" {
		t.Fatal("no cluster held on the far side")
	}
	if code := get(near[0], across); code != http.StatusServiceUnavailable {
		t.Fatalf("%s (held across the cut) through %s: %d, want 503", across, near[0].Name, code)
	}

	heal()
	start = time.Now()
	eventually(t, 60*time.Second, "the sides rejoined", func() bool {
		for _, n := range c.Nodes {
			if n.Metric("gatehouse_ring_members") != 4 {
				return false
			}
		}
		return true
	})
	t.Logf("rejoined %s after the heal", time.Since(start).Round(10*time.Millisecond))
	settled(t, c, run, c.Nodes)
	t.Logf("ownership converged %s after the heal", time.Since(start).Round(10*time.Millisecond))
	want := ring.Place(run.Clusters(), []string{"node-1", "node-2", "node-3", "node-4"}, ring.DefaultEpsilon)
	for _, cl := range run.Clusters() {
		for _, n := range c.Nodes {
			if code := get(n, cl); code != http.StatusOK {
				t.Fatalf("%s (owner %s) through %s after the heal: %d", cl, want[cl], n.Name, code)
			}
		}
	}
}
