package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
)

// kwokConfig makes every fake pod stream: logs and attach read PodLogFile
// (CRI log format, followed), exec runs the command on this machine in a
// scratch directory, and port-forward on any port reaches the echo server.
const kwokConfig = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: testenv-logs
spec:
  logs:
  - logsFile: {{LOGS}}
    follow: true
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata:
  name: testenv-attach
spec:
  attaches:
  - logsFile: {{LOGS}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: testenv-exec
spec:
  execs:
  - local:
      workDir: {{EXECDIR}}
      envs:
      - name: GATEHOUSE_TESTENV
        value: "1"
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata:
  name: testenv-port-forward
spec:
  forwards:
  - target:
      address: 127.0.0.1
      port: {{ECHOPORT}}
`

func (k *Kube) startKwok(ctx context.Context, bin string, port, nodes int, cs kubernetes.Interface) error {
	echo, err := startEcho()
	if err != nil {
		return err
	}
	k.echo = echo
	k.EchoAddr = echo.Addr()
	k.PodLogFile = filepath.Join(k.Dir, "pod.log")
	execDir := filepath.Join(k.Dir, "exec")
	if err := os.MkdirAll(execDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(k.PodLogFile, nil, 0o600); err != nil {
		return err
	}
	if err := k.AppendPodLog(PodLogBanner); err != nil {
		return err
	}
	_, echoPort, _ := net.SplitHostPort(k.EchoAddr)
	conf := strings.NewReplacer("{{LOGS}}", k.PodLogFile, "{{EXECDIR}}", execDir, "{{ECHOPORT}}", echoPort).Replace(kwokConfig)
	// The lifecycle stages (node ready and heartbeat, pod running, complete,
	// delete) come from the kwok module the binary was built from.
	stagesPath, err := Tool("kwok-stages.yaml")
	if err != nil {
		return err
	}
	stages, err := os.ReadFile(stagesPath)
	if err != nil {
		return err
	}
	conf += "\n" + string(stages)
	confPath := filepath.Join(k.Dir, "kwok.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return err
	}
	k.log.Info("starting kwok", "nodes", nodes)
	kw, err := k.start("kwok", bin, []string{
		"--kubeconfig=" + k.AdminKubeconfig,
		"--config=" + confPath,
		"--manage-all-nodes=true",
		"--cidr=10.244.0.1/16",
		// Nodes renew leases like kubelets, so the node lifecycle controller
		// keeps them Ready however long the bed runs.
		"--node-lease-duration-seconds=40",
		// The API server reaches the fake kubelets (logs, exec, port-forward)
		// at NodeIP:NodePort, which is kwok's own server.
		"--server-address=" + hostPort(port),
		"--node-ip=127.0.0.1",
		// Nodes need a Hostname address as well as the InternalIP: kwok's
		// node-initialize stage rewrites an incomplete address list, and
		// would drop the InternalIP if a node were ever re-initialized.
		"--node-name=localhost",
		"--node-port=" + strconv.Itoa(port),
	}, procOptions{})
	if err != nil {
		return err
	}
	if err := k.createNodes(ctx, cs, nodes); err != nil {
		return err
	}
	return kw.waitReady(ctx, nodesReady(cs, k.Nodes))
}

// AppendPodLog appends a line to the log that every fake container shows,
// in the CRI log format kwok reads.
func (k *Kube) AppendPodLog(line string) error {
	if k.PodLogFile == "" {
		return errors.New("testenv: no kwok nodes, so no pod log")
	}
	k.podLogMu.Lock()
	defer k.podLogMu.Unlock()
	f, err := os.OpenFile(k.PodLogFile, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s stdout F %s\n", time.Now().UTC().Format(time.RFC3339Nano), line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// echoServer writes back every byte it reads, one goroutine per connection.
type echoServer struct {
	l      net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]struct{}
	closed bool
	once   sync.Once
}

func startEcho() (*echoServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &echoServer{l: l, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.serve()
	return e, nil
}

func (e *echoServer) Addr() string { return e.l.Addr().String() }

func (e *echoServer) serve() {
	defer e.wg.Done()
	for {
		c, err := e.l.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		go func() {
			defer e.wg.Done()
			_, _ = io.Copy(c, c)
			c.Close()
			e.mu.Lock()
			delete(e.conns, c)
			e.mu.Unlock()
		}()
	}
}

// Close stops accepting, closes open connections and waits for their
// goroutines.
func (e *echoServer) Close() error {
	e.once.Do(func() {
		e.l.Close()
		e.mu.Lock()
		e.closed = true
		for c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return nil
}
