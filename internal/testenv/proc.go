package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrExited is returned while waiting for a component that exited before it
// became ready.
var ErrExited = errors.New("testenv: process exited")

// process is one supervised child process. Its output goes to a log file so
// that a failing start can report the tail of it.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	stopSig syscall.Signal

	done    chan struct{} // closed when the process has been reaped
	waitErr error         // set before done is closed

	closeOnce sync.Once
}

type procOptions struct {
	dir     string
	env     []string
	stopSig syscall.Signal // first signal on Close; SIGTERM when zero
	cred    *syscall.Credential
}

// startProcess starts bin with args, output appended to logPath. The child is
// put in its own process group (so Close can reach its children too) and gets
// SIGKILL if this process dies, so an aborted test run leaves nothing behind.
func startProcess(name, logPath, bin string, args []string, o procOptions) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testenv: %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = o.dir
	cmd.Env = append(os.Environ(), o.env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: o.cred,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testenv: start %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, stopSig: o.stopSig, done: make(chan struct{})}
	if p.stopSig == 0 {
		p.stopSig = syscall.SIGTERM
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the child's process id.
func (p *process) Pid() int { return p.cmd.Process.Pid }

// Close stops the process: the stop signal to its group, then SIGKILL to the
// group after a grace period. It returns after the process has been reaped
// and is safe to call more than once.
func (p *process) Close() error {
	p.closeOnce.Do(func() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, p.stopSig)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		// Anything the leader left in its group goes too.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
	return nil
}

// logTail returns the last n bytes of the process's log.
func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// waitReady polls ready every interval until it returns nil, the process
// exits, or ctx ends. Errors carry the tail of the process log.
func (p *process) waitReady(ctx context.Context, ready func(context.Context) error) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w: %s (%v); log %s:\n%s", ErrExited, p.name, p.waitErr, p.logPath, p.logTail(4096))
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s not ready: %v (last: %v); log %s:\n%s", p.name, ctx.Err(), last, p.logPath, p.logTail(4096))
		case <-t.C:
		}
	}
}

// listenOutsideEphemeral listens on host at a random port below the
// kernel's ephemeral range. A port picked by the kernel (":0") comes from
// that range, which outgoing connections draw from too: a test that picks
// a port, closes it and hands it to a process could see it taken by some
// connection in between ("address already in use": seen when a load test
// was opening hundreds of connections). Below the range only listeners
// compete, and among test processes each picks from blocks of ports it has
// claimed (claimPortBlock), so that two packages' tests running at once
// never hand out the same port.
func listenOutsideEphemeral(host string) (net.Listener, error) {
	var err error
	for attempt := range 100 {
		base, cerr := portBlockFor(attempt)
		if cerr != nil {
			return nil, cerr
		}
		port := base + mrand.IntN(portBlockSize)
		if !handOut(port) {
			continue
		}
		var l net.Listener
		if l, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port))); err == nil {
			return l, nil
		}
	}
	if err == nil {
		err = errors.New("the blocks claimed are full")
	}
	return nil, fmt.Errorf("testenv: free port: %w", err)
}

// handedOut are the ports this process has handed out: a port picked for
// a process that has not bound it yet is free to the kernel, and must not
// be picked again (five nodes' twenty ports met twice in about one run of
// a hundred).
var (
	handedOutMu sync.Mutex
	handedOut   = map[int]bool{}
)

// handOut records port as handed out; false if it was already.
func handOut(port int) bool {
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	if handedOut[port] {
		return false
	}
	handedOut[port] = true
	return true
}

// portBlockSize is how many ports a process claims at a time.
const portBlockSize = 256

// The blocks of ports this process has claimed, and the lock files that
// hold them (never closed: the claim ends with the process).
var (
	portBlocksMu sync.Mutex
	portBlocks   []int
	portLocks    []*os.File
)

// portBlockFor returns the first port of a block this process has
// claimed, at random among its blocks; it claims a block when it holds
// none, and another every twenty attempts (its blocks are filling up).
//
// The handedOut map keeps one process from handing a port out twice, but
// go test runs packages in parallel processes, and a port one picked and
// closed for a tool that binds it seconds later could be picked by the
// other meanwhile (kube-scheduler failed so in CI). A claim is an flock on
// a file per block in the temporary directory, which the kernel drops when
// the process ends, however it ends.
func portBlockFor(attempt int) (int, error) {
	portBlocksMu.Lock()
	defer portBlocksMu.Unlock()
	if len(portBlocks) == 0 || (attempt > 0 && attempt%20 == 0) {
		base, f, err := claimPortBlock(portBlocks)
		if err != nil {
			if len(portBlocks) == 0 {
				return 0, err
			}
		} else {
			portBlocks = append(portBlocks, base)
			portLocks = append(portLocks, f)
		}
	}
	return portBlocks[mrand.IntN(len(portBlocks))], nil
}

// claimPortBlock claims a block of ports below the ephemeral range that no
// other process holds, and that is not among held.
func claimPortBlock(held []int) (int, *os.File, error) {
	dir := filepath.Join(os.TempDir(), "gatehouse-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, nil, fmt.Errorf("testenv: port claims: %w", err)
	}
	n := (ephemeralLow() - 10000) / portBlockSize
	for _, i := range mrand.Perm(n) {
		base := 10000 + i*portBlockSize
		if slices.Contains(held, base) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(base)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return 0, nil, fmt.Errorf("testenv: port claims: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		return base, f, nil
	}
	return 0, nil, errors.New("testenv: every block of test ports is claimed by other processes")
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// when it cannot be read; at least 20000).
func ephemeralLow() int {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				lo = v
			}
		}
	}
	return max(lo, 20000)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := listenOutsideEphemeral("127.0.0.1")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr returns host:port on host (a loopback address) whose port was
// free a moment ago for TCP and for UDP alike: what a memberlist address
// needs, and enough for any listener.
func FreeAddr(host string) (string, error) {
	for range 20 {
		l, err := listenOutsideEphemeral(host)
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr, nil
		}
	}
	return "", fmt.Errorf("testenv: no port free for TCP and UDP on %s", host)
}

func freePorts(n int) ([]int, error) {
	// Hold every listener until all are chosen so the ports differ.
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := listenOutsideEphemeral("127.0.0.1")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// BinDir is where the test bed's tools live: $GATEHOUSE_BIN, or bin/ at the
// root of the Gatehouse module containing the working directory.
func BinDir() (string, error) {
	if d := os.Getenv("GATEHOUSE_BIN"); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/gatehouse-dev/gatehouse\n")) {
			return filepath.Join(dir, "bin"), nil
		}
		if filepath.Dir(dir) == dir {
			return "", errors.New("testenv: cannot find the gatehouse module root; set GATEHOUSE_BIN")
		}
	}
}

// ErrToolMissing is returned when a tool binary has not been built.
var ErrToolMissing = errors.New("testenv: tool not built (run `make tools`)")

// Tool returns the path of a built tool such as "kube-apiserver" or "kubectl".
func Tool(name string) (string, error) {
	dir, err := BinDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: %s", ErrToolMissing, p)
	}
	return p, nil
}
