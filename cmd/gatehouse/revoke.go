package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/apiclient"
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

// runInvite: gatehouse invite EMAIL [--ttl 24h].
func runInvite(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	pos, rest := leadingArgs(args)
	fs := newFlags("gatehouse invite", stderr)
	ttl := fs.String("ttl", "", "how long the invitation lasts (default 24h, at most 168h)")
	var cf clientFlags
	cf.register(fs, "table")
	if ok, err := parseFlags(fs, rest, stderr); !ok {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: gatehouse invite EMAIL [--ttl 24h]")
		return errUsage
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	return invite(ctx, c, pos[0], pos[0], *ttl, stdout, stderr)
}

// invite issues an invitation and tells the admin what to hand over: the
// invitation on stdout, the person's command on stderr.
func invite(ctx context.Context, c *apiclient.Client, user, email, ttl string, stdout, stderr io.Writer) error {
	inv, err := c.Invite(ctx, user, ttl)
	if err != nil {
		return err
	}
	server, identityURL := "https://GATEWAY", "KRATOS_PUBLIC_URL"
	if p, _, err := profile(); err == nil {
		server, identityURL = p.Server, p.IdentityURL
	}
	fmt.Fprintf(stderr, "Invitation for %s, shown once, valid until %s. They sign in with\n  gatehouse login --server %s --identity-url %s --invitation INVITATION\nand choose their password. The invitation:\n",
		email, inv.Expires.Local().Format(time.RFC1123), server, identityURL)
	fmt.Fprintln(stdout, inv.Invitation)
	return nil
}
