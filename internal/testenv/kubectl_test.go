package testenv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

// runningPod creates a pod on a kwok node and waits until it runs.
func runningPod(t *testing.T, k *testenv.Kube) (ns, name string) {
	t.Helper()
	cs, err := k.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	ns = newNamespace(t, cs, "stream")
	name = "app"
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod phase %s", p.Status.Phase)
		}
		return nil
	})
	return ns, name
}

// kubectl runs the built kubectl as the admin, with stdin and extra
// environment, and returns its stdout.
func kubectl(t *testing.T, k *testenv.Kube, stdin string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd, err := k.Kubectl(ctx, "", args...)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %v: %v\nstdout: %s\nstderr: %s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func TestKubectlStreamsThroughKwok(t *testing.T) {
	k := sharedKube(t)
	ns, pod := runningPod(t, k)

	t.Run("logs", func(t *testing.T) {
		out := kubectl(t, k, "", nil, "-n", ns, "logs", pod)
		if !strings.Contains(out, testenv.PodLogBanner) {
			t.Fatalf("logs: want %q, got %q", testenv.PodLogBanner, out)
		}
	})

	t.Run("logs -f", func(t *testing.T) {
		lines := k.KubectlLines(t, "", "-n", ns, "logs", "-f", pod)
		testenv.WaitForLine(t, lines, testenv.PodLogBanner, 30*time.Second)
		marker := "followed-" + rand.Text()
		if err := k.AppendPodLog(marker); err != nil {
			t.Fatal(err)
		}
		testenv.WaitForLine(t, lines, marker, 30*time.Second)
	})

	t.Run("exec", func(t *testing.T) {
		if out := kubectl(t, k, "", nil, "-n", ns, "exec", pod, "--", "echo", "hi"); out != "hi\n" {
			t.Fatalf("exec echo hi: got %q", out)
		}
		// head exits after one line, so the test does not depend on how
		// the end of stdin is signalled.
		in := "stdin reaches the container " + rand.Text() + "\n"
		if out := kubectl(t, k, in+"not this line\n", nil, "-n", ns, "exec", "-i", pod, "--", "head", "-n", "1"); out != in {
			t.Fatalf("exec -i head: got %q, want %q", out, in)
		}
		// Over SPDY too, the protocol older clients and proxies speak.
		out := kubectl(t, k, "", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false"}, "-n", ns, "exec", pod, "--", "echo", "spdy")
		if out != "spdy\n" {
			t.Fatalf("exec over SPDY: got %q", out)
		}
	})

	t.Run("attach", func(t *testing.T) {
		lines := k.KubectlLines(t, "", "-n", ns, "attach", pod, "-c", "app")
		// Attach shows only what the container writes from now on; keep
		// writing until a line arrives, since attaching takes a moment.
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
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-got:
				return
			case <-tick.C:
				if err := k.AppendPodLog(marker); err != nil {
					t.Fatal(err)
				}
			case <-deadline:
				t.Fatal("attach showed nothing the container wrote")
			}
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		lines := k.KubectlLines(t, "", "-n", ns, "port-forward", "--address=127.0.0.1", "pod/"+pod, ":8080")
		re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
		var port string
		deadline := time.After(30 * time.Second)
		for port == "" {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("port-forward exited")
				}
				if m := re.FindStringSubmatch(l); m != nil {
					port = m[1]
				}
			case <-deadline:
				t.Fatal("port-forward did not start")
			}
		}
		conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// 4 MiB out, the echo back in, compared by checksum.
		payload := make([]byte, 4<<20)
		rand.Read(payload)
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Write(payload)
			errc <- err
		}()
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		if _, err := io.CopyN(h, conn, int64(len(payload))); err != nil {
			t.Fatalf("reading the echo: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("writing: %v", err)
		}
		if want := sha256.Sum256(payload); !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatal("bytes came back changed")
		}
	})
}
