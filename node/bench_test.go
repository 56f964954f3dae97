package node_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/ship"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
	"github.com/gatehouse-dev/gatehouse/node"
)

// BenchmarkGet compares a small GET through the gateway (TLS, tunnel, agent,
// JIT token) with the same GET straight to the API server, in the same run,
// at concurrency 1 and 32. It reports requests per second and p50/p99
// latency; compare the gateway rows with the direct rows. "gateway" decides
// access from a fixed table; "gateway-store" from the embedded store and
// the Casbin policy on every request; "gateway-cached" the same with the
// one-second decision cache that `gatehouse node` and `gatehouse dev` use.
//
//	go test -run '^$' -bench BenchmarkGet -benchtime 2000x ./node/
func BenchmarkGet(b *testing.B) {
	bd := newBed(b)
	bd.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	userCert, _, _ := bd.clientCert("user", "ada", time.Hour)
	pb := newPolicyBed(b)
	ada := pb.person("ada@example.com")
	pb.bindRole(store.SubjectUser, ada, "ADMIN", "", false, time.Time{})
	storeCert, _, _ := pb.clientCert("user", ada, time.Hour)
	cb := startBed(b, true, time.Second)
	cada := cb.person("ada@example.com")
	cb.bindRole(store.SubjectUser, cada, "ADMIN", "", false, time.Time{})
	cachedCert, _, _ := cb.clientCert("user", cada, time.Hour)
	const path = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"
	targets := []struct {
		name string
		url  string
		cfg  *tls.Config
	}{
		{"direct", bd.kube.URL + path, &tls.Config{RootCAs: certPool(bd.kube.CAPEM()), Certificates: []tls.Certificate{bd.kube.AdminCertificate()}}},
		{"gateway", "https://" + bd.addr + "/k8s/" + clusterID + path, &tls.Config{RootCAs: bd.auth.RootPool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{userCert}}},
		{"gateway-store", "https://" + pb.addr + "/k8s/" + clusterID + path, &tls.Config{RootCAs: pb.auth.RootPool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{storeCert}}},
		{"gateway-cached", "https://" + cb.addr + "/k8s/" + clusterID + path, &tls.Config{RootCAs: cb.auth.RootPool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cachedCert}}},
	}
	for _, conc := range []int{1, 32} {
		for _, tg := range targets {
			b.Run(fmt.Sprintf("%s/c%d", tg.name, conc), func(b *testing.B) { measureGet(b, tg.url, tg.cfg, conc) })
		}
	}
}

// getResult is one row of measureGet.
type getResult struct {
	rps, cpuMS float64
	p50, p99   time.Duration
}

// measureGet sends b.N GETs of url from conc clients and reports the rate,
// p50 and p99 latency, and this process's CPU time per request.
func measureGet(b *testing.B, url string, cfg *tls.Config, conc int) getResult {
	c, done := getClient(cfg, conc)
	defer done()
	if err := c.get(url); err != nil { // warm: connections, JIT account
		b.Fatal(err)
	}
	b.ResetTimer()
	lat, elapsed, cpu, err := c.run(url, conc, b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	r := getResult{rps: float64(len(lat)) / elapsed.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100],
		cpuMS: float64(cpu.Microseconds()) / 1000 / float64(len(lat))}
	b.ReportMetric(r.rps, "req/s")
	b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-ms")
	// This process's CPU time per request: the client's in every row, the
	// node's and the agent's in the gateway rows (the API server is a
	// process of its own). A gateway row minus the direct row is the node
	// and agent's cost; CPU time is steady on a noisy machine, where rates
	// are not.
	b.ReportMetric(r.cpuMS, "cpu-ms/req")
	return r
}

// getter sends GETs over one transport.
type getter struct{ c *http.Client }

func getClient(cfg *tls.Config, conc int) (*getter, func()) {
	tr := &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: conc, ForceAttemptHTTP2: true}
	return &getter{c: &http.Client{Transport: tr}}, tr.CloseIdleConnections
}

func (g *getter) get(url string) error {
	resp, err := g.c.Get(url)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}

// run sends n GETs of url from conc clients and returns their latencies,
// the time they took and this process's CPU time meanwhile.
func (g *getter) run(url string, conc, n int) ([]time.Duration, time.Duration, time.Duration, error) {
	var mu sync.Mutex
	lat := make([]time.Duration, 0, n)
	work := make(chan struct{}, n)
	for range n {
		work <- struct{}{}
	}
	close(work)
	var wg sync.WaitGroup
	errc := make(chan error, conc)
	cpu0 := processCPU()
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				t0 := time.Now()
				if err := g.get(url); err != nil {
					errc <- err
					return
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	select {
	case err := <-errc:
		return nil, 0, 0, err
	default:
	}
	return lat, elapsed, cpu, nil
}

// BenchmarkAuditCost measures what auditing costs a small GET through the
// gateway (issue 12: at most +1 ms at p99), in one run: events kept in
// memory (no I/O, the floor), written to a JSON-lines file (the sink
// before the spool), and written to the durable spool and shipped to
// Kafka (kfake, in a process of its own) as a node with
// --audit-kafka-brokers does. The three nodes run side by side and are
// measured in turns of 250 requests, so that a machine whose speed drifts
// (a shared VM) drifts for all three alike. The p99 ratios to the file
// sink are logged.
//
//	go test -run '^$' -bench BenchmarkAuditCost -benchtime 5000x ./node/
func BenchmarkAuditCost(b *testing.B) {
	// The broker runs in a process of its own, as in production: its work
	// is not the node's, in CPU time or in the Go scheduler.
	k, err := kafkatest.StartProcess(kafkatest.Config{Brokers: 1, Partitions: 3, Topics: []string{"gatehouse.audit"}})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	dir := b.TempDir()
	file, err := audit.OpenFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		b.Fatal(err)
	}
	defer file.Close()
	scfg := spool.DefaultConfig()
	scfg.Dir = filepath.Join(dir, "spool")
	sp, err := spool.Open(scfg)
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	kcfg := ship.DefaultConfig()
	kcfg.Spool, kcfg.Brokers, kcfg.Topic, kcfg.Node = sp, k.Brokers, "gatehouse.audit", "node-1"
	shipper, err := ship.New(kcfg)
	if err != nil {
		b.Fatal(err)
	}
	defer shipper.Close()
	ctx, cancel := context.WithCancel(context.Background())
	shipped := make(chan error, 1)
	go func() { shipped <- shipper.Run(ctx) }()
	defer func() { cancel(); <-shipped }()
	const path = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"
	type target struct {
		name string
		url  string
		cfg  *tls.Config
	}
	var targets []target
	for _, sk := range []struct {
		name string
		sink audit.Sink
	}{{"memory", &audit.Memory{}}, {"file", file}, {"spool-kafka", &audit.SpoolSink{Spool: sp, Node: "node-1"}}} {
		bd := startBedWith(b, false, 0, func(c *node.Config) { c.Audit = sk.sink })
		bd.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
		cert, _, _ := bd.clientCert("user", "ada", time.Hour)
		targets = append(targets, target{sk.name, "https://" + bd.addr + "/k8s/" + clusterID + path,
			&tls.Config{RootCAs: bd.auth.RootPool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}})
	}
	const turn = 250
	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("c%d", conc), func(b *testing.B) {
			getters := make([]*getter, len(targets))
			for i, tg := range targets {
				g, done := getClient(tg.cfg, conc)
				defer done()
				if err := g.get(tg.url); err != nil { // warm
					b.Fatal(err)
				}
				getters[i] = g
			}
			lat := make([][]time.Duration, len(targets))
			var cpu []time.Duration = make([]time.Duration, len(targets))
			b.ResetTimer()
			for round := 0; round*turn < b.N; round++ {
				n := min(turn, b.N-round*turn)
				for k := range targets {
					i := (k + round) % len(targets) // each goes first in turn
					l, _, c, err := getters[i].run(targets[i].url, conc, n)
					if err != nil {
						b.Fatal(err)
					}
					lat[i], cpu[i] = append(lat[i], l...), cpu[i]+c
				}
			}
			b.StopTimer()
			p99 := map[string]time.Duration{}
			for i, tg := range targets {
				slices.Sort(lat[i])
				p50, p := lat[i][len(lat[i])/2], lat[i][len(lat[i])*99/100]
				p99[tg.name] = p
				b.ReportMetric(float64(p50.Microseconds())/1000, tg.name+"-p50-ms")
				b.ReportMetric(float64(p.Microseconds())/1000, tg.name+"-p99-ms")
				b.ReportMetric(float64(cpu[i].Microseconds())/1000/float64(len(lat[i])), tg.name+"-cpu-ms/req")
			}
			f, s := p99["file"], p99["spool-kafka"]
			b.ReportMetric(float64(s)/float64(f), "p99-spool/file")
			b.Logf("c%d: p99 file %s, spool and Kafka %s: %.2fx (%+.3f ms); memory %s", conc, f, s, float64(s)/float64(f),
				float64((s-f).Microseconds())/1000, p99["memory"])
		})
	}
}

// BenchmarkPortForward moves 64 MiB each way through one kubectl
// port-forward stream (WebSocket, kubectl's default) to an echo server in a
// pod, straight to the API server and through the gateway, in the same run,
// and reports the throughput of the stream (bytes both ways per second).
//
//	go test -run '^$' -bench BenchmarkPortForward -benchtime 3x ./node/
func BenchmarkPortForward(b *testing.B) {
	bd := newBed(b)
	bd.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	pod := runningPod(b, bd, "bench-pf")
	const size = 64 << 20
	for _, tg := range []struct{ name, kubeconfig string }{
		{"direct", ""}, // the cluster's admin kubeconfig
		{"gateway", bd.kubeconfig("ada", time.Hour)},
	} {
		b.Run(tg.name, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				total += portForward(b, bd, tg.kubeconfig, "bench-pf", pod, size)
			}
			b.ReportMetric(float64(2*size*b.N)/total.Seconds()/1e6, "MB/s")
		})
	}
}

// processCPU returns this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
