package nodetest_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
	"github.com/gatehouse-dev/gatehouse/ring"
)

// BenchmarkOwnerKill measures unplanned death (issue 10): three node
// processes, fake agents for a dozen clusters, small GETs to every cluster
// through node-1 all along; each iteration kills -9 node-2 or node-3 (in
// turn), measures for each cluster it held the error window (from the kill
// to that cluster's first answer again), counts errors for the clusters it
// did not hold, then starts it again and waits for the owners to settle.
// Reported: p50 and p99 of the windows, and the errors elsewhere (goal:
// p99 ≤ 3 s, 0 elsewhere).
//
//	go test -run '^$' -bench BenchmarkOwnerKill -benchtime 20x ./internal/nodetest/
func BenchmarkOwnerKill(b *testing.B) {
	var clusters []string
	for i := range 12 {
		clusters = append(clusters, fmt.Sprintf("k%02d", i))
	}
	c := nodetest.StartRing(b, 3, clusters...)
	names := []string{"node-1", "node-2", "node-3"}
	addrOf := map[string]string{}
	for _, n := range c.Nodes {
		addrOf[n.Name] = n.Addr
	}
	want := ring.Place(clusters, names, ring.DefaultEpsilon)
	agents := map[string]*nodetest.Agent{}
	for _, cl := range clusters {
		agents[cl] = c.StartAgent(cl, c.Nodes[0], fakeAPI())
	}
	settled := func() {
		b.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for _, cl := range clusters {
			for agents[cl].Remote() != addrOf[want[cl]] {
				if time.Now().After(deadline) {
					b.Fatalf("%s not back on %s", cl, want[cl])
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	settled()
	_, token := c.Person("load@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	cert := c.Credential(c.Nodes[0], token)
	ingress := c.Nodes[0]

	// The load: one client per cluster, a request every 20 ms, each
	// outcome recorded with its time.
	type outcome struct {
		at time.Time
		ok bool
	}
	var mu sync.Mutex
	log := map[string][]outcome{}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var requests atomic.Int64
	for _, cl := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := c.HTTPClient(&cert)
			hc.Timeout = 2 * time.Second
			defer hc.CloseIdleConnections()
			for ctx.Err() == nil {
				resp, err := hc.Get(ingress.URL() + "/k8s/" + cl + "/api/v1/namespaces")
				ok := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					resp.Body.Close()
				}
				requests.Add(1)
				mu.Lock()
				log[cl] = append(log[cl], outcome{time.Now(), ok})
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	var windows []time.Duration
	elsewhere := 0
	b.ResetTimer()
	for i := range b.N {
		victim := c.Nodes[1+i%2]
		var held []string
		for _, cl := range clusters {
			if want[cl] == victim.Name {
				held = append(held, cl)
			}
		}
		killed := time.Now()
		victim.Kill()
		// Every cluster it held answers again (through a new owner).
		deadline := time.Now().Add(60 * time.Second)
		for _, cl := range held {
			for {
				mu.Lock()
				var back time.Time
				for _, o := range log[cl] {
					if o.ok && o.at.After(killed) {
						back = o.at
						break
					}
				}
				mu.Unlock()
				if !back.IsZero() {
					windows = append(windows, back.Sub(killed))
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("%s never answered again after %s was killed", cl, victim.Name)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		recovered := time.Now()
		mu.Lock()
		for cl, os := range log {
			if slices.Contains(held, cl) {
				continue
			}
			for _, o := range os {
				if !o.ok && o.at.After(killed) && o.at.Before(recovered) {
					elsewhere++
				}
			}
		}
		mu.Unlock()
		victim.Start()
		settled()
	}
	b.StopTimer()
	stop()
	wg.Wait()
	slices.Sort(windows)
	if len(windows) > 0 {
		b.ReportMetric(float64(windows[len(windows)/2].Milliseconds()), "p50-window-ms")
		b.ReportMetric(float64(windows[(len(windows)*99)/100].Milliseconds()), "p99-window-ms")
		b.ReportMetric(float64(windows[len(windows)-1].Milliseconds()), "max-window-ms")
	}
	b.ReportMetric(float64(len(windows)), "windows")
	b.ReportMetric(float64(elsewhere), "errors-elsewhere")
	b.ReportMetric(float64(requests.Load()), "requests")
}
