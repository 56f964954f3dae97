package kafkatest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// childEnv carries a Config to a test binary started as a broker process.
const childEnv = "GATEHOUSE_KAFKATEST_BROKER"

// ServeIfChild makes the test binary a broker process when StartProcess
// started it: it serves a cluster, writes its brokers on stdout, and
// exits when stdin closes. A package whose tests call StartProcess calls
// it first thing in TestMain; otherwise it returns at once.
func ServeIfChild() {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return
	}
	var cfg Config
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "kafkatest:", err)
		os.Exit(2)
	}
	k, err := Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kafkatest:", err)
		os.Exit(1)
	}
	fmt.Println(strings.Join(k.Brokers, ","))
	io.Copy(io.Discard, os.Stdin) // until the parent closes it, or dies
	k.Close()
	os.Exit(0)
}

// Process is a Kafka cluster in a process of its own (the test binary,
// run again): for measurements in which the broker must not share the
// process, and so its CPU accounting, with what it serves.
type Process struct {
	Brokers []string

	cmd       *exec.Cmd
	stdin     io.WriteCloser
	read      chan struct{} // closed when the reader of its stdout is done
	closeOnce sync.Once
}

// StartProcess starts a broker process; the test binary's TestMain must
// call ServeIfChild.
func StartProcess(cfg Config) (*Process, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	spec, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("kafkatest: %w", err)
	}
	p := &Process{cmd: cmd, stdin: stdin, read: make(chan struct{})}
	line := make(chan string, 1)
	go func() {
		defer close(p.read)
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		if l == "" {
			p.Close()
			return nil, errors.New("kafkatest: the broker process did not start")
		}
		p.Brokers = strings.Split(l, ",")
		return p, nil
	case <-time.After(30 * time.Second):
		p.Close()
		return nil, errors.New("kafkatest: the broker process did not start within 30s")
	}
}

// Close stops the broker process. It is idempotent.
func (p *Process) Close() error {
	p.closeOnce.Do(func() {
		p.stdin.Close()
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-done
		}
		<-p.read // the pipe closed with the process
	})
	return nil
}
