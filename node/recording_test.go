package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/record"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/internal/testenv/term"
	"github.com/gatehouse-dev/gatehouse/node"
)

// recordingPolicy is a fixed recording policy: roles by cluster.
type recordingPolicy struct {
	mu    sync.Mutex
	roles map[string][]string
	err   error
}

func (p *recordingPolicy) RecordRoles(_ context.Context, cluster string) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.roles[cluster], p.err
}

func (p *recordingPolicy) set(roles []string, err error) {
	p.mu.Lock()
	p.roles, p.err = map[string][]string{clusterID: roles}, err
	p.mu.Unlock()
}

// recordingOf waits for the recording the close event of a session
// names, and returns it whole, checking its chunks' order.
func recordingOf(t *testing.T, b *bed, requestID string) (string, string) {
	t.Helper()
	var id string
	var chunks []*audit.Chunk
	waitFor(t, 30*time.Second, func() bool {
		id, chunks = "", nil
		for _, ev := range b.audit.Events() {
			if ev.RequestID == requestID && ev.Phase == audit.PhaseClose {
				id = ev.Recording
			}
		}
		if id == "" {
			return false
		}
		for _, ev := range b.audit.Events() {
			if ev.Kind == audit.KindSession && ev.Recording == id {
				if ev.Cluster != clusterID || ev.RequestID != requestID || ev.Chunk == nil {
					t.Fatalf("chunk event %+v", ev)
				}
				chunks = append(chunks, ev.Chunk)
			}
		}
		return len(chunks) > 0 && chunks[len(chunks)-1].Final
	})
	var all strings.Builder
	for i, c := range chunks {
		if c.Seq != i {
			t.Fatalf("chunk %d has seq %d", i, c.Seq)
		}
		all.WriteString(c.Data)
	}
	return id, all.String()
}

// sessionRequest returns the request id of the last exec or attach
// session's open event.
func sessionRequest(t *testing.T, b *bed) (requestID, recording string) {
	t.Helper()
	for _, ev := range b.audit.Events() {
		if (ev.Subresource == "exec" || ev.Subresource == "attach") && ev.Phase == audit.PhaseOpen {
			requestID, recording = ev.RequestID, ev.Recording
		}
	}
	if requestID == "" {
		t.Fatal("no session in the audit log")
	}
	return requestID, recording
}

// chunkFailingSink fails the writes of recordings' chunks while fail is
// set, as a full spool would.
type chunkFailingSink struct {
	audit.Sink
	fail atomic.Bool
}

var errSpoolFull = errors.New("audit: the spool is full (test)")

func (s *chunkFailingSink) Write(ctx context.Context, ev *audit.Event) error {
	if ev.Chunk != nil && s.fail.Load() {
		return errSpoolFull
	}
	return s.Sink.Write(ctx, ev)
}

func TestExecSessionRecordedAndReplayed(t *testing.T) {
	policy := &recordingPolicy{}
	policy.set([]string{record.Everyone}, nil)
	sink := &chunkFailingSink{}
	b := startBedWith(t, false, 0, func(c *node.Config) {
		c.Recording = policy
		sink.Sink = c.Audit
		c.Audit = sink
	})
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	kc := b.kubeconfig("ada", time.Hour)
	pod := runningPod(t, b, "recorded")
	ctx := context.Background()

	for _, spdy := range []bool{false, true} {
		t.Run(fmt.Sprintf("exec -it, spdy=%v", spdy), func(t *testing.T) {
			// Output that a recorder could cut wrongly: multi-byte
			// characters, escape sequences, a long line.
			// It ends on end-of-file (Ctrl-D, which the terminal does
			// not echo) once its last output has been shown. Output
			// written as a session ends races its teardown outside the
			// gateway: on a loaded machine, kubectl lost the echo of a
			// last line in 36 of 150 sessions straight to the API server
			// and in 32 of 150 through the gateway (which had passed and
			// recorded it). The test is about the recording, not that race.
			script := `printf 'héllo wörld € \033[1mbold\033[0m\n'; read line; echo "got:$line"; head -c 70000 /dev/zero | tr '\0' 'x'; echo; read line; echo "got:$line"; read line || exit 0`
			cmd, err := b.kube.Kubectl(ctx, kc, "-n", "recorded", "exec", "-it", pod, "--", "sh", "-c", script)
			if err != nil {
				t.Fatal(err)
			}
			if spdy {
				cmd.Env = append(cmd.Env, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false")
			}
			tm := term.Start(t, cmd, 132, 43)
			tm.WaitShown(t, "bold", 60*time.Second)
			tm.Type(t, "pïng\r")
			waitFor(t, 60*time.Second, func() bool { return strings.Count(tm.Shown(), "x") >= 70000 })
			tm.Type(t, "bye\r")
			tm.WaitShown(t, "got:bye", 60*time.Second)
			tm.Type(t, "\x04")
			if err := tm.Wait(60 * time.Second); err != nil {
				t.Fatalf("exec: %v\n%s", err, tm.Shown())
			}
			seen := tm.Shown()

			requestID, id := sessionRequest(t, b)
			if id == "" {
				t.Fatal("the open event names no recording")
			}
			closeID, cast := recordingOf(t, b, requestID)
			if closeID != id {
				t.Fatalf("open event names recording %s, close event %s", id, closeID)
			}
			hdr, evs, err := record.Parse(strings.NewReader(cast))
			if err != nil {
				t.Fatal(err)
			}
			if !hdr.TTY || !strings.Contains(hdr.Title, "ada on dev: exec recorded/"+pod) {
				t.Fatalf("header %+v", hdr)
			}
			// The terminal's size: in the header when the client sent it
			// before any output, else as the first resize event (over SPDY
			// the size stream may lag the first output).
			size := fmt.Sprintf("%dx%d", hdr.Width, hdr.Height)
			for _, ev := range evs {
				if size != "132x43" && ev.Code == record.Resize {
					size = ev.Data
				}
			}
			if size != "132x43" {
				t.Fatalf("the terminal's size was not recorded: header %+v", hdr)
			}
			in, output := eventData(evs, record.Input), eventData(evs, record.Output)
			if in != "pïng\rbye\r\x04" {
				t.Fatalf("recorded input %q", in)
			}
			if output != seen {
				t.Fatalf("recorded output differs from what kubectl showed:\nrecorded %d bytes %q\nshown    %d bytes %q", len(output), trim(output), len(seen), trim(seen))
			}
			// Replayed, it is what the person saw, byte for byte.
			var replay strings.Builder
			if err := record.Play(ctx, &replay, evs, record.PlayOptions{Sleep: func(context.Context, time.Duration) error { return nil }}); err != nil {
				t.Fatal(err)
			}
			if replay.String() != seen {
				t.Fatal("the replay differs from what kubectl showed")
			}
			t.Logf("recorded %d events, %d bytes of asciicast; %d bytes shown", len(evs), len(cast), len(seen))
		})
	}

	t.Run("exec -i without a terminal", func(t *testing.T) {
		in := "first line\nnot this one\n"
		r := b.kubectl(kc, in, nil, "-n", "recorded", "exec", "-i", pod, "--", "head", "-n", "1")
		out := r.stdout
		if r.err != nil || out != "first line\n" {
			t.Fatalf("exec -i: %v %q %s", r.err, out, r.stderr)
		}
		requestID, _ := sessionRequest(t, b)
		_, cast := recordingOf(t, b, requestID)
		hdr, evs, err := record.Parse(strings.NewReader(cast))
		if err != nil {
			t.Fatal(err)
		}
		gotIn, gotOut := eventData(evs, record.Input), eventData(evs, record.Output)
		if hdr.TTY || gotOut != out || !strings.HasPrefix(in, gotIn) || gotIn == "" {
			t.Fatalf("tty %v, input %q, output %q", hdr.TTY, gotIn, gotOut)
		}
	})

	t.Run("attach", func(t *testing.T) {
		marker := "attached-and-recorded"
		t.Run("session", func(t *testing.T) { // its cleanup ends kubectl
			lines := b.kube.KubectlLines(t, kc, "-n", "recorded", "attach", pod, "-c", "app")
			deadline := time.After(60 * time.Second)
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case l := <-lines:
					if strings.Contains(l, marker) {
						return
					}
				case <-tick.C:
					b.kube.AppendPodLog(marker)
				case <-deadline:
					t.Fatal("attach showed nothing")
				}
			}
		})
		requestID, id := sessionRequest(t, b)
		if id == "" {
			t.Fatal("the attach session names no recording")
		}
		if _, cast := recordingOf(t, b, requestID); !strings.Contains(cast, marker) {
			t.Fatalf("the attach recording lacks what kubectl showed: %q", trim(cast))
		}
	})

	t.Run("the policy chooses", func(t *testing.T) {
		b.grants.Set("bob", clusterID, grant.Grant{Role: "edit", Namespace: "recorded"})
		bob := b.kubeconfig("bob", time.Hour)
		policy.set([]string{"cluster-admin"}, nil) // admins only
		if out := b.ok(bob, "-n", "recorded", "exec", pod, "--", "echo", "unrecorded"); out != "unrecorded\n" {
			t.Fatalf("exec: %q", out)
		}
		if _, id := sessionRequest(t, b); id != "" {
			t.Fatal("bob's session was recorded, though the policy records admins only")
		}
		if out := b.ok(kc, "-n", "recorded", "exec", pod, "--", "echo", "recorded"); out != "recorded\n" {
			t.Fatalf("exec: %q", out)
		}
		requestID, id := sessionRequest(t, b)
		if id == "" {
			t.Fatal("ada's session was not recorded")
		}
		if _, cast := recordingOf(t, b, requestID); !strings.Contains(cast, `"recorded\n"`) {
			t.Fatalf("recording %q", cast)
		}
		policy.set([]string{"edit"}, nil)
		b.ok(bob, "-n", "recorded", "exec", pod, "--", "echo", "now recorded")
		if _, id := sessionRequest(t, b); id == "" {
			t.Fatal("bob's session was not recorded, though the policy records edit")
		}
		policy.set(nil, nil)
		b.ok(kc, "-n", "recorded", "exec", pod, "--", "echo", "off")
		if _, id := sessionRequest(t, b); id != "" {
			t.Fatal("a session was recorded with recording off")
		}
	})

	t.Run("the node proxy is refused while recorded", func(t *testing.T) {
		policy.set([]string{record.Everyone}, nil)
		cs, _ := b.kube.Clientset()
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(nodes.Items) == 0 {
			t.Fatal(nodes, err)
		}
		b.refused(kc, "the node proxy would run commands past the recorder", "get", "--raw",
			"/api/v1/nodes/"+nodes.Items[0].Name+"/proxy/exec/recorded/"+pod+"/app?command=id&output=1")
	})

	t.Run("a recording the audit log cannot take ends the session", func(t *testing.T) {
		policy.set([]string{record.Everyone}, nil)
		defer sink.fail.Store(false)
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		cmd, err := b.kube.Kubectl(cctx, kc, "-n", "recorded", "exec", "-i", pod, "--", "cat")
		if err != nil {
			t.Fatal(err)
		}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut testenv.SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		io.WriteString(stdin, "recorded line\n")
		waitFor(t, 60*time.Second, func() bool { return strings.Contains(out.String(), "recorded line") })
		// Its first chunk reaches the audit log; then the log is full.
		requestID, _ := sessionRequest(t, b)
		waitFor(t, 60*time.Second, func() bool {
			for _, ev := range b.audit.Events() {
				if ev.Chunk != nil && ev.RequestID == requestID {
					return true
				}
			}
			return false
		})
		sink.fail.Store(true)
		io.WriteString(stdin, "unrecorded line\n")
		select {
		case err := <-exited:
			t.Logf("kubectl ended: %v; stderr %q", err, errOut.String())
		case <-time.After(60 * time.Second):
			t.Fatal("the session goes on, though the audit log cannot take its recording")
		}
		stdin.Close()
		for _, ev := range b.audit.Events() {
			if ev.Chunk != nil && ev.RequestID == requestID && strings.Contains(ev.Chunk.Data, "unrecorded") {
				t.Fatal("a chunk the sink refused is in the audit log")
			}
		}
	})

	t.Run("an unknown policy refuses the session", func(t *testing.T) {
		policy.set(nil, errors.New("store down"))
		defer policy.set([]string{record.Everyone}, nil)
		b.refused(kc, "recording policy", "-n", "recorded", "exec", pod, "--", "echo", "hi")
		// Other requests go on.
		b.ok(kc, "-n", "recorded", "get", "pods")
	})
}

// eventData joins the data of a recording's events of one code.
func eventData(evs []record.Event, code string) string {
	var b strings.Builder
	for _, ev := range evs {
		if ev.Code == code {
			b.WriteString(ev.Data)
		}
	}
	return b.String()
}

func trim(s string) string {
	if len(s) > 300 {
		return s[:150] + "..." + s[len(s)-150:]
	}
	return s
}
