package main

import (
	"context"
	"fmt"
	"io"

	"github.com/gatehouse-dev/gatehouse/control/api"
)

func runRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gatehouse revoke", stderr)
	user := fs.String("user", "", "revoke everything this person (id or email) holds: certificates, sessions, service accounts")
	serial := fs.String("serial", "", "revoke one certificate (hex serial)")
	reason := fs.String("reason", "", "why, for the audit log")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	if (*user == "") == (*serial == "") {
		fmt.Fprintln(stderr, "gatehouse revoke: give one of --user or --serial")
		return errUsage
	}
	c, err := sessionClient()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Revoke(ctx, api.RevocationRequest{User: *user, Serial: *serial, Reason: *reason}); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "revoked")
	return nil
}
