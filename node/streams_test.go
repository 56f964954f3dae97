package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/grant"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
	"github.com/gatehouse-dev/gatehouse/internal/testenv/term"
)

func TestStreamingThroughGateway(t *testing.T) {
	b := newBed(t)
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	kc := b.kubeconfig("ada", time.Hour)
	pod := runningPod(t, b, "streams")
	cs, _ := b.kube.Clientset()
	ctx := context.Background()

	t.Run("get -w", func(t *testing.T) {
		lines := b.kube.KubectlLines(t, kc, "-n", "streams", "get", "configmaps", "-w", "--output-watch-events", "-o", "name")
		testenv.WaitForLine(t, lines, "kube-root-ca.crt", time.Minute) // the initial list
		name := "watched-" + strings.ToLower(rand.Text()[:8])
		if _, err := cs.CoreV1().ConfigMaps("streams").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitForLine(t, lines, "configmap/"+name, time.Minute)
		if err := cs.CoreV1().ConfigMaps("streams").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitForLine(t, lines, "configmap/"+name, time.Minute)
	})

	t.Run("logs -f", func(t *testing.T) {
		lines := b.kube.KubectlLines(t, kc, "-n", "streams", "logs", "-f", pod)
		testenv.WaitForLine(t, lines, "fake container started", time.Minute)
		marker := "followed-" + rand.Text()
		if err := b.kube.AppendPodLog(marker); err != nil {
			t.Fatal(err)
		}
		testenv.WaitForLine(t, lines, marker, time.Minute)
	})

	t.Run("attach", func(t *testing.T) {
		lines := b.kube.KubectlLines(t, kc, "-n", "streams", "attach", pod, "-c", "app")
		marker := "attached-" + rand.Text()
		got := make(chan struct{})
		go func() {
			defer close(got)
			for l := range lines {
				if strings.Contains(l, marker) {
					return
				}
			}
		}()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case <-got:
				return
			case <-tick.C:
				b.kube.AppendPodLog(marker)
			case <-deadline:
				t.Fatal("attach showed nothing")
			}
		}
	})

	for _, spdy := range []bool{false, true} {
		t.Run(fmt.Sprintf("exec with a TTY, spdy=%v", spdy), func(t *testing.T) {
			// The command waits for a line before answering and for another
			// before exiting, so neither the stream's setup nor its teardown
			// can race the answer.
			cmd, err := b.kube.Kubectl(ctx, kc, "-n", "streams", "exec", "-it", pod, "--", "sh", "-c", `read line; if [ -t 0 ]; then echo "tty:$line:yes"; else echo "tty:$line:no"; fi; read line`)
			if err != nil {
				t.Fatal(err)
			}
			if spdy {
				cmd.Env = append(cmd.Env, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false")
			}
			tm := term.Start(t, cmd, 0, 0)
			tm.Type(t, "ping\r")
			tm.WaitShown(t, "tty:ping:", 60*time.Second)
			tm.Type(t, "bye\r")
			if err := tm.Wait(60 * time.Second); err != nil {
				t.Fatalf("exec -it: %v\n%s", err, tm.Shown())
			}
			if !strings.Contains(tm.Shown(), "tty:ping:yes") {
				t.Fatalf("exec -it: %q", tm.Shown())
			}
		})
	}

	t.Run("cp into the pod", func(t *testing.T) {
		// kwok runs exec (and so cp's tar) on this machine: the pod's file
		// system is the host's. kwok's exec never closes the command's
		// stdin, so the pod-side tar never exits and kubectl waits for it
		// (without the gateway too). tar writes what it has read in whole
		// 10 KiB records, so the file is sized to make the archive (header,
		// data, end blocks) a whole number of records: then it is written
		// out in full, the test checks it and stops kubectl.
		const size = 300*10240 - 3*512
		src := filepath.Join(t.TempDir(), "upload.bin")
		data := make([]byte, size)
		rand.Read(data)
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(t.TempDir(), "upload.bin")
		cctx, cancel := context.WithCancel(ctx)
		cmd, err := b.kube.Kubectl(cctx, kc, "-n", "streams", "cp", src, pod+":"+dest)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		var stderr testenv.SyncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		defer func() {
			cancel()
			cmd.Wait()
		}()
		deadline := time.Now().Add(60 * time.Second)
		for {
			got, err := os.ReadFile(dest)
			if err == nil && bytes.Equal(got, data) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("upload did not arrive whole (%d of %d bytes): %v %s", len(got), len(data), err, stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("cp out of the pod", func(t *testing.T) {
		// kwok runs exec (and so cp's tar) on this machine: the pod's file
		// system is the host's.
		src := filepath.Join(t.TempDir(), "payload.bin")
		data := make([]byte, 3<<20)
		rand.Read(data)
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		back := filepath.Join(t.TempDir(), "out.bin")
		b.ok(kc, "-n", "streams", "cp", pod+":"+src, back)
		got, err := os.ReadFile(back)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("cp out of the pod: %v, %d bytes", err, len(got))
		}
	})

	t.Run("port-forward 100 MB each way", func(t *testing.T) {
		portForward(t, b, kc, "streams", pod, 100<<20)
	})

	// Long-running requests are audited when they open and when they close
	// (a close is written once the gateway sees the client gone).
	var opens, closes int
	count := func() bool {
		opens, closes = 0, 0
		for _, ev := range b.audit.Events() {
			if ev.Verb == "watch" || ev.Subresource == "log" || ev.Subresource == "exec" || ev.Subresource == "portforward" || ev.Subresource == "attach" {
				switch ev.Phase {
				case audit.PhaseOpen:
					opens++
				case audit.PhaseClose:
					closes++
				}
			}
		}
		return opens > 0 && opens == closes
	}
	deadline := time.Now().Add(30 * time.Second)
	for !count() {
		if time.Now().After(deadline) {
			for _, ev := range b.audit.Events() {
				if ev.Phase != audit.PhaseComplete {
					t.Logf("%s %s %s %s %s", ev.Phase, ev.RequestID, ev.Verb, ev.Subresource, ev.Path)
				}
			}
			t.Fatalf("audit: %d opens, %d closes", opens, closes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestListFiveThousandConfigMaps(t *testing.T) {
	b := newBed(t)
	b.grants.Set("ada", clusterID, grant.Grant{Role: "cluster-admin"})
	kc := b.kubeconfig("ada", time.Hour)
	b.ok(kc, "create", "namespace", "bulk")
	cs, _ := b.kube.Clientset()
	ctx := context.Background()
	const total, workers = 5000, 16
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += workers {
				_, err := cs.CoreV1().ConfigMaps("bulk").Create(ctx, &corev1.ConfigMap{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%05d", i)},
					Data:       map[string]string{"i": fmt.Sprint(i)},
				}, metav1.CreateOptions{})
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	out := b.ok(kc, "-n", "bulk", "get", "configmaps", "--no-headers", "-o", "custom-columns=NAME:.metadata.name")
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "cm-") {
			n++
		}
	}
	if n != total {
		t.Fatalf("listed %d configmaps, want %d", n, total)
	}
}
