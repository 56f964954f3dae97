package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"time"
)

// TB is the part of testing.TB the helpers use. It is an interface of its
// own so that this package does not import package testing: gatehouse dev
// links it (internal/devsetup), and the release binary must not link
// testing.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// PostgresT starts PostgreSQL for one test and stops it at cleanup.
func PostgresT(t TB) *Postgres {
	t.Helper()
	pg, err := StartPostgres(context.Background(), DefaultPostgresConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return pg
}

// KratosT starts Kratos for one test and stops it at cleanup.
func KratosT(t TB) *Kratos {
	t.Helper()
	kr, err := StartKratos(context.Background(), DefaultKratosConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kr.Close() })
	return kr
}

// KubeT starts a control plane for one test and stops it at cleanup. A
// package whose tests share one cluster starts it in TestMain with
// StartKube instead.
func KubeT(t TB, cfg KubeConfig) *Kube {
	t.Helper()
	k, err := StartKube(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// KubectlLines starts kubectl with kubeconfig (the admin's when empty) and
// returns its stdout line by line, for streaming commands (get -w, logs -f,
// attach, port-forward). The command is killed and reaped at cleanup, and
// its stderr logged if the test failed.
func (k *Kube) KubectlLines(t TB, kubeconfig string, args ...string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd, err := k.Kubectl(ctx, kubeconfig, args...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("kubectl %v stderr: %s", args, stderr.String())
		}
	})
	return lines
}

// WaitForLine fails the test unless a line containing want arrives on lines
// before the timeout.
func WaitForLine(t TB, lines <-chan string, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended before %q", want)
			}
			if strings.Contains(l, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no line with %q within %s", want, timeout)
		}
	}
}

// Eventually calls cond every 20 ms until it returns nil, and fails the test
// with cond's last error if timeout passes first. It is the one poller of
// the tests: they wait for conditions, never for wall-clock sleeps.
func Eventually(t TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Cond adapts a boolean condition to Eventually, naming what it waits for.
func Cond(what string, ok func() bool) func() error {
	return func() error {
		if ok() {
			return nil
		}
		return errors.New(what)
	}
}

// SyncBuffer is a bytes.Buffer safe for one writer and concurrent
// readers: a command's output that a test watches while it runs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
