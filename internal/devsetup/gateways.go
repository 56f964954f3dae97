package devsetup

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apiclient"
	"github.com/gatehouse-dev/gatehouse/internal/front"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

// Gateway is one `gatehouse node` process of gatehouse dev --gateways N,
// as gateways.json lists it.
type Gateway struct {
	Name       string `json:"name"`
	Addr       string `json:"addr"`
	PeerAddr   string `json:"peerAddr"`
	GossipAddr string `json:"gossipAddr"`
	PID        int    `json:"pid"`

	cmd  *exec.Cmd
	done chan error
}

// gatewaysConfig is what every node process of the dev cluster shares.
type gatewaysConfig struct {
	bin, dsn, kekFile, gossipKeyFile, publicURL, kratosPublic, kratosAdmin, logLevel string
	auditBrokers                                                                     []string // the embedded Kafka, if any
}

// startGateways runs n gateway node processes on 127.0.0.2, 127.0.0.3, ...
// as one gateway cluster, and a TCP front (package front) that spreads connections
// over them (the stand-in for an anycast address or an L4 load balancer),
// on l, which it then owns. It returns when every node serves, having
// written gateways.json.
func (e *Env) startGateways(ctx context.Context, n int, l net.Listener, gc gatewaysConfig) error {
	e.closers = append(e.closers, func() { l.Close() })
	key := make([]byte, 32)
	rand.Read(key)
	gc.gossipKeyFile = filepath.Join(e.cfg.StateDir, "gossip.key")
	if err := os.WriteFile(gc.gossipKeyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return err
	}
	for i := range n {
		host := fmt.Sprintf("127.0.0.%d", i+2)
		g := &Gateway{Name: fmt.Sprintf("gw-%d", i+1)}
		var err error
		for _, p := range []*string{&g.Addr, &g.PeerAddr, &g.GossipAddr} {
			if *p, err = testenv.FreeAddr(host); err != nil {
				return err
			}
		}
		e.gateways = append(e.gateways, g)
	}
	for _, g := range e.gateways {
		if err := e.startGateway(g, gc); err != nil {
			return err
		}
	}
	if err := e.writeGatewaysJSON(); err != nil {
		return err
	}
	for _, g := range e.gateways {
		if err := e.waitServes(ctx, g); err != nil {
			return err
		}
	}
	addrs := make([]string, len(e.gateways))
	for i, g := range e.gateways {
		addrs[i] = g.Addr
	}
	f := front.Serve(l, func() []string { return addrs })
	e.closers = append(e.closers, func() { f.Close() })
	return nil
}

// startGateway starts (or starts again) g's process.
func (e *Env) startGateway(g *Gateway, gc gatewaysConfig) error {
	var seeds []string
	for _, o := range e.gateways {
		if o != g {
			seeds = append(seeds, o.GossipAddr)
		}
	}
	dir := filepath.Join(e.cfg.StateDir, g.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	g.cmd = exec.Command(gc.bin, "node", "--name", g.Name, "--addr", g.Addr, "--state-dir", dir,
		"--store-driver", "postgres", "--store-dsn", gc.dsn, "--ca-kek-file", gc.kekFile,
		"--gossip-addr", g.GossipAddr, "--seeds", strings.Join(seeds, ","), "--gossip-key-file", gc.gossipKeyFile,
		"--peer-addr", g.PeerAddr, "--public-url", gc.publicURL, "--shutdown-timeout", "5s", "--log-level", gc.logLevel,
		"--kratos-public-url", gc.kratosPublic, "--kratos-admin-url", gc.kratosAdmin,
		"--voters", strconv.Itoa(min(len(e.gateways), 3)))
	if len(gc.auditBrokers) > 0 {
		g.cmd.Args = append(g.cmd.Args, "--audit-kafka-brokers", strings.Join(gc.auditBrokers, ","), "--audit-kafka-topic", AuditTopic)
	}
	g.cmd.Env = append(os.Environ(), "GATEHOUSE_CA_KEK=")
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	// Its own process group, killed with this process (as the test bed's).
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("dev: %s: %w", g.Name, err)
	}
	g.PID = g.cmd.Process.Pid
	g.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan<- error) { done <- cmd.Wait() }(g.cmd, g.done)
	e.closers = append(e.closers, func() {
		g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.done:
		case <-time.After(15 * time.Second):
			g.cmd.Process.Kill()
			<-g.done
		}
	})
	return nil
}

// waitServes waits until g answers /readyz, or fails if it exits.
func (e *Env) waitServes(ctx context.Context, g *Gateway) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // only "is it up?"
	defer hc.CloseIdleConnections()
	var exited error
	err := waitUntil(ctx, 60*time.Second, func() bool {
		select {
		case err := <-g.done:
			g.done <- err
			log := filepath.Join(e.cfg.StateDir, g.Name, "node.log")
			exited = fmt.Errorf("dev: %s exited (%v); the end of %s:\n%s", g.Name, err, log, logTail(log, 2000))
			return true
		default:
		}
		resp, err := hc.Get("https://" + g.Addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, nil)
	if exited != nil {
		return exited
	}
	return err
}

func (e *Env) writeGatewaysJSON() error {
	b, err := json.MarshalIndent(e.gateways, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(e.cfg.StateDir, "gateways.json"), append(b, '\n'), 0o644)
}

// Gateways returns the gateway processes of --gateways N (none for one
// gateway in this process).
func (e *Env) Gateways() []*Gateway { return e.gateways }

// clusterConnected asks the gateways (through the front) whether cluster's
// agent is connected, as the admin.
func (e *Env) clusterConnected(ctx context.Context, cluster string) bool {
	token, err := os.ReadFile(e.AdminTokenFile)
	if err != nil {
		return false
	}
	ca, err := os.ReadFile(e.CAFile)
	if err != nil {
		return false
	}
	c, err := apiclient.New(apiclient.Config{Server: e.GatewayURL, Token: strings.TrimSpace(string(token)), CAPEM: ca, Timeout: 5 * time.Second})
	if err != nil {
		return false
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		return false
	}
	for _, cs := range st.Clusters {
		if cs.Name == cluster {
			return cs.Connected
		}
	}
	return false
}

// logTail returns the last n bytes of the file at path.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
