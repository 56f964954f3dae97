package nodetest_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
	"github.com/gatehouse-dev/gatehouse/loadtest"
	"github.com/gatehouse-dev/gatehouse/ring"
)

// startLoad connects a loadtest fleet of agents through c's front and
// returns it, with the time its agents took to connect.
func startLoad(t *testing.T, c *nodetest.Cluster, agents, clients int) *loadtest.Run {
	t.Helper()
	cfg := loadtest.DefaultConfig()
	cfg.Server, cfg.Token, cfg.CAPEM, cfg.Project = c.Front(), c.AdminToken, c.RootPEM(), c.Project.Name
	cfg.Agents, cfg.Clients = agents, clients
	if testing.Verbose() {
		cfg.Progress = os.Stderr
	}
	run, err := loadtest.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	took, err := run.Setup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d agents connected through the front in %s", agents, took.Round(time.Millisecond))
	return run
}

// drive runs the load of run's clients until the returned stop, which
// returns its result (nil if it failed); the test's cleanup stops it too.
func drive(t *testing.T, run *loadtest.Run) (stop func() *loadtest.Result) {
	ctx, cancel := context.WithCancel(context.Background())
	resc := make(chan *loadtest.Result, 1)
	go func() {
		res, err := run.Drive(ctx, 0)
		if err != nil {
			t.Error(err)
		}
		resc <- res
	}()
	var once sync.Once
	var res *loadtest.Result
	stop = func() *loadtest.Result {
		once.Do(func() {
			cancel()
			res = <-resc
		})
		return res
	}
	t.Cleanup(func() { stop() })
	return stop
}

// settled waits until every agent's tunnel is on the node rendezvous
// hashing picks among the running nodes.
func settled(t *testing.T, c *nodetest.Cluster, run *loadtest.Run, running []*nodetest.Node) {
	t.Helper()
	var names []string
	for _, n := range running {
		names = append(names, n.Name)
	}
	want := ring.Place(run.Clusters(), names, ring.DefaultEpsilon)
	eventually(t, 60*time.Second, fmt.Sprintf("every tunnel on its owner among %v", names), func() bool {
		got := run.Holders()
		for cl, owner := range want {
			if got[cl] != owner {
				return false
			}
		}
		return true
	})
}

// Planned changes while the loadtest tool's clients run through the front:
// a node joins, one is drained and removed, then each of the remaining
// three restarts in turn. Not one request may fail: agents move new
// tunnel first, a stopping node hands its agents over before it closes,
// and requests that meet a moving tunnel wait for it.
func TestPlannedChangesUnderLoad(t *testing.T) {
	c := nodetest.StartRing(t, 3)
	run := startLoad(t, c, 60, 8)
	settled(t, c, run, c.Nodes)

	stop := drive(t, run)
	step := func(what string, fn func()) {
		start := time.Now()
		fn()
		t.Logf("%s: %s", what, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(time.Second) // load before any change

	n4 := c.AddNode()
	step("node-4 joined and took its share", func() { settled(t, c, run, c.Nodes) })

	n2 := c.Nodes[1]
	running := []*nodetest.Node{c.Nodes[0], c.Nodes[2], n4}
	step("node-2 drained and stopped", n2.Stop)
	step("its agents settled on the other three", func() { settled(t, c, run, running) })

	for _, n := range running {
		step(n.Name+" stopped (drained)", n.Stop)
		n.Start()
		step(n.Name+" back and holding its share", func() { settled(t, c, run, running) })
	}
	time.Sleep(time.Second) // load after the last change
	res := stop()
	if res == nil {
		t.FailNow()
	}
	noneFailed(t, res, 1000, "planned changes")
}

// noneFailed logs a load's result and fails the test unless at least min
// requests ran and none failed.
func noneFailed(t *testing.T, res *loadtest.Result, min int, what string) {
	t.Helper()
	t.Logf("load through %s: %s", what, res)
	for _, f := range res.Samples {
		t.Logf("failure at %s on %s: %s", f.At.Format("15:04:05.000"), f.Cluster, f.Error)
	}
	if res.Requests < int64(min) {
		t.Fatalf("only %d requests ran", res.Requests)
	}
	if res.Failed != 0 {
		t.Fatalf("%d of %d requests failed through %s", res.Failed, res.Requests, what)
	}
}
