package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/loadtest"
)

// runLoadtest is `gatehouse loadtest`: simulated agents and clients
// against a gateway (package loadtest).
func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := loadtest.DefaultConfig()
	fs := flag.NewFlagSet("gatehouse loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: gatehouse loadtest --server URL --token-file FILE --ca-file FILE [flags]

Creates --agents clusters through the API, each with a simulated agent (the
real tunnel, no Kubernetes behind it), then runs --clients clients that GET
--path through the gateway for --duration. With --hold, the agents stay
connected until interrupted (to measure a node's memory per tunnel). The
clusters are deleted at the end unless --keep.`)
		fs.PrintDefaults()
	}
	server := fs.String("server", os.Getenv("GATEHOUSE_SERVER"), "the gateway's public URL, https://HOST:PORT (env GATEHOUSE_SERVER)")
	tokenFile := fs.String("token-file", os.Getenv("GATEHOUSE_TOKEN_FILE"), "file holding an organization admin's API token (env GATEHOUSE_TOKEN_FILE; or GATEHOUSE_TOKEN)")
	caFile := fs.String("ca-file", os.Getenv("GATEHOUSE_CA_FILE"), "the gateway's CA certificate (env GATEHOUSE_CA_FILE)")
	fs.StringVar(&cfg.Project, "project", cfg.Project, "project to create the clusters in (created if missing)")
	fs.StringVar(&cfg.Prefix, "prefix", "", "cluster name prefix (default lt-RANDOM-)")
	fs.IntVar(&cfg.Agents, "agents", cfg.Agents, "clusters, each with a simulated agent")
	fs.IntVar(&cfg.Parallel, "parallel", cfg.Parallel, "agents set up at a time")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "concurrent clients, each on its own connection (0: none)")
	fs.StringVar(&cfg.Path, "path", cfg.Path, "the request under /k8s/CLUSTER")
	duration := fs.Duration("duration", 10*time.Second, "how long the clients run")
	hold := fs.Bool("hold", false, "keep the agents connected until interrupted")
	fs.BoolVar(&cfg.Keep, "keep", false, "leave the clusters in place")
	output := fs.String("o", "text", "output: text or json")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("-o %q: text or json", *output)
	}
	cfg.Server = *server
	cfg.Token = os.Getenv("GATEHOUSE_TOKEN")
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	if *caFile == "" {
		return errors.New("--ca-file is required: the gateway's CA certificate")
	}
	var err error
	if cfg.CAPEM, err = os.ReadFile(*caFile); err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	cfg.Progress = stderr
	run, err := loadtest.New(cfg)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(stderr, "stopping the agents", map[bool]string{true: "(clusters kept)", false: "and deleting the clusters"}[cfg.Keep])
		if err := run.Close(); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}()
	took, err := run.Setup(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "%d agents connected in %s\n", cfg.Agents, took.Round(time.Millisecond))
	report := struct {
		Agents      int              `json:"agents"`
		ConnectTime time.Duration    `json:"connectTimeNs"`
		Load        *loadtest.Result `json:"load,omitempty"`
	}{Agents: cfg.Agents, ConnectTime: took}
	if cfg.Clients > 0 && *duration > 0 {
		if report.Load, err = run.Drive(ctx, *duration); err != nil {
			return err
		}
	}
	if *output == "json" {
		b, _ := json.MarshalIndent(report, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "agents: %d connected in %s\n", cfg.Agents, took.Round(time.Millisecond))
		if report.Load != nil {
			fmt.Fprintln(stdout, "load:", report.Load)
		}
	}
	if *hold {
		fmt.Fprintf(stderr, "holding %d tunnels; interrupt to stop\n", cfg.Agents)
		<-ctx.Done()
	}
	if report.Load != nil && report.Load.Failed > 0 {
		return fmt.Errorf("%d of %d requests failed", report.Load.Failed, report.Load.Requests)
	}
	return nil
}
