package ring_test

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

// BenchmarkPeerHop measures what the peer hop adds to a small GET: the same
// request through the node that holds the cluster's tunnel, and through
// the other node, which forwards it (pooled mTLS session, one stream per
// request), in the same run. It reports p50 and p99 of each, and the hop's
// p50 as a difference (goal: ≤ +1 ms).
//
//	go test -run '^$' -bench BenchmarkPeerHop -benchtime 3000x ./ring/
func BenchmarkPeerHop(b *testing.B) {
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	a := startGW(b, auth, "a")
	o := startGW(b, auth, "b", a.ring.GossipAddr())
	testenv.Eventually(b, 10*time.Second, testenv.Cond("both members", func() bool { return len(a.ring.Members()) == 2 && len(o.ring.Members()) == 2 }))
	cluster := ""
	for i := 0; cluster == ""; i++ {
		if owner, _ := a.ring.Owner(fmt.Sprintf("c%d", i)); owner.Name == "a" {
			cluster = fmt.Sprintf("c%d", i)
		}
	}
	runAgent(b, auth, cluster, a.agents)
	testenv.Eventually(b, 10*time.Second, testenv.Cond("the agent", func() bool { return a.reg.Connected(cluster) }))
	p50 := map[string]time.Duration{}
	for _, via := range []*gw{a, o} {
		name := "owner"
		if via == o {
			name = "hop"
		}
		b.Run(name, func(b *testing.B) {
			hc := client(via.tunnels, cluster, "ada")
			get := func() {
				resp, err := hc.Get("http://" + cluster + "/api/v1/namespaces")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatal(resp.Status)
				}
			}
			get()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				get()
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			p50[name] = lat[len(lat)/2]
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			if d, ok := p50["owner"]; ok && name == "hop" {
				b.ReportMetric(float64((p50["hop"]-d).Microseconds())/1000, "added-p50-ms")
			}
		})
	}
}
