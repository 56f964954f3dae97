package nodetest_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
)

// signed is one signing request of the load: a person's credential or an
// agent's renewal, asked of a node that was not the one being killed.
type signed struct {
	kind       string // "user" or "agent"
	start, end time.Time
	ok         bool
	serial     string
	cert       *tls.Certificate // a person's, kept to be used
	chain      []byte           // an agent's
}

// leaderKills is the scenario of issue 11's failover acceptance: five node
// processes (three voters, two non-voters), people asking any node for
// credentials and agents renewing their certificates all along, and kills
// times: find the leader, kill -9 it, measure when signing resumes (the
// first certificate signed for a request that began after the kill), start
// it again and wait for it to be back in the group. Every certificate
// issued has a serial of its own, and a sample of them (the first after
// each kill, every 25th) works through every node.
type leaderKillResult struct {
	resume, elected    []time.Duration
	requests, failures int
}

func leaderKills(tb testing.TB, kills int) leaderKillResult {
	c := nodetest.StartRing(tb, 5)
	_, token := c.Person("signing@acme.test", "PROJECT_READ_ONLY", c.Project.ID, "")
	var agents []*nodetest.Agent
	for i := range 3 {
		a := c.StartAgent(fmt.Sprintf("renew-%d", i), c.Nodes[i], fakeAPI())
		agents = append(agents, a)
	}
	for _, a := range agents {
		eventually(tb, 10*time.Second, a.Cluster+"'s tunnel", func() bool { return a.Remote() != "" })
	}
	byName := map[string]*nodetest.Node{}
	for _, n := range c.Nodes {
		byName[n.Name] = n
	}
	var victim atomic.Pointer[nodetest.Node] // the node being killed: no load goes to it
	var mu sync.Mutex
	var log []signed
	record := func(s signed) {
		mu.Lock()
		log = append(log, s)
		mu.Unlock()
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// People: four workers, each asking the nodes in turn.
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := c.HTTPClient(nil)
			hc.Timeout = 15 * time.Second
			defer hc.CloseIdleConnections()
			for i := w; ctx.Err() == nil; i++ {
				n := c.Nodes[i%len(c.Nodes)]
				if n == victim.Load() {
					continue
				}
				s := askCredential(hc, n, token)
				if n != victim.Load() && ctx.Err() == nil {
					record(s)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	// Agents: each renews over its tunnel, wherever that is.
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				v := victim.Load()
				if a.Remote() == "" || (v != nil && a.Remote() == v.Addr) {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				s := signed{kind: "agent", start: time.Now()}
				chain, err := a.Renew(rctx)
				cancel()
				s.end, s.ok, s.chain = time.Now(), err == nil, chain
				if err == nil {
					s.serial = chainSerial(chain)
				}
				// A tunnel cut by the kill is not signing's failure.
				if (v == nil || a.Remote() != v.Addr) && ctx.Err() == nil {
					record(s)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	var res leaderKillResult
	var sample []signed
	for k := range kills {
		// A whole group first: a leader, two voters, two non-voters, as
		// every live node sees it.
		var leader string
		eventually(tb, 60*time.Second, "the group whole again", func() bool {
			leader = ""
			for _, n := range c.Nodes {
				roles := raftRoles(tb, c, n)
				counts := map[string]int{}
				for _, r := range roles {
					counts[r]++
				}
				if counts["leader"] != 1 || counts["voter"] != 2 || counts["non-voter"] != 2 {
					return false
				}
				for name, r := range roles {
					if r == "leader" {
						if leader != "" && leader != name {
							return false
						}
						leader = name
					}
				}
			}
			return true
		})
		old := byName[leader]
		victim.Store(old)
		time.Sleep(200 * time.Millisecond) // requests on their way to it land
		var other *nodetest.Node
		for _, n := range c.Nodes {
			if n != old {
				other = n
				break
			}
		}
		killed := time.Now()
		old.Kill()
		elected := make(chan time.Duration, 1)
		go func() {
			for time.Since(killed) < 30*time.Second {
				for name, r := range raftRoles(tb, c, other) {
					if r == "leader" && name != old.Name {
						elected <- time.Since(killed)
						return
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			elected <- -1
		}()
		var first signed
		eventually(tb, 30*time.Second, "a certificate signed after the kill", func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, s := range log {
				if s.ok && s.start.After(killed) && (first.end.IsZero() || s.end.Before(first.end)) {
					first = s
				}
			}
			return !first.end.IsZero()
		})
		e := <-elected
		res.resume = append(res.resume, first.end.Sub(killed))
		res.elected = append(res.elected, e)
		tb.Logf("kill %d: %s killed; another node led after %s; signing resumed after %s (%s certificate)", k+1, old.Name,
			e.Round(time.Millisecond), first.end.Sub(killed).Round(time.Millisecond), map[string]string{"user": "a person's", "agent": "an agent's"}[first.kind])
		// The first person's credential signed after the kill, to be used
		// through every node at the end.
		eventually(tb, 30*time.Second, "a credential signed after the kill", func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, s := range log {
				if s.ok && s.kind == "user" && s.start.After(killed) {
					sample = append(sample, s)
					return true
				}
			}
			return false
		})
		old.Start()
		victim.Store(nil)
	}
	stop()
	wg.Wait()

	// No serial twice; every certificate chains to the root; a sample of
	// the people's works through every node.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.RootPEM())
	seen := map[string]bool{}
	users := 0
	for _, s := range log {
		res.requests++
		if !s.ok {
			res.failures++
			continue
		}
		if seen[s.serial] {
			tb.Fatalf("serial %s issued twice", s.serial)
		}
		seen[s.serial] = true
		if err := verifyChain(roots, s); err != nil {
			tb.Fatalf("a %s certificate signed at %s does not verify: %v", s.kind, s.end.Format(time.StampMilli), err)
		}
		if s.kind == "user" {
			if users%25 == 0 {
				sample = append(sample, s)
			}
			users++
		}
	}
	for _, s := range sample {
		for _, n := range c.Nodes {
			if code := get(tb, c, n, *s.cert, "/k8s/renew-0/api/v1/namespaces"); code != http.StatusOK {
				tb.Fatalf("a credential signed at %s, through %s: %d", s.end.Format(time.StampMilli), n.Name, code)
			}
		}
	}
	tb.Logf("%d certificates asked of live nodes (%d people's), %d not signed; %d serials, none twice; %d credentials used through all %d nodes",
		res.requests, users, res.failures, len(seen), len(sample), len(c.Nodes))
	return res
}

// askCredential asks node n for a person's credential with token.
func askCredential(hc *http.Client, n *nodetest.Node, token string) signed {
	s := signed{kind: "user", start: time.Now()}
	defer func() { s.end = time.Now() }()
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return s
	}
	csr, err := pki.CSR(key)
	if err != nil {
		return s
	}
	body, _ := json.Marshal(api.CredentialRequest{CSR: string(csr)})
	req, _ := http.NewRequest(http.MethodPost, n.URL()+"/api/v1/credentials", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		s.end = time.Now()
		return s
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	s.end = time.Now()
	var cred api.Credential
	if resp.StatusCode != http.StatusOK || json.Unmarshal(out, &cred) != nil {
		return s
	}
	cert, err := tls.X509KeyPair([]byte(cred.Certificate), keyPEM)
	if err != nil {
		return s
	}
	s.ok, s.cert, s.serial = true, &cert, nodetest.CertSerial(cert)
	return s
}

func chainSerial(chain []byte) string {
	ders := nodetest.ParsePEM(chain)
	if len(ders) == 0 {
		return ""
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return ""
	}
	return leaf.SerialNumber.Text(16)
}

// verifyChain checks that a signed certificate chains to the root.
func verifyChain(roots *x509.CertPool, s signed) error {
	chain := s.chain
	if s.cert != nil {
		chain = nodetest.PEMChain(*s.cert)
	}
	var certs []*x509.Certificate
	for _, der := range nodetest.ParsePEM(chain) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return fmt.Errorf("no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// The leader is killed twice while people and agents ask for
// certificates (issue 11): signing resumes under a new leader, no serial
// is issued twice, and the certificates work through every node. The
// times are logged; BenchmarkLeaderKill measures them over 20 kills.
func TestLeaderKillUnderSigningLoad(t *testing.T) {
	res := leaderKills(t, 2)
	if res.requests == 0 {
		t.Fatal("no load ran")
	}
}

// BenchmarkLeaderKill measures the failover of signing (issue 11: signing
// resumes ≤ 2 s after the leader's kill -9; p50 and p99 over at least 20
// kills), with three voters, two non-voters and signing load.
//
//	go test -run '^$' -bench BenchmarkLeaderKill -benchtime 20x ./internal/nodetest/
func BenchmarkLeaderKill(b *testing.B) {
	res := leaderKills(b, b.N)
	pct := func(ds []time.Duration, p int) float64 {
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return float64(ds[min(len(ds)-1, len(ds)*p/100)].Milliseconds())
	}
	b.ReportMetric(pct(res.resume, 50), "p50-resume-ms")
	b.ReportMetric(pct(res.resume, 99), "p99-resume-ms")
	b.ReportMetric(pct(res.resume, 100), "max-resume-ms")
	b.ReportMetric(pct(res.elected, 50), "p50-elected-ms")
	b.ReportMetric(pct(res.elected, 99), "p99-elected-ms")
	b.ReportMetric(float64(res.requests), "sign-requests")
	b.ReportMetric(float64(res.failures), "sign-failures")
}
