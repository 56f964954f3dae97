package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/api"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// Default overlaps of a rotation: how long the generation before stays
// trusted once the new one is active. For intermediates, the longest life
// of anything the old ones signed (an agent's certificate, a week) and an
// hour; for a root, a month for people to take the new root into their
// kubeconfigs.
const (
	defaultIntermediateOverlap = api.MaxAgentCertTTL + time.Hour
	defaultRootOverlap         = 30 * 24 * time.Hour
)

const caUsage = `Usage:
  gatehouse ca init [flags]     create the certificate authority in the store, once
  gatehouse ca rotate [flags]   start a rotation: new intermediates (or, with --root, a new root)
  gatehouse ca status [flags]   show the authority's generations and their phases`

// runCA runs `gatehouse ca init|rotate|status`, against the store, with the
// key-encryption key where keys are made.
func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, caUsage)
		return errUsage
	}
	switch args[0] {
	case "init", "rotate", "status":
	default:
		fmt.Fprintln(stderr, caUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("gatehouse ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", ".gatehouse/node", "directory of the embedded store")
	storeCfg := storeFlags(fs, stateDir)
	var kekFile *string
	if args[0] != "status" {
		kekFile = fs.String("ca-kek-file", "", "the key-encryption key: 32 random bytes, base64 (openssl rand -base64 32); else $"+kekEnv)
	}
	root := fs.Bool("root", false, "rotate: a new root as well as new intermediates (kubeconfigs must take the new root during the overlap)")
	overlap := fs.Duration("overlap", 0, fmt.Sprintf("rotate: how long the old generation stays trusted once the new one signs (default %s for intermediates, %s for a root)", defaultIntermediateOverlap, defaultRootOverlap))
	wait := fs.Bool("wait", false, "rotate: follow the rotation until the new generation signs")
	waitTimeout := fs.Duration("wait-timeout", 10*time.Minute, "rotate --wait: give up following after this long (the rotation goes on)")
	if ok, err := parseFlags(fs, args[1:], stderr); !ok {
		return err
	}
	st, err := openStore(ctx, storeCfg(), false)
	if err != nil {
		return err
	}
	defer st.Close()
	switch args[0] {
	case "init":
		kek, err := ca.LoadLocalKEK(*kekFile, kekEnv)
		if err != nil {
			return err
		}
		a, err := ca.Init(ctx, ca.DefaultConfig(), kek, st)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "certificate authority created in the store, sealed with key-encryption key %s\n", kek.ID())
		_, err = stdout.Write(a.RootPEM())
		return err
	case "status":
		return caStatus(ctx, st, stdout)
	}
	kek, err := ca.LoadLocalKEK(*kekFile, kekEnv)
	if err != nil {
		return err
	}
	if *overlap == 0 {
		*overlap = defaultIntermediateOverlap
		if *root {
			*overlap = defaultRootOverlap
		}
	}
	if *overlap < 0 {
		return fmt.Errorf("--overlap %s: must not be negative", *overlap)
	}
	if *overlap < defaultIntermediateOverlap {
		fmt.Fprintf(stderr, "warning: --overlap %s is shorter than the longest certificate the old generation may have signed (%s): those certificates stop working when it retires\n", *overlap, defaultIntermediateOverlap)
	}
	gen, err := ca.Rotate(ctx, ca.DefaultConfig(), kek, st, *root, *overlap)
	if errors.Is(err, ca.ErrRotating) {
		return fmt.Errorf("%w\n(gatehouse ca status shows where it stands)", err)
	}
	if err != nil {
		return err
	}
	what := "new intermediates under the same root"
	if gen.NewRoot {
		what = "a new root and intermediates under it"
	}
	fmt.Fprintf(stdout, "generation %d added in standby: %s (root sha256 %s)\n", gen.Number, what, gen.RootFingerprint)
	fmt.Fprintln(stdout, "every node now trusts it; the Raft leader makes it active once all of them do, and retires the generation before it after", *overlap)
	if gen.NewRoot {
		fmt.Fprintf(stdout, `
A new root. People's kubeconfigs carry the gateway's root:
  - from now on the gateway's trust bundle holds both roots: gatehouse login
    keeps it in its profile, and gatehouse kubeconfig then writes both roots;
  - the nodes keep serving under the old root until it retires, %s after
    the new generation becomes active: every kubeconfig must carry the new root
    by then (gatehouse login and gatehouse kubeconfig again, or add the new
    root to certificate-authority-data: gatehouse status shows its fingerprint);
  - agents receive the bundle over their tunnels and keep it; an agent that is
    offline for the whole overlap must be bootstrapped again.
`, *overlap)
	}
	if !*wait {
		fmt.Fprintln(stdout, "follow it with: gatehouse ca status (or gatehouse status)")
		return nil
	}
	deadline := time.Now().Add(*waitTimeout)
	last := ""
	for {
		gens, err := st.CAGenerations(ctx)
		if err != nil {
			return err
		}
		phase := ""
		for _, g := range gens {
			if g.Number == gen.Number {
				phase = g.Phase
			}
		}
		if phase != last {
			fmt.Fprintf(stdout, "%s generation %d: %s\n", time.Now().UTC().Format(time.RFC3339), gen.Number, phase)
			last = phase
		}
		if phase != ca.PhaseStandby {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("generation %d still in standby after %s: a node does not trust it yet (gatehouse status shows which), or no leader runs", gen.Number, *waitTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// caStatus prints every generation of the authority in the store.
func caStatus(ctx context.Context, st *store.Store, stdout io.Writer) error {
	gens, err := st.CAGenerations(ctx)
	if err != nil {
		return err
	}
	if len(gens) == 0 {
		return ca.ErrNoState
	}
	a, err := ca.OpenPublic(ctx, ca.DefaultConfig(), st)
	if err != nil {
		return err
	}
	roots := map[int64]string{}
	for _, g := range a.Generations() {
		roots[g.Number] = g.RootFingerprint[:16]
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GENERATION\tPHASE\tROOT\tCREATED\tOVERLAP\tRETIRES AFTER")
	for _, g := range gens {
		root := roots[g.Number]
		if root == "" {
			root = "-"
		}
		if g.NewRoot {
			root += " (new)"
		}
		retire := "-"
		if !g.RetireAfter.IsZero() {
			retire = g.RetireAfter.UTC().Format(time.RFC3339)
		}
		overlap := "-"
		if g.Overlap > 0 {
			overlap = g.Overlap.String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", g.Number, g.Phase, root, g.Created.UTC().Format(time.RFC3339), overlap, retire)
	}
	return tw.Flush()
}
