// Package nodetest is the multi-node harness: it starts N `gatehouse node`
// processes (the real binary) on one PostgreSQL store, with the CA made once
// by `gatehouse ca init`, and in-process fake agents: the real tunnel client
// in front of an HTTP handler that stands for a cluster's API server. Tests
// about the gateway cluster (the change feed, restarts, later the ring) run
// in seconds without a Kubernetes control plane; the real one stays for
// end-to-end tests (internal/testenv).
//
// It is for tests only: it imports package testing, and the release binary
// never links it (a test in cmd/gatehouse checks).
package nodetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/auditschema"
	"github.com/gatehouse-dev/gatehouse/internal/front"
	"github.com/gatehouse-dev/gatehouse/internal/pki"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/node"
	"github.com/gatehouse-dev/gatehouse/tunnel"
)

var build struct {
	once sync.Once
	bin  string
	err  error
}

// Binary builds the gatehouse binary once per test process and returns its
// path.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "gatehouse-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(dir, "gatehouse")
		root, err := moduleRoot()
		if err != nil {
			build.err = err
			return
		}
		cmd := exec.Command("go", "build", "-o", build.bin, "./cmd/gatehouse")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("nodetest: go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.bin
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Cluster is N gateway nodes on one store.
type Cluster struct {
	t       testing.TB
	Bin     string
	Dir     string
	DSN     string
	KEKFile string
	// Store is the shared store, opened in the test process too: tests
	// seed and change it directly, as another node's API would.
	Store   *store.Store
	Org     *store.Org
	Project *store.Project
	// Admin is an ADMIN of Org, and AdminToken an API token of theirs.
	Admin      *store.User
	AdminToken string
	Nodes      []*Node
	// GossipKeyFile, when set (StartRing), makes the nodes one gateway
	// cluster.
	GossipKeyFile string

	rootOnce sync.Once
	root     atomic.Pointer[[]byte]

	apart      bool     // each node on its own address (StartRingApart)
	nodeArgs   []string // every node's extra flags (StartRingArgs)
	voters     int      // of the Raft group: the nodes started, up to 3
	front      *front.Front
	frontAddrs atomic.Pointer[[]string] // every node's address, for the front
}

// Node is one `gatehouse node` process.
type Node struct {
	Name, Addr, Dir string
	// GossipAddr and PeerAddr are set for a node of a ring.
	GossipAddr, PeerAddr string
	// MetricsAddr serves the node's Prometheus metrics (plain HTTP).
	MetricsAddr string
	// Env is added to the process's environment at its next Start.
	Env []string
	// Args are added to the command line at its next Start.
	Args []string
	c    *Cluster
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

// URL is the node's https URL.
func (n *Node) URL() string { return "https://" + n.Addr }

// Start starts n nodes, each on its own, on a new PostgreSQL database.
func Start(t testing.TB, n int) *Cluster { return start(t, n, false, nil) }

// StartRing starts n nodes that form one gateway cluster (gossip, tunnel
// placement, redirects, forwarding), after creating clusters in the store
// so that every node places them from the start.
func StartRing(t testing.TB, n int, clusters ...string) *Cluster { return start(t, n, true, clusters) }

// StartRingApart is StartRing with each node on a loopback address of its
// own (127.0.0.11, 127.0.0.12, ...) for all its ports, and its outgoing
// gossip and forwarding from that address: Partition can then cut nodes
// apart.
func StartRingApart(t testing.TB, n int) *Cluster { return startOpts(t, n, true, nil, true, nil) }

// StartRingArgs is StartRing with extra flags for every node.
func StartRingArgs(t testing.TB, n int, args ...string) *Cluster {
	return startOpts(t, n, true, nil, false, args)
}

func start(t testing.TB, n int, inRing bool, clusters []string) *Cluster {
	return startOpts(t, n, inRing, clusters, false, nil)
}

func startOpts(t testing.TB, n int, inRing bool, clusters []string, apart bool, args []string) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Bin: Binary(t), Dir: t.TempDir(), apart: apart, voters: min(max(n, 1), 3), nodeArgs: args}
	pg := testenv.PostgresT(t)
	c.DSN = pg.DSN
	key := make([]byte, 32)
	rand.Read(key)
	c.KEKFile = filepath.Join(c.Dir, "ca.kek")
	if err := os.WriteFile(c.KEKFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.run("migrate", "--store-driver", "postgres", "--store-dsn", c.DSN)
	c.run("ca", "init", "--store-driver", "postgres", "--store-dsn", c.DSN, "--ca-kek-file", c.KEKFile)
	ctx := context.Background()
	scfg := store.DefaultConfig()
	scfg.Driver, scfg.DSN = store.DriverPostgres, c.DSN
	st, err := store.Open(ctx, scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c.Store = st
	c.Org = &store.Org{Name: "acme"}
	must(t, st.CreateOrg(ctx, c.Org))
	c.Project = &store.Project{OrgID: c.Org.ID, Name: "web"}
	must(t, st.CreateProject(ctx, c.Project))
	c.Admin, c.AdminToken = c.Person("admin@acme.test", "ADMIN", "", "")
	for _, name := range clusters {
		must(t, st.CreateCluster(ctx, &store.Cluster{Name: name, ProjectID: c.Project.ID}))
	}
	if inRing {
		gk := make([]byte, 32)
		rand.Read(gk)
		c.GossipKeyFile = filepath.Join(c.Dir, "gossip.key")
		must(t, os.WriteFile(c.GossipKeyFile, []byte(base64.StdEncoding.EncodeToString(gk)+"\n"), 0o600))
	}
	for i := range n {
		c.Nodes = append(c.Nodes, c.newNode(fmt.Sprintf("node-%d", i+1)))
	}
	// A failed test shows what went wrong in the nodes, before their
	// directories go.
	t.Cleanup(func() {
		if t.Failed() {
			for _, nd := range c.Nodes {
				t.Logf("%s: warnings and errors:\n%s", nd.Name, nd.Problems(40))
			}
		}
	})
	for _, nd := range c.Nodes {
		nd.Start()
	}
	c.RootPEM() // read once, before tests use the cluster from several goroutines
	if inRing {
		c.waitLeader()
	}
	return c
}

// waitLeader waits until the nodes' Raft group has a leader: only it
// signs (design 0006), so credentials and registrations wait for it.
func (c *Cluster) waitLeader() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := c.Do(c.Nodes[0], http.MethodGet, "/api/v1/status", c.AdminToken, nil)
		if code == http.StatusOK && strings.Contains(string(body), `"raft":"leader"`) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no Raft leader among the nodes: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) run(args ...string) {
	c.t.Helper()
	c.Gatehouse(args...)
}

// Gatehouse runs the gatehouse command with args and returns its output;
// a failure fails the test.
func (c *Cluster) Gatehouse(args ...string) string {
	c.t.Helper()
	cmd := exec.Command(c.Bin, args...)
	cmd.Env = append(os.Environ(), "GATEHOUSE_CA_KEK=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("gatehouse %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// StoreArgs are the flags that give a gatehouse command the cluster's
// store and key-encryption key.
func (c *Cluster) StoreArgs() []string {
	return []string{"--store-driver", "postgres", "--store-dsn", c.DSN, "--ca-kek-file", c.KEKFile}
}

func (c *Cluster) newNode(name string) *Node {
	dir := filepath.Join(c.Dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	host := "127.0.0.1"
	if c.apart {
		host = fmt.Sprintf("127.0.0.%d", 11+len(c.Nodes))
	}
	n := &Node{Name: name, Addr: c.freeAddr(host), MetricsAddr: c.freeAddr("127.0.0.1"), Dir: dir, c: c}
	if c.GossipKeyFile != "" {
		n.GossipAddr, n.PeerAddr = c.freeAddr(host), c.freeAddr(host)
	}
	var addrs []string
	if p := c.frontAddrs.Load(); p != nil {
		addrs = slices.Clone(*p)
	}
	addrs = append(addrs, n.Addr)
	c.frontAddrs.Store(&addrs)
	return n
}

// Front returns the https URL of a TCP front over every node (package
// front): the one public address of a gateway cluster. Nodes added later
// are behind it too; a stopped node is skipped.
func (c *Cluster) Front() string {
	if c.front == nil {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		must(c.t, err)
		c.front = front.Serve(l, func() []string { return *c.frontAddrs.Load() })
		c.t.Cleanup(func() { c.front.Close() })
	}
	return "https://" + c.front.Addr()
}

// freeAddr returns an address on host whose port is free now (TCP and,
// for gossip, UDP).
func (c *Cluster) freeAddr(host string) string {
	addr, err := testenv.FreeAddr(host)
	if err != nil {
		c.t.Fatal(err)
	}
	return addr
}

// AddNode starts one more node; in a ring it joins the others. It changes
// Nodes: nothing may read Nodes meanwhile.
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	n := c.newNode(fmt.Sprintf("node-%d", len(c.Nodes)+1))
	c.Nodes = append(c.Nodes, n)
	n.Start()
	return n
}

// Start starts the node's process and waits until it serves. A stopped
// node starts again on the same address and state directory.
func (n *Node) Start() {
	t := n.c.t
	t.Helper()
	log, err := os.OpenFile(filepath.Join(n.Dir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	n.log = log
	args := []string{"node", "--name", n.Name, "--addr", n.Addr, "--state-dir", n.Dir,
		"--store-driver", "postgres", "--store-dsn", n.c.DSN, "--ca-kek-file", n.c.KEKFile, "--log-level", "debug",
		"--shutdown-timeout", "5s", "--metrics-addr", n.MetricsAddr,
		// Agents register through one address here (a test's, or the
		// front's), far faster than a real fleet's.
		"--unauthenticated-rate", "1000", "--unauthenticated-burst", "1000"}
	if n.GossipAddr != "" {
		var seeds []string
		for _, o := range n.c.Nodes {
			if o != n {
				seeds = append(seeds, o.GossipAddr)
			}
		}
		args = append(args, "--gossip-addr", n.GossipAddr, "--gossip-key-file", n.c.GossipKeyFile, "--peer-addr", n.PeerAddr,
			"--seeds", strings.Join(seeds, ","), "--voters", strconv.Itoa(n.c.voters))
	}
	args = append(args, n.c.nodeArgs...)
	args = append(args, n.Args...)
	n.cmd = exec.Command(n.c.Bin, args...)
	n.cmd.Env = append(os.Environ(), n.Env...)
	// Killed with the test process, even one that panics before its
	// cleanups run: no node outlives the test.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	n.cmd.Stdout, n.cmd.Stderr = log, log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan<- error) { done <- cmd.Wait() }(n.cmd, n.done)
	t.Cleanup(n.Stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pemBytes, err := os.ReadFile(filepath.Join(n.Dir, "ca.crt")); err == nil {
			hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool(pemBytes)}}}
			resp, err := hc.Get(n.URL() + "/readyz")
			hc.CloseIdleConnections()
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
			}
		}
		select {
		case err := <-n.done:
			n.done <- err
			t.Fatalf("node %s exited: %v\n%s", n.Name, err, n.LogTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not serve\n%s", n.Name, n.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the node gracefully (SIGTERM) and waits for it. It is
// idempotent.
func (n *Node) Stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(20 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
	n.cmd = nil
	n.log.Close()
}

// Metric returns the sum of the samples of a Prometheus metric the node
// serves whose line starts with prefix (a name, or a name and labels).
func (n *Node) Metric(prefix string) float64 {
	n.c.t.Helper()
	resp, err := http.Get("http://" + n.MetricsAddr + "/metrics")
	if err != nil {
		n.c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// RSS returns the resident set size of the node's process, in bytes.
func (n *Node) RSS() int64 {
	n.c.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.cmd.Process.Pid))
	if err != nil {
		n.c.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			return kb << 10
		}
	}
	n.c.t.Fatalf("no VmRSS in /proc/%d/status", n.cmd.Process.Pid)
	return 0
}

// Kill kills the node's process outright (SIGKILL: no leave, no drain) and
// waits for it to be gone. Start starts it again.
func (n *Node) Kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
	n.log.Close()
}

// Problems returns the last max warnings and errors in the node's log.
func (n *Node) Problems(max int) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "node.log"))
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			out = append(out, line)
		}
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return strings.Join(out, "\n")
}

// LogContains reports whether the node's log (all its runs) holds s.
func (n *Node) LogContains(s string) bool {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "node.log"))
	return bytes.Contains(b, []byte(s))
}

// LogSize returns the size of the node's log now: LogSince(size) is what
// it wrote after.
func (n *Node) LogSize() int64 {
	fi, err := os.Stat(filepath.Join(n.Dir, "node.log"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LogSince returns what the node's log holds past offset off.
func (n *Node) LogSince(off int64) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "node.log"))
	if off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// LogTail returns the end of the node's log.
func (n *Node) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "node.log"))
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

func pool(pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemBytes)
	return p
}

// RootPEM is the gateway's root certificate, as every node serves it
// (read from the first node once it has written it).
func (c *Cluster) RootPEM() []byte {
	c.rootOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(c.Nodes[0].Dir, "ca.crt"))
		if err != nil {
			c.t.Fatal(err)
		}
		c.root.Store(&b)
	})
	return *c.root.Load()
}

// SetTrust replaces the roots the test's clients verify the nodes with (a
// root rotation's bundle).
func (c *Cluster) SetTrust(bundle []byte) {
	c.RootPEM()
	c.root.Store(&bundle)
}

// ParsePEM returns the DER of each PEM block in b.
func ParsePEM(b []byte) [][]byte {
	var out [][]byte
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			return out
		}
		out = append(out, block.Bytes)
	}
}

// Person creates a person with a role (at project scope when projectID is
// set, in namespace ns when that is set too) and returns them with an API
// token.
func (c *Cluster) Person(email, role, projectID, ns string) (*store.User, string) {
	ctx := context.Background()
	u := &store.User{OrgID: c.Org.ID, Email: email}
	must(c.t, c.Store.CreateUser(ctx, u))
	if role != "" {
		c.Bind(u.ID, role, projectID, ns, time.Time{})
	}
	tok, err := c.Store.CreateAPIToken(ctx, &store.APIToken{UserID: u.ID, Name: "test", Expires: time.Now().Add(time.Hour)})
	must(c.t, err)
	return u, tok
}

// Bind binds a person to a role, expiring at expires unless it is zero.
func (c *Cluster) Bind(userID, role, projectID, ns string, expires time.Time) *store.Binding {
	b := &store.Binding{OrgID: c.Org.ID, SubjectKind: store.SubjectUser, SubjectID: userID, Role: role, ProjectID: projectID, Namespace: ns, Expires: expires}
	must(c.t, c.Store.CreateBinding(context.Background(), b))
	return b
}

// Do calls node's API with token and returns the status and body.
func (c *Cluster) Do(n *Node, method, path, token string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		must(c.t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, n.URL()+path, rd)
	must(c.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTPClient(nil)
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	must(c.t, err)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// HTTPClient returns a client that trusts the gateway and presents cert,
// if any.
func (c *Cluster) HTTPClient(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: pool(c.RootPEM())}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

// Credential mints a person's client certificate through node's API.
func (c *Cluster) Credential(n *Node, token string) tls.Certificate {
	c.t.Helper()
	key, keyPEM, err := pki.NewKey()
	must(c.t, err)
	csr, err := pki.CSR(key)
	must(c.t, err)
	code, body := c.Do(n, http.MethodPost, "/api/v1/credentials", token, api.CredentialRequest{CSR: string(csr)})
	if code != http.StatusOK {
		c.t.Fatalf("credential: %d %s", code, body)
	}
	var cred api.Credential
	must(c.t, json.Unmarshal(body, &cred))
	cert, err := tls.X509KeyPair([]byte(cred.Certificate), keyPEM)
	must(c.t, err)
	return cert
}

// Agent is an in-process fake agent: the real tunnel client, registered
// with a bootstrap token, in front of Handler (a stand-in API server).
type Agent struct {
	Cluster  string
	Server   *httptest.Server
	cert     atomic.Pointer[tls.Certificate]
	controls atomic.Int64
	trust    atomic.Pointer[[]byte]
	client   *tunnel.Client
	stop     func()
}

// Controls returns how many control messages the agent carried out.
func (a *Agent) Controls() int64 { return a.controls.Load() }

// Remote returns the address of the node that holds the agent's tunnel
// ("" while none is up).
func (a *Agent) Remote() string { return a.client.Remote() }

// Redirects returns how many redirects the agent has followed.
func (a *Agent) Redirects() int64 { return a.client.Redirects() }

// Sessions returns how many tunnel sessions the agent has had.
func (a *Agent) Sessions() int64 { return a.client.Sessions() }

// Attempts returns how many connections the agent has tried.
func (a *Agent) Attempts() int64 { return a.client.Attempts() }

// Stop stops the agent. It is idempotent.
func (a *Agent) Stop() { a.stop() }

// Trust returns the last trust bundle the gateway sent the agent (a root
// rotation), or nil.
func (a *Agent) Trust() []byte {
	if p := a.trust.Load(); p != nil {
		return *p
	}
	return nil
}

// Renew asks the gateway, over the agent's tunnel, for a certificate for a
// new key, as the agent does before its certificate expires, and returns
// the chain (PEM). The agent goes on with the certificate it has.
func (a *Agent) Renew(ctx context.Context) ([]byte, error) {
	chain, _, err := a.renew(ctx)
	return chain, err
}

// RenewAndUse is Renew, after which the agent connects with the new
// certificate.
func (a *Agent) RenewAndUse(ctx context.Context) ([]byte, error) {
	chain, keyPEM, err := a.renew(ctx)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(chain, keyPEM)
	if err != nil {
		return nil, err
	}
	a.cert.Store(&cert)
	return chain, nil
}

func (a *Agent) renew(ctx context.Context) (chain, keyPEM []byte, err error) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := pki.CSR(key)
	if err != nil {
		return nil, nil, err
	}
	chain, err = a.client.RenewCertificate(ctx, csr)
	return chain, keyPEM, err
}

// StartAgent registers cluster (made in the store, in Project) through
// node n and runs its agent's tunnel to n, serving h.
func (c *Cluster) StartAgent(cluster string, n *Node, h http.Handler) *Agent {
	t := c.t
	t.Helper()
	ctx := context.Background()
	cl, err := c.Store.GetCluster(ctx, cluster)
	if errors.Is(err, store.ErrNotFound) {
		cl = &store.Cluster{Name: cluster, ProjectID: c.Project.ID}
		err = c.Store.CreateCluster(ctx, cl)
	}
	must(t, err)
	token, err := c.Store.CreateBootstrapToken(ctx, cl.ID, time.Hour)
	must(t, err)
	key, keyPEM, err := pki.NewKey()
	must(t, err)
	csr, err := pki.CSR(key)
	must(t, err)
	body, _ := json.Marshal(node.RegisterRequest{Token: token, CSR: string(csr), Fingerprint: "uid-" + cluster})
	hc := c.HTTPClient(nil)
	resp, err := hc.Post(n.URL()+"/v1/agents/register", "application/json", bytes.NewReader(body))
	must(t, err)
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	hc.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("register %s: %d %s", cluster, resp.StatusCode, out)
	}
	var reg node.RegisterResponse
	must(t, json.Unmarshal(out, &reg))
	cert, err := tls.X509KeyPair([]byte(reg.Certificate), keyPEM)
	must(t, err)
	a := &Agent{Cluster: cluster, Server: httptest.NewServer(h)}
	a.cert.Store(&cert)
	target, _ := url.Parse(a.Server.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.FlushInterval = -1
	cfg := tunnel.DefaultClientConfig()
	cfg.GatewayAddr, cfg.ServerName, cfg.RootCAs, cfg.Proxy = n.Addr, "127.0.0.1", pool(c.RootPEM()), nil
	cfg.GetCertificate = func() (*tls.Certificate, error) { return a.cert.Load(), nil }
	cfg.Handler = proxy
	cfg.Hello = func() tunnel.Hello { return tunnel.Hello{AgentVersion: "nodetest", KubeVersion: "v0.0.0-fake"} }
	cfg.OnTrust = func(b []byte) { a.trust.Store(&b) }
	cfg.Control = tunnel.ControlFunc(func(context.Context, *tunnel.Control) error {
		a.controls.Add(1)
		return nil
	})
	a.client, err = tunnel.NewClient(cfg)
	must(t, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.client.Run(rctx)
	}()
	var once sync.Once
	a.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			a.Server.Close()
		})
	}
	t.Cleanup(a.stop)
	return a
}

// CertSerial returns the hex serial of a certificate's leaf.
func CertSerial(c tls.Certificate) string {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return ""
	}
	return leaf.SerialNumber.Text(16)
}

// PEMChain returns a certificate's chain in PEM.
func PEMChain(c tls.Certificate) []byte {
	var b bytes.Buffer
	for _, der := range c.Certificate {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return b.Bytes()
}

// Partition cuts the nodes of side off from every other node, both ways,
// with iptables rules that drop the packets between their addresses (the
// nodes must have been started apart: StartRingApart). Clients, agents
// and the store still reach every node. The returned func heals the
// partition; the test's cleanup does too.
func (c *Cluster) Partition(side ...*Node) (heal func()) {
	t := c.t
	t.Helper()
	if !c.apart {
		t.Fatal("nodetest: Partition needs nodes started apart (StartRingApart)")
	}
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatalf("nodetest: Partition needs iptables (apt-get install iptables; .ci/run installs it): %v", err)
	}
	chain := fmt.Sprintf("GH-PART-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	run := func(args ...string) error {
		out, err := exec.Command(ipt, append([]string{"-w"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	host := func(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
	if err := run("-N", chain); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	heal = func() {
		once.Do(func() {
			for _, err := range []error{run("-D", "OUTPUT", "-j", chain), run("-F", chain), run("-X", chain)} {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	t.Cleanup(heal)
	for _, n := range side {
		for _, o := range c.Nodes {
			if slices.Contains(side, o) {
				continue
			}
			a, b := host(n.Addr), host(o.Addr)
			for _, rule := range [][]string{{"-s", a, "-d", b}, {"-s", b, "-d", a}} {
				if err := run(append(append([]string{"-A", chain}, rule...), "-j", "DROP")...); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// Packets between loopback addresses go out and in through lo: OUTPUT
	// sees every one.
	if err := run("-I", "OUTPUT", "-j", chain); err != nil {
		t.Fatal(err)
	}
	return heal
}

// EventSchema compiles the documented schema of audit events
// (docs/audit/event-v1.schema.json), as a consumer that knows nothing of
// Gatehouse's Go types would.
func EventSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	s, err := auditschema.Compile()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
