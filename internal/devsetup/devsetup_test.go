package devsetup_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/control/apiclient"
	"github.com/gatehouse-dev/gatehouse/internal/devsetup"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func TestMain(m *testing.M) {
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
	cfg.Addr = "127.0.0.1:0"
	var out bytes.Buffer
	cfg.Out = &out
	ctx := context.Background()
	env, err := devsetup.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if !strings.Contains(out.String(), "kubectl get pods -A") {
		t.Fatalf("no instructions printed:\n%s", out.String())
	}
	kubectl, err := testenv.Tool("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cmd := exec.Command(kubectl, "get", "pods", "-A", "--no-headers")
		cmd.Env = append(os.Environ(), "KUBECONFIG="+env.AdminKubeconfig, "HOME="+cfg.StateDir)
		got, err := cmd.CombinedOutput()
		if err == nil && strings.Count(string(got), "Running") >= 3 && strings.Contains(string(got), "demo") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl get pods -A: %v\n%s", err, got)
		}
		time.Sleep(200 * time.Millisecond)
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
	audit, err := os.ReadFile(cfg.StateDir + "/audit.jsonl")
	if err != nil || env.AdminID == "" || !bytes.Contains(audit, []byte(`"user":"`+env.AdminID+`"`)) {
		t.Fatalf("audit log: %v %q", err, audit)
	}
}
