package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"sync"
	"time"
)

// PortForward starts cmd, a `kubectl port-forward --address=127.0.0.1 …
// :REMOTE` prepared by the caller, waits up to timeout for its
// "Forwarding from 127.0.0.1:PORT" line, and returns PORT and a stop
// function that kills and reaps it (and returns its stderr, for a failing
// test's message); stop may be called more than once.
func PortForward(cmd *exec.Cmd, remote string, timeout time.Duration) (port string, stop func() string, err error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	var once sync.Once
	stop = func() string {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		return stderr.String()
	}
	portc := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> ` + regexp.QuoteMeta(remote))
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case portc <- m[1]:
				default:
				}
			}
		}
		close(portc)
	}()
	select {
	case p, ok := <-portc:
		if !ok {
			return "", nil, fmt.Errorf("testenv: port-forward exited: %s", stop())
		}
		return p, stop, nil
	case <-time.After(timeout):
		return "", nil, fmt.Errorf("testenv: port-forward did not start: %s", stop())
	}
}
