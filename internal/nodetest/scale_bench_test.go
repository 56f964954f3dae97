package nodetest_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/nodetest"
)

// agentsPerProcess: each simulated agent is a descriptor in its loadtest
// process, so the agents are spread over processes that stay well under
// an open-file limit of 20,000.
const agentsPerProcess = 9000

// BenchmarkIdleTunnels measures what idle agent tunnels cost one node
// (issue 10: 20,000 in at most 1 GiB). `gatehouse loadtest --hold`
// processes register that many simulated agents with a node process and
// hold their tunnels; the node's resident memory, Go heap and goroutine
// stacks are read before and after. Reported: the time to connect them
// all, and RSS, heap and stack per tunnel. It fails if the node's RSS
// passes 1 GiB.
//
//	go test -run '^$' -bench BenchmarkIdleTunnels -benchtime 1x ./internal/nodetest/
//
// GATEHOUSE_BENCH_TUNNELS changes the count (200 with -short); the node
// holds one descriptor per tunnel, so the count is capped below the
// process's open-file limit. GATEHOUSE_BENCH_IDLE is how long the tunnels
// idle before the reading (5s); GATEHOUSE_BENCH_PROFILES, a directory,
// receives the node's heap and goroutine profiles.
func BenchmarkIdleTunnels(b *testing.B) {
	n := 20000
	if testing.Short() {
		n = 200
	}
	if s := os.Getenv("GATEHOUSE_BENCH_TUNNELS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("GATEHOUSE_BENCH_TUNNELS=%q", s)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if max := int(lim.Max) - 200; n > max {
		b.Logf("%d tunnels asked, but the node may open %d files (hard limit; raising it needs CAP_SYS_RESOURCE): measuring %d", n, lim.Max, max)
		n = max
	}
	idle := 5 * time.Second
	if s := os.Getenv("GATEHOUSE_BENCH_IDLE"); s != "" {
		var err error
		if idle, err = time.ParseDuration(s); err != nil {
			b.Fatalf("GATEHOUSE_BENCH_IDLE=%q", s)
		}
	}
	c := nodetest.Start(b, 1)
	nd := c.Nodes[0]
	// The node in a 1 GiB container: the Go memory limit the node sets
	// itself from its cgroup (90%), given here as there is no cgroup.
	// GATEHOUSE_BENCH_GOMEMLIMIT=off runs it without.
	memLimit := "921MiB"
	if s := os.Getenv("GATEHOUSE_BENCH_GOMEMLIMIT"); s != "" {
		memLimit = s
	}
	if memLimit != "off" {
		nd.Stop()
		nd.Env = []string{"GOMEMLIMIT=" + memLimit}
		nd.Start()
	}
	b.Logf("node GOMEMLIMIT: %s", memLimit)
	dir := b.TempDir()
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	os.WriteFile(tokenFile, []byte(c.AdminToken), 0o600)
	os.WriteFile(caFile, c.RootPEM(), 0o600)
	time.Sleep(time.Second)
	rss0, heap0, stack0 := nd.RSS(), nd.Metric("go_memstats_heap_inuse_bytes"), nd.Metric("go_memstats_stack_inuse_bytes")
	for range b.N {
		start := time.Now()
		var procs []*exec.Cmd
		// Each process's reader says once that its agents are up and once
		// that the process ended: room for both, so that no reader waits.
		connected := make(chan error, 2*(n/agentsPerProcess+1))
		for i, left := 0, n; left > 0; i++ {
			k := min(left, agentsPerProcess)
			left -= k
			cmd := exec.Command(c.Bin, "loadtest", "--server", nd.URL(), "--token-file", tokenFile, "--ca-file", caFile,
				"--project", c.Project.Name, "--prefix", fmt.Sprintf("idle%d-%d-", time.Now().UnixNano(), i),
				"--agents", strconv.Itoa(k), "--clients", "0", "--parallel", "32", "--hold", "--keep")
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			stderr, err := cmd.StderrPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			procs = append(procs, cmd)
			go func() {
				sc := bufio.NewScanner(stderr)
				var last string
				for sc.Scan() {
					last = sc.Text()
					if testing.Verbose() {
						fmt.Fprintf(os.Stderr, "loadtest %d: %s\n", i, last)
					}
					if strings.Contains(last, "agents connected in") {
						connected <- nil
					}
				}
				connected <- fmt.Errorf("loadtest %d ended: %s", i, last)
			}()
		}
		stop := func() {
			for _, p := range procs {
				p.Process.Signal(syscall.SIGINT)
			}
			for _, p := range procs {
				p.Wait()
			}
		}
		for range procs {
			if err := <-connected; err != nil {
				stop()
				b.Fatal(err)
			}
		}
		took := time.Since(start)
		time.Sleep(idle)
		rss, heap, stacks := nd.RSS(), nd.Metric("go_memstats_heap_inuse_bytes"), nd.Metric("go_memstats_stack_inuse_bytes")
		if dir := os.Getenv("GATEHOUSE_BENCH_PROFILES"); dir != "" {
			for _, p := range []string{"heap", "goroutine"} {
				saveProfile(b, "http://"+nd.MetricsAddr+"/debug/pprof/"+p, filepath.Join(dir, p+".pb.gz"))
			}
		}
		tunnels, goroutines := nd.Metric("gatehouse_tunnels_open"), nd.Metric("go_goroutines")
		stop()
		if int(tunnels) != n {
			b.Errorf("the node counts %v tunnels, not %d", tunnels, n)
		}
		per := func(v float64) float64 { return v / float64(n) / 1024 }
		b.ReportMetric(took.Seconds(), "connect-s")
		b.ReportMetric(float64(n)/took.Seconds(), "tunnels/s")
		b.ReportMetric(per(float64(rss-rss0)), "rss-KiB/tunnel")
		b.ReportMetric(per(heap-heap0), "heap-KiB/tunnel")
		b.ReportMetric(per(stacks-stack0), "stack-KiB/tunnel")
		b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
		b.Logf("%d tunnels connected in %s; node RSS %d → %d MiB, heap in use %.0f → %.0f MiB, stacks %.0f → %.0f MiB, %v goroutines",
			n, took.Round(time.Millisecond), rss0>>20, rss>>20, heap0/(1<<20), heap/(1<<20), stack0/(1<<20), stacks/(1<<20), goroutines)
		if rss > 1<<30 {
			b.Errorf("node RSS %d MiB with %d tunnels: more than 1 GiB", rss>>20, n)
		}
	}
}

// saveProfile fetches a node's profile into file.
func saveProfile(b *testing.B, url, file string) {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("%s: %d %v", url, resp.StatusCode, err)
	}
	if err := os.WriteFile(file, body, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("profile saved: %s", file)
}
