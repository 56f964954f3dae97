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
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/apiclient"
)

// clientFlags are the API connection flags every API command takes, with
// environment defaults so that scripts set them once.
type clientFlags struct {
	server, tokenFile, caFile, output string
}

func (c *clientFlags) register(fs *flag.FlagSet, defaultOutput string) {
	fs.StringVar(&c.server, "server", os.Getenv("GATEHOUSE_SERVER"), "gateway URL, https://HOST:PORT (env GATEHOUSE_SERVER)")
	fs.StringVar(&c.tokenFile, "token-file", os.Getenv("GATEHOUSE_TOKEN_FILE"), "file holding an API token (env GATEHOUSE_TOKEN_FILE; or GATEHOUSE_TOKEN)")
	fs.StringVar(&c.caFile, "ca-file", os.Getenv("GATEHOUSE_CA_FILE"), "CA certificate that verifies the gateway (env GATEHOUSE_CA_FILE); default: system roots")
	fs.StringVar(&c.output, "o", defaultOutput, "output: table, json or yaml")
}

// client returns an API client from the flags, or from the login profile
// when no server and token are given.
func (c *clientFlags) client() (*apiclient.Client, error) {
	token := os.Getenv("GATEHOUSE_TOKEN")
	if c.server == "" && c.tokenFile == "" && token == "" {
		if p, _, err := profile(); err == nil {
			return p.Client()
		}
	}
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	var ca []byte
	if c.caFile != "" {
		var err error
		if ca, err = os.ReadFile(c.caFile); err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
	}
	if c.server == "" {
		return nil, errors.New("no server: run gatehouse login, or set --server or GATEHOUSE_SERVER")
	}
	return apiclient.New(apiclient.Config{Server: c.server, Token: token, CAPEM: ca})
}

// print writes v as the chosen output; table calls rows for the table.
func (c *clientFlags) print(w io.Writer, v any, header string, rows func(w io.Writer)) error {
	switch c.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, header)
		rows(tw)
		return tw.Flush()
	}
	return fmt.Errorf("-o %q: want table, json or yaml", c.output)
}

// recordRoles reads --record-sessions: roles comma-separated, "*", or
// "none" (and empty) for no one.
func recordRoles(s string) []string {
	if s == "" || s == "none" {
		return nil
	}
	var out []string
	for _, r := range strings.Split(s, ",") {
		if r = strings.TrimSpace(r); r != "" {
			out = append(out, r)
		}
	}
	return out
}

// leadingArgs splits the positional arguments before the first flag from
// the rest, so that `cluster create NAME --project P` parses.
func leadingArgs(args []string) (pos, rest []string) {
	for i, a := range args {
		if strings.HasPrefix(a, "-") {
			return args[:i], args[i:]
		}
	}
	return args, nil
}

func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() error {
		fmt.Fprintln(stderr, "Usage: gatehouse cluster create|list|get|update|delete|bootstrap|rehome [NAME] [flags]\n  update: --description, --record-sessions\n  rehome: a rebuilt cluster (new kube-system UID) registers anew; its old agent is revoked")
		return errUsage
	}
	if len(args) == 0 {
		return usage()
	}
	verb := args[0]
	pos, rest := leadingArgs(args[1:])
	var cf clientFlags
	fs := flag.NewFlagSet("gatehouse cluster "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	project := fs.String("project", "", "project of the cluster(s)")
	description := fs.String("description", "", "description of the cluster (create, update)")
	recordSessions := fs.String("record-sessions", "", `whose exec and attach sessions are recorded (create, update): "*" for everyone, roles comma-separated (cluster-admin,admin,edit,view or custom roles), or "none"`)
	defaultOutput := "table"
	if verb == "create" || verb == "bootstrap" || verb == "rehome" {
		defaultOutput = "manifest"
	}
	cf.register(fs, defaultOutput)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	pos = append(pos, fs.Args()...)
	needName := verb != "list"
	if (needName && len(pos) != 1) || (!needName && len(pos) != 0) {
		return usage()
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	clusterRows := func(cs ...api.Cluster) func(io.Writer) {
		return func(w io.Writer) {
			for _, cl := range cs {
				recorded := strings.Join(cl.SessionRecording, ",")
				if recorded == "" {
					recorded = "none"
				}
				fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\n", cell(cl.Name), cell(cl.Project), cl.Registered, cell(recorded), cell(cl.Description))
			}
		}
	}
	const header = "NAME\tPROJECT\tREGISTERED\tRECORDED\tDESCRIPTION"
	switch verb {
	case "create":
		if *project == "" {
			return errors.New("--project is required")
		}
		out, err := c.CreateCluster(ctx, api.Cluster{Name: pos[0], Project: *project, Description: *description, SessionRecording: recordRoles(*recordSessions)})
		if err != nil {
			return err
		}
		if cf.output == "manifest" {
			fmt.Fprintf(stderr, "cluster %q created in project %q; apply this manifest in the cluster (the token works once, until %s):\n",
				out.Cluster.Name, out.Cluster.Project, out.Bootstrap.Expires.Format("2006-01-02 15:04 MST"))
			_, err := io.WriteString(stdout, out.Bootstrap.Manifest)
			return err
		}
		return cf.print(stdout, out, header, clusterRows(out.Cluster))
	case "bootstrap", "rehome":
		get := c.Bootstrap
		if verb == "rehome" {
			get = c.Rehome
		}
		out, err := get(ctx, pos[0])
		if err != nil {
			return err
		}
		if cf.output == "manifest" {
			_, err := io.WriteString(stdout, out.Manifest)
			return err
		}
		return cf.print(stdout, out, "TOKEN\tEXPIRES", func(w io.Writer) { fmt.Fprintf(w, "%s\t%s\n", out.Token, out.Expires) })
	case "list":
		if *project == "" {
			return errors.New("--project is required")
		}
		cs, err := c.ListClusters(ctx, *project)
		if err != nil {
			return err
		}
		return cf.print(stdout, cs, header, clusterRows(cs...))
	case "get":
		cl, err := c.GetCluster(ctx, pos[0])
		if err != nil {
			return err
		}
		return cf.print(stdout, cl, header, clusterRows(*cl))
	case "update":
		cl, err := c.GetCluster(ctx, pos[0])
		if err != nil {
			return err
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["description"] && !set["record-sessions"] {
			return errors.New("nothing to update: give --description or --record-sessions")
		}
		if set["description"] {
			cl.Description = *description
		}
		if set["record-sessions"] {
			cl.SessionRecording = recordRoles(*recordSessions)
		}
		cl.Created, cl.Registered = time.Time{}, false // set by the server
		out, err := c.UpdateCluster(ctx, *cl)
		if err != nil {
			return err
		}
		return cf.print(stdout, out, header, clusterRows(*out))
	case "delete":
		if err := c.DeleteCluster(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "cluster %q deleted\n", pos[0])
		return nil
	}
	return usage()
}
