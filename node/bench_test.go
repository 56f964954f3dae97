package node_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/grant"
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
			b.Run(fmt.Sprintf("%s/c%d", tg.name, conc), func(b *testing.B) {
				tr := &http.Transport{TLSClientConfig: tg.cfg, MaxIdleConnsPerHost: conc, ForceAttemptHTTP2: true}
				defer tr.CloseIdleConnections()
				c := &http.Client{Transport: tr}
				get := func() error {
					resp, err := c.Get(tg.url)
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
				if err := get(); err != nil { // warm: connections, JIT account
					b.Fatal(err)
				}
				var mu sync.Mutex
				lat := make([]time.Duration, 0, b.N)
				work := make(chan struct{}, b.N)
				for range b.N {
					work <- struct{}{}
				}
				close(work)
				var wg sync.WaitGroup
				errc := make(chan error, conc)
				b.ResetTimer()
				cpu0 := processCPU()
				start := time.Now()
				for range conc {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range work {
							t0 := time.Now()
							if err := get(); err != nil {
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
				elapsed := time.Since(start)
				cpu := processCPU() - cpu0
				b.StopTimer()
				select {
				case err := <-errc:
					b.Fatal(err)
				default:
				}
				slices.Sort(lat)
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
				// This process's CPU time per request: the client's in
				// every row, the node's and the agent's in the gateway
				// rows (the API server is a process of its own). A
				// gateway row minus the direct row is the node and agent's
				// cost; CPU time is steady on a noisy machine, where
				// rates are not.
				b.ReportMetric(float64(cpu.Microseconds())/1000/float64(len(lat)), "cpu-ms/req")
			})
		}
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
