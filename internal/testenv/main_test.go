package testenv_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

// The Kubernetes tests share one control plane: starting one takes ~15 s.
var shared struct {
	once sync.Once
	kube *testenv.Kube
	err  error
}

func sharedKube(t *testing.T) *testenv.Kube {
	t.Helper()
	shared.once.Do(func() {
		cfg := testenv.DefaultKubeConfig()
		if testing.Verbose() {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
		shared.kube, shared.err = testenv.StartKube(context.Background(), cfg)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.kube
}

func TestMain(m *testing.M) {
	code := m.Run()
	if k := shared.kube; k != nil {
		pids := k.Pids()
		k.Close()
		// No component of the control plane may outlive Close.
		for _, pid := range pids {
			if processAlive(pid) {
				fmt.Fprintf(os.Stderr, "testenv: process %d survived Kube.Close\n", pid)
				code = 1
			}
		}
	}
	if code == 0 {
		if err := goleak.Find(leakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func leakOptions() []goleak.Option {
	return []goleak.Option{
		// client-go keeps pooled HTTP connections in a process-wide
		// transport cache, and klog flushes from a daemon started at init.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"),
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3 is the state; the command (field 2) is in parentheses.
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] != 'Z'
		}
	}
	return true
}
