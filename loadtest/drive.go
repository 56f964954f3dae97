package loadtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Result is what the clients of one Drive saw.
type Result struct {
	Clients  int           `json:"clients"`
	Clusters int           `json:"clusters"`
	Duration time.Duration `json:"durationNs"`
	Requests int64         `json:"requests"`
	// Failed counts requests that got an error or a status other than 200.
	Failed int64 `json:"failed"`
	// Errors counts failures by kind (a status, or a transport error).
	Errors map[string]int64 `json:"errors,omitempty"`
	// Samples are the first failures, with when and where they happened.
	Samples []Failure     `json:"samples,omitempty"`
	RPS     float64       `json:"rps"`
	P50     time.Duration `json:"p50Ns"`
	P90     time.Duration `json:"p90Ns"`
	P99     time.Duration `json:"p99Ns"`
	Max     time.Duration `json:"maxNs"`
}

// Failure is one failed request.
type Failure struct {
	At      time.Time `json:"at"`
	Cluster string    `json:"cluster"`
	Error   string    `json:"error"`
}

// String is the result in a line.
func (r *Result) String() string {
	s := fmt.Sprintf("%d clients, %d clusters, %s: %d requests (%.0f/s), %d failed, p50 %s p90 %s p99 %s max %s",
		r.Clients, r.Clusters, r.Duration.Round(time.Millisecond), r.Requests, r.RPS, r.Failed,
		ms(r.P50), ms(r.P90), ms(r.P99), ms(r.Max))
	for k, v := range r.Errors {
		s += fmt.Sprintf("\n  %d × %s", v, k)
	}
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }

const (
	maxErrorKinds = 20
	maxSamples    = 10
)

// Drive runs the clients until d has passed (d > 0) or ctx ends, and
// returns what they saw; ctx ending is not an error. Each client has its
// own connection and goes through the clusters in turn, one request at a
// time.
func (r *Run) Drive(ctx context.Context, d time.Duration) (*Result, error) {
	r.mu.Lock()
	cert := r.cert
	var clusters []string
	for _, a := range r.agents {
		clusters = append(clusters, a.cluster)
	}
	r.mu.Unlock()
	if cert == nil || len(clusters) == 0 {
		return nil, fmt.Errorf("loadtest: Drive before Setup")
	}
	if r.cfg.Clients < 1 {
		return nil, fmt.Errorf("loadtest: no clients")
	}
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var (
		requests, failed atomic.Int64
		mu               sync.Mutex // guards errs, samples and lat
		errs             = map[string]int64{}
		samples          []Failure
		lat              []time.Duration
	)
	fail := func(cluster, kind string) {
		failed.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if _, ok := errs[kind]; !ok && len(errs) >= maxErrorKinds {
			kind = "other"
		}
		errs[kind]++
		if len(samples) < maxSamples {
			samples = append(samples, Failure{At: time.Now(), Cluster: cluster, Error: kind})
		}
	}
	stopProgress := r.progress(func() string {
		return fmt.Sprintf("requests: %d, failed %d", requests.Load(), failed.Load())
	})
	start := time.Now()
	var wg sync.WaitGroup
	for i := range r.cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: r.pool, ServerName: r.sname, Certificates: []tls.Certificate{*cert}},
				ForceAttemptHTTP2: true,
			}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			mine := make([]time.Duration, 0, 1024)
			for j := 0; ctx.Err() == nil; j++ {
				cluster := clusters[(i+j*r.cfg.Clients)%len(clusters)]
				t0 := time.Now()
				kind := r.get(ctx, hc, cluster)
				if ctx.Err() != nil && kind != "" {
					break // cut by the end of the run: not the gateway's failure
				}
				requests.Add(1)
				if kind != "" {
					fail(cluster, kind)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	stopProgress()
	res := &Result{Clients: r.cfg.Clients, Clusters: len(clusters), Duration: time.Since(start),
		Requests: requests.Load(), Failed: failed.Load(), Errors: errs, Samples: samples}
	res.RPS = float64(res.Requests) / res.Duration.Seconds()
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		res.P50, res.P90, res.P99, res.Max = lat[n/2], lat[n*9/10], lat[n*99/100], lat[n-1]
	}
	return res, nil
}

// get sends one request and returns "" or the kind of its failure.
func (r *Run) get(ctx context.Context, hc *http.Client, cluster string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(r.cfg.Server, "/")+"/k8s/"+cluster+r.cfg.Path, nil)
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "transport: " + errorKind(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "reading the body: " + errorKind(err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return fmt.Sprintf("%s: %s", resp.Status, msg)
	}
	return ""
}

// errorKind shortens an error to its kind: the text after the last
// address-bearing part, so that failures of many connections count
// together.
func errorKind(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.Contains(s[:i], "->") {
		return s[i+2:]
	}
	return s
}
