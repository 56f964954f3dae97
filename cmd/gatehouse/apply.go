package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/gatehouse-dev/gatehouse/control/apiclient"
)

// runApply applies YAML documents (Project, Cluster, User, Group,
// RoleBinding) idempotently: GitOps and Terraform-style tools can run it
// again and again.
func runApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse apply", stderr)
	file := fs.String("f", "", "file of YAML documents; - for standard input")
	var cf clientFlags
	cf.register(fs, "table")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if *file == "" {
		fmt.Fprintln(stderr, "gatehouse apply: -f FILE is required")
		return errUsage
	}
	in, name := io.Reader(os.Stdin), "stdin"
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in, name = f, *file
	}
	docs, err := apiclient.ParseDocuments(in, name)
	if err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	results, err := c.Apply(ctx, docs)
	for _, r := range results {
		fmt.Fprintf(stdout, "%s %s\n", cell(r.Object), cell(r.Action))
		if r.Note != "" {
			fmt.Fprintf(stderr, "  %s\n", r.Note)
		}
	}
	return err
}
