// Package term runs a command on a pseudo-terminal for a test, as a person
// runs `kubectl exec -it` at a terminal, and keeps what the terminal
// shows. It is a package of its own so that only tests link creack/pty
// (package testenv is linked by gatehouse dev).
package term

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/creack/pty"

	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

// A Terminal is a command running on a pseudo-terminal.
type Terminal struct {
	cmd    *exec.Cmd
	f      *os.File // the terminal's master side
	shown  testenv.SyncBuffer
	read   chan struct{} // closed when the output ends (EIO once the command exits)
	exited chan struct{} // closed when cmd.Wait has returned, with err
	err    error
}

// Start starts cmd on a terminal of cols x rows (the pty's default when
// zero). The test's cleanup kills the command if it still runs, closes
// the terminal, and waits for both.
func Start(t testenv.TB, cmd *exec.Cmd, cols, rows uint16) *Terminal {
	t.Helper()
	var size *pty.Winsize
	if cols > 0 && rows > 0 {
		size = &pty.Winsize{Cols: cols, Rows: rows}
	}
	f, err := pty.StartWithSize(cmd, size)
	if err != nil {
		t.Fatal(err)
	}
	tm := &Terminal{cmd: cmd, f: f, read: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(tm.read)
		io.Copy(&tm.shown, f)
	}()
	go func() {
		defer close(tm.exited)
		tm.err = cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() // ErrProcessDone once it has exited
		<-tm.exited
		f.Close()
		<-tm.read
	})
	return tm
}

// Type writes s to the terminal, as typed.
func (tm *Terminal) Type(t testenv.TB, s string) {
	t.Helper()
	if _, err := io.WriteString(tm.f, s); err != nil {
		t.Fatal(err)
	}
}

// Shown returns what the terminal has shown so far.
func (tm *Terminal) Shown() string { return tm.shown.String() }

// WaitShown waits until the terminal has shown text.
func (tm *Terminal) WaitShown(t testenv.TB, text string, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, func() error {
		if strings.Contains(tm.Shown(), text) {
			return nil
		}
		shown := tm.Shown()
		return fmt.Errorf("the terminal has not shown %q; it shows %q", text, shown[max(0, len(shown)-300):])
	})
}

// Wait waits for the command to exit and for all it showed to be read,
// and returns how it exited. Past timeout it kills the command and
// returns an error saying so.
func (tm *Terminal) Wait(timeout time.Duration) error {
	select {
	case <-tm.exited:
		<-tm.read
		return tm.err
	case <-time.After(timeout):
		tm.cmd.Process.Kill()
		<-tm.exited
		<-tm.read
		return fmt.Errorf("term: %s did not finish within %s", tm.cmd.Path, timeout)
	}
}
