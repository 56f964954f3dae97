package devsetup_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control/apiclient"
	"github.com/gatehouse-dev/gatehouse/internal/devsetup"
	"github.com/gatehouse-dev/gatehouse/internal/kafkatest"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/internal/testenv/term"
)

func TestMain(m *testing.M) {
	// As make run's build: an embedded broker for the audit pipeline.
	devsetup.EmbeddedKafka = func(topic string) ([]string, func(), error) {
		k, err := kafkatest.Start(kafkatest.Config{Brokers: 1, Partitions: 3, Topics: []string{topic}})
		if err != nil {
			return nil, nil, err
		}
		return k.Brokers, func() { k.Close() }, nil
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
	)
}

// TestDevEndsWithWorkingKubeconfig is what `make run` promises: the admin
// kubeconfig works with stock kubectl, through the gateway and the agent.
func TestDevEndsWithWorkingKubeconfig(t *testing.T) {
	cfg := devsetup.DefaultConfig()
	cfg.StateDir = t.TempDir()
	addr, err := testenv.FreeAddr("127.0.0.1") // the gateway keeps its port across the restart
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr, cfg.KratosPort = addr, 0
	var out bytes.Buffer
	cfg.Out = &out
	ctx := context.Background()
	env, err := devsetup.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if env != nil {
			env.Close()
		}
	}()
	if !strings.Contains(out.String(), "kubectl get pods -A") {
		t.Fatalf("no instructions printed:\n%s", out.String())
	}
	kubectl, err := testenv.Tool("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	podsVisible := func(kubeconfig string) {
		t.Helper()
		eventually(t, 60*time.Second, func() error {
			cmd := exec.Command(kubectl, "get", "pods", "-A", "--no-headers")
			cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "HOME="+cfg.StateDir)
			got, err := cmd.CombinedOutput()
			if err == nil && strings.Count(string(got), "Running") >= 3 && strings.Contains(string(got), "demo") {
				return nil
			}
			return fmt.Errorf("kubectl get pods -A: %v\n%s", err, got)
		})
	}
	podsVisible(env.AdminKubeconfig)

	// A restart on the same state directory keeps the CA and the store:
	// the previous run's kubeconfig still works (issue 9).
	previous := filepath.Join(t.TempDir(), "previous.kubeconfig")
	if err := os.WriteFile(previous, mustReadFile(t, env.AdminKubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	env.Close()
	out.Reset()
	if env, err = devsetup.Start(ctx, cfg); err != nil {
		t.Fatalf("restart: %v\n%s", err, out.String())
	}
	podsVisible(previous)
	if !strings.Contains(out.String(), "re-homed") {
		t.Fatalf("the new local cluster was not re-homed:\n%s", out.String())
	}
	// The admin's API token reaches the REST API on the gateway's port.
	token, err := os.ReadFile(env.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(cfg.StateDir + "/ca.crt")
	c, err := apiclient.New(apiclient.Config{Server: env.GatewayURL, Token: strings.TrimSpace(string(token)), CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if cl, err := c.GetCluster(ctx, "dev"); err != nil || !cl.Registered || cl.Project != "default" {
		t.Fatalf("API: %+v %v", cl, err)
	}
	// Cluster health: one member, the dev cluster connected to it, with the
	// versions its agent reported.
	st, err := c.Status(ctx)
	if err != nil || len(st.Members) != 1 || len(st.Clusters) != 1 {
		t.Fatalf("status: %+v %v", st, err)
	}
	if cs := st.Clusters[0]; !cs.Connected || cs.Node != "dev-node" || cs.Owner != "dev-node" || cs.AgentVersion != "gatehouse-dev" || !strings.HasPrefix(cs.KubeVersion, "v1.") {
		t.Fatalf("status of dev: %+v", cs)
	}
	audit, err := os.ReadFile(cfg.StateDir + "/audit.jsonl")
	if err != nil || env.AdminID == "" || !bytes.Contains(audit, []byte(`"user":"`+env.AdminID+`"`)) {
		t.Fatalf("audit log: %v %q", err, audit)
	}
	// The pipeline: the admin's requests reach the Kafka topic that
	// kafka.json names.
	var kj struct {
		Brokers []string `json:"brokers"`
		Topic   string   `json:"topic"`
	}
	if err := json.Unmarshal(mustReadFile(t, filepath.Join(cfg.StateDir, "kafka.json")), &kj); err != nil || len(kj.Brokers) == 0 || kj.Topic == "" {
		t.Fatalf("kafka.json: %+v %v", kj, err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var found atomic.Bool
	kafkatest.Consume(rctx, kj.Brokers, kj.Topic, 3, func(_ int, m kafka.Message) bool {
		if bytes.Contains(m.Value, []byte(`"user":"`+env.AdminID+`"`)) && bytes.Contains(m.Value, []byte(`"kind":"kube"`)) {
			found.Store(true)
		}
		return found.Load()
	})
	if !found.Load() {
		t.Fatal("no event of the admin's requests in the Kafka topic")
	}
}

// TestLoginKubeconfigAndRevocation signs the dev admin in through Kratos
// with the real CLI binary, uses kubectl with the credential plugin, and
// revokes them: their open watch ends and their next request fails.
func TestLoginKubeconfigAndRevocation(t *testing.T) {
	dir := t.TempDir()
	bin := buildCLI(t, dir)
	cfg := devsetup.DefaultConfig()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Addr, cfg.KratosPort = "127.0.0.1:0", 0
	cfg.Out = io.Discard
	ctx := context.Background()
	env, err := devsetup.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	kubectl, err := testenv.Tool("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	environ := personEnv(dir, "cli")
	run := func(stdin string, name string, args ...string) (string, error) {
		return runPerson(dir, "cli", stdin, name, args...)
	}
	if out, err := run("wrong\n", bin, "login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile, "--email", cfg.Admin, "--password-stdin"); err == nil || !strings.Contains(out, "wrong email or password") {
		t.Fatalf("login with a wrong password: %v %s", err, out)
	}
	if out, err := run(env.AdminPassword+"\n", bin, "login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile, "--email", cfg.Admin, "--password-stdin"); err != nil {
		t.Fatalf("login: %v %s", err, out)
	}
	if out, err := run("", bin, "whoami"); err != nil || !strings.Contains(out, cfg.Admin) {
		t.Fatalf("whoami: %v %s", err, out)
	}
	kc := filepath.Join(dir, "dev.kubeconfig")
	if out, err := run("", bin, "kubeconfig", "--cluster", "dev", "--file", kc); err != nil {
		t.Fatalf("kubeconfig: %v %s", err, out)
	}
	if out, err := run("", kubectl, "--kubeconfig", kc, "get", "pods", "-n", "demo", "--no-headers"); err != nil || !strings.Contains(out, "Running") {
		t.Fatalf("kubectl with the credential plugin: %v %s", err, out)
	}
	// A second kubectl reuses the cached certificate: one issued so far.
	if out, err := run("", kubectl, "--kubeconfig", kc, "get", "ns"); err != nil {
		t.Fatalf("second kubectl: %v %s", err, out)
	}
	auditLog, _ := os.ReadFile(filepath.Join(cfg.StateDir, "audit.jsonl"))
	if n := strings.Count(string(auditLog), `"action":"credential.issue"`); n != 1 {
		t.Fatalf("%d credentials issued, want 1 (cached)", n)
	}
	if !strings.Contains(string(auditLog), `"action":"login"`) {
		t.Fatal("login not audited")
	}

	// A person the admin creates as a local account with a namespace
	// read-only grant: she lists pods in her namespace and nothing more.
	if out, err := run("Nora-pw-"+env.AdminPassword+"\n", bin, "create", "user", "nora@example.com", "--password-stdin"); err != nil {
		t.Fatalf("create user: %v %s", err, out)
	}
	grant := filepath.Join(dir, "grant.yaml")
	os.WriteFile(grant, []byte("kind: RoleBinding\nsubject: {kind: user, name: nora@example.com}\nrole: NAMESPACE_READ_ONLY\nproject: default\nnamespace: demo\n"), 0o600)
	if out, err := run("", bin, "apply", "-f", grant); err != nil || !strings.Contains(out, "created") {
		t.Fatalf("apply: %v %s", err, out)
	}
	nora := func(stdin string, name string, args ...string) (string, error) {
		return runPerson(dir, "nora", stdin, name, args...)
	}
	if out, err := nora("Nora-pw-"+env.AdminPassword+"\n", bin, "login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile, "--email", "nora@example.com", "--password-stdin"); err != nil {
		t.Fatalf("nora login: %v %s", err, out)
	}
	// Nora replaces the first password the admin gave her.
	if out, err := nora("Nora-own-"+env.AdminPassword+"\n", bin, "passwd", "--password-stdin"); err != nil {
		t.Fatalf("nora passwd: %v %s", err, out)
	}
	if out, err := nora("Nora-pw-"+env.AdminPassword+"\n", bin, "login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile, "--email", "nora@example.com", "--password-stdin"); err == nil {
		t.Fatalf("the first password still works: %s", out)
	}
	if out, err := nora("Nora-own-"+env.AdminPassword+"\n", bin, "login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile, "--email", "nora@example.com", "--password-stdin"); err != nil {
		t.Fatalf("nora login with her own password: %v %s", err, out)
	}
	noraKC := filepath.Join(dir, "nora.kubeconfig")
	if out, err := nora("", bin, "kubeconfig", "--cluster", "dev", "--file", noraKC); err != nil {
		t.Fatalf("nora kubeconfig: %v %s", err, out)
	}
	out, err := nora("", kubectl, "--kubeconfig", noraKC, "get", "pods", "-n", "demo", "-o", "name")
	if err != nil || !strings.Contains(out, "pod/web-") {
		t.Fatalf("nora lists pods in demo: %v %s", err, out)
	}
	pod := strings.TrimPrefix(strings.Fields(out)[0], "pod/")
	for _, args := range [][]string{
		{"delete", "pod", "-n", "demo", pod, "--wait=false"},
		{"exec", "-n", "demo", pod, "--", "echo", "hi"},
		{"get", "secrets", "-n", "demo"},
		{"get", "pods", "-n", "default"},
	} {
		if out, err := nora("", kubectl, append([]string{"--kubeconfig", noraKC}, args...)...); err == nil || !strings.Contains(out, "forbidden") {
			t.Fatalf("nora %v: %v %s", args, err, out)
		}
	}

	// A person invited rather than given a password: they choose their
	// own with the invitation, which works once.
	invitation, err := run("", bin, "create", "user", "omar@example.com", "--invite")
	if err != nil {
		t.Fatalf("create user --invite: %v %s", err, invitation)
	}
	code := strings.TrimSpace(invitation[strings.LastIndex(strings.TrimSpace(invitation), "\n")+1:])
	omarPW := "Omar-own-" + env.AdminPassword
	omar := func(stdin string, args ...string) (string, error) {
		return runPerson(dir, "omar", stdin, bin, args...)
	}
	loginAs := []string{"login", "--server", env.GatewayURL, "--identity-url", env.IdentityURL, "--ca-file", env.CAFile}
	if out, err := omar(omarPW+"\n", append(loginAs, "--invitation", code, "--password-stdin")...); err != nil || !strings.Contains(out, "logged in as omar@example.com") {
		t.Fatalf("omar accepts the invitation %q: %v %s", code, err, out)
	}
	if out, err := omar("Another-"+omarPW+"\n", append(loginAs, "--invitation", code, "--password-stdin")...); err == nil {
		t.Fatalf("an invitation worked twice: %s", out)
	}
	if out, err := omar(omarPW+"\n", append(loginAs, "--email", "omar@example.com", "--password-stdin")...); err != nil {
		t.Fatalf("omar logs in with the password he chose: %v %s", err, out)
	}
	if out, err := run("", bin, "invite", "nobody@example.com"); err == nil {
		t.Fatalf("an invitation for a person who does not exist: %s", out)
	}

	// Revocation: an open watch ends, and the next request fails.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := exec.CommandContext(wctx, kubectl, "--kubeconfig", kc, "get", "configmaps", "-n", "demo", "-w")
	watch.Env = environ
	wout, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(wout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	if l, ok := <-lines; !ok || !strings.Contains(l, "NAME") {
		t.Fatalf("watch did not start: %q", l)
	}
	// Wait until the watch request itself is open on the gateway.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(string(mustReadFile(t, filepath.Join(cfg.StateDir, "audit.jsonl"))), `"phase":"open","requestId"`) {
		if time.Now().After(deadline) {
			t.Fatal("watch not open on the gateway")
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	if out, err := run("", bin, "revoke", "--user", cfg.Admin, "--reason", "test"); err != nil {
		t.Fatalf("revoke: %v %s", err, out)
	}
	for range lines {
	}
	t.Logf("watch ended %s after the revocation began", time.Since(start))
	watch.Wait()
	if out, err := run("", kubectl, "--kubeconfig", kc, "get", "ns"); err == nil {
		t.Fatalf("kubectl works after revocation: %s", out)
	}
	if out, err := run("", kubectl, "--kubeconfig", env.AdminKubeconfig, "get", "ns"); err == nil {
		t.Fatalf("the static kubeconfig works after revocation: %s", out)
	}
}

// personEnv is the environment of commands run as one person: their own
// CLI profile under dir.
func personEnv(dir, who string) []string {
	return append(os.Environ(), "GATEHOUSE_CONFIG_DIR="+filepath.Join(dir, who), "HOME="+dir)
}

// runPerson runs a command as who with stdin and returns its output.
func runPerson(dir, who, stdin, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = personEnv(dir, who)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// buildCLI builds the gatehouse binary into dir.
func buildCLI(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "gatehouse")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command(goBin, "build", "-o", bin, "./cmd/gatehouse")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// eventually calls cond until it returns nil, failing the test with its
// last error after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	testenv.Eventually(t, timeout, cond)
}

// gatehouse dev --gateways 3: three gateway processes as one gateway
// cluster behind a TCP front; kubectl works through the front, and goes on
// working when one gateway is killed.
func TestDevWithThreeGateways(t *testing.T) {
	dir := t.TempDir()
	cfg := devsetup.DefaultConfig()
	cfg.StateDir, cfg.Addr, cfg.KratosPort, cfg.Gateways, cfg.Binary = dir, "127.0.0.1:0", 0, 3, buildCLI(t, t.TempDir())
	var out bytes.Buffer
	cfg.Out = &out
	env, err := devsetup.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	defer env.Close()
	var listed []devsetup.Gateway
	if err := json.Unmarshal(mustReadFile(t, filepath.Join(dir, "gateways.json")), &listed); err != nil || len(listed) != 3 || listed[0].PID == 0 {
		t.Fatalf("gateways.json: %v %+v", err, listed)
	}
	kubectl, err := testenv.Tool("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	pods := func() error {
		cmd := exec.Command(kubectl, "get", "pods", "-n", "demo", "--no-headers", "--request-timeout=10s")
		cmd.Env = append(os.Environ(), "KUBECONFIG="+env.AdminKubeconfig, "HOME="+dir)
		got, err := cmd.CombinedOutput()
		if err == nil && strings.Count(string(got), "Running") >= 3 {
			return nil
		}
		return fmt.Errorf("kubectl get pods: %v\n%s", err, got)
	}
	eventually(t, 60*time.Second, pods)
	// Streams across the hop: the front sends each kubectl to the next
	// gateway, so of three runs at least two reach a gateway that does not
	// hold the cluster's tunnel and forwards them (real kubectl, real API
	// server, kwok pods).
	run := func(args ...string) (string, error) {
		cmd := exec.Command(kubectl, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+env.AdminKubeconfig, "HOME="+dir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	podName, err := run("get", "pods", "-n", "demo", "-o", "jsonpath={.items[0].metadata.name}")
	if err != nil {
		t.Fatalf("pod name: %v %s", err, podName)
	}
	for i := range 3 {
		if out, err := run("exec", "-n", "demo", podName, "--", "echo", fmt.Sprintf("hop-%d", i)); err != nil || !strings.Contains(out, fmt.Sprintf("hop-%d", i)) {
			t.Fatalf("exec #%d: %v %s", i, err, out)
		}
		out, err := run("get", "--raw", "/api/v1/namespaces/demo/pods?watch=true&timeoutSeconds=1")
		if err != nil || !strings.Contains(out, `"type":"ADDED"`) {
			t.Fatalf("watch #%d: %v %s", i, err, out)
		}
		portForwardEcho(t, kubectl, env.AdminKubeconfig, dir, podName)
	}
	recordedSession(t, env, kubectl, dir, podName, cfg.Binary)
	// Kill one gateway outright: the front skips it, the ring notices, and
	// the agent, if it was there, comes back on another.
	victim := env.Gateways()[1]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 60*time.Second, pods)
	t.Logf("after kill -9 of %s, kubectl through the front worked again after %s", victim.Name, time.Since(start).Round(100*time.Millisecond))
}

// portForwardEcho forwards a local port to the pod's echo port with
// kubectl and checks that bytes come back unchanged.
func portForwardEcho(t *testing.T, kubectl, kubeconfig, home, pod string) {
	t.Helper()
	cmd := exec.Command(kubectl, "-n", "demo", "port-forward", "--address=127.0.0.1", "pod/"+pod, ":8080")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "HOME="+home)
	port, stop, err := testenv.PortForward(cmd, "8080", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte("across the hop\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "across the hop\n" {
		t.Fatalf("port-forward echo: %q %v", line, err)
	}
}

// recordedSession turns on session recording for the dev cluster, runs an
// exec with a terminal through the front (a gateway node records it: the
// one kubectl reached), and replays it with gatehouse audit play: the
// recording went through that node's spool, Kafka and the indexer, and
// replays what kubectl showed byte for byte.
func recordedSession(t *testing.T, env *devsetup.Env, kubectl, home, pod, cli string) {
	t.Helper()
	ctx := context.Background()
	token, err := os.ReadFile(env.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	ca := mustReadFile(t, env.CAFile)
	c, err := apiclient.New(apiclient.Config{Server: env.GatewayURL, Token: strings.TrimSpace(string(token)), CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := c.GetCluster(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	cl.SessionRecording = []string{"*"}
	if _, err := c.UpdateCluster(ctx, *cl); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kubectl, "exec", "-it", "-n", "demo", pod, "--", "sh", "-c", `printf 'recorded: h\303\251llo \342\202\254\n'; read line; echo "you said $line"; read line || exit 0`)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.AdminKubeconfig, "HOME="+home)
	tm := term.Start(t, cmd, 100, 30)
	// Each line waits for the output before it: the session's setup and
	// teardown do not race what it shows.
	tm.WaitShown(t, "recorded:", 60*time.Second)
	tm.Type(t, "hi\r")
	tm.WaitShown(t, "you said hi", 60*time.Second)
	// The session ends on end-of-file (Ctrl-D, not echoed), with nothing
	// left to show: output written as it ends races its teardown outside
	// the gateway (kubectl loses it straight from the API server too; see
	// TestExecSessionRecordedAndReplayed).
	tm.Type(t, "\x04")
	if err := tm.Wait(60 * time.Second); err != nil {
		t.Fatalf("exec -it: %v", err)
	}
	if !strings.Contains(tm.Shown(), "you said hi") {
		t.Fatalf("exec -it showed %q", tm.Shown())
	}
	// The session's close event names its recording, once indexed.
	var id string
	eventually(t, 60*time.Second, func() error {
		page, err := c.SearchAudit(ctx, url.Values{"cluster": {"dev"}, "resource": {"pods"}, "limit": {"50"}})
		if err != nil {
			return err
		}
		var seen []string
		for _, raw := range page.Items {
			var ev struct{ Phase, Subresource, Recording, Node string }
			json.Unmarshal(raw, &ev)
			if ev.Phase == "close" && ev.Subresource == "exec" && ev.Recording != "" {
				id = ev.Recording
				return nil
			}
			seen = append(seen, ev.Node+":"+ev.Phase+"/"+ev.Subresource+"/"+ev.Recording)
		}
		return fmt.Errorf("no recorded exec session in the search: %d events: %v", len(seen), seen)
	})
	var played []byte
	eventually(t, 60*time.Second, func() error {
		play := exec.Command(cli, "audit", "play", id, "--speed", "1000", "--server", env.GatewayURL, "--token-file", env.AdminTokenFile, "--ca-file", env.CAFile)
		play.Env = append(os.Environ(), "HOME="+home)
		var errb bytes.Buffer
		play.Stderr = &errb
		out, err := play.Output()
		if err != nil || strings.Contains(errb.String(), "not complete") {
			return fmt.Errorf("audit play: %v %s", err, errb.String())
		}
		played = out
		return nil
	})
	if string(played) != tm.Shown() {
		t.Fatalf("the replay differs from what kubectl showed:\nplayed %q\nshown  %q", played, tm.Shown())
	}
	t.Logf("recording %s replayed %d bytes, as kubectl showed them", id, len(played))
}
