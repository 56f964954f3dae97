package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// runStatus prints the gateway cluster's members and, for each of the
// organization's clusters, which node should hold its tunnel, whether its
// agent is connected and where, its versions and last heartbeat.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := flag.NewFlagSet("gatehouse status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf.register(fs, "table")
	if ok, err := parseFlags(fs, args, stderr); !ok {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if cf.output != "table" {
		return cf.print(stdout, st, "", nil)
	}
	fmt.Fprintf(stdout, "answered by %s\n\n", cell(st.Node))
	err = cf.print(stdout, st, "MEMBER\tADDRESS\tZONE\tTUNNELS\tSTATE\tRAFT", func(w io.Writer) {
		for _, m := range st.Members {
			state := "alive"
			if m.Draining {
				state = "draining"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", cell(m.Name), cell(m.PublicAddr), dash(m.Zone), m.Tunnels, state, dash(m.Raft))
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	if len(st.CA) > 0 {
		err = cf.print(stdout, st, "CA GENERATION\tPHASE\tROOT\tRETIRES AFTER\tWAITING FOR", func(w io.Writer) {
			for _, g := range st.CA {
				root := g.RootFingerprint
				if len(root) > 16 {
					root = root[:16]
				}
				if g.NewRoot {
					root += " (new)"
				}
				retire := "-"
				if g.RetireAfter != nil {
					retire = g.RetireAfter.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", g.Number, g.Phase, root, retire, dash(strings.Join(g.Waiting, ",")))
			}
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout)
	}
	now := time.Now()
	return cf.print(stdout, st, "CLUSTER\tPROJECT\tOWNER\tCONNECTED\tNODE\tAGENT\tKUBERNETES\tHEARTBEAT", func(w io.Writer) {
		for _, cl := range st.Clusters {
			hb := "-"
			if !cl.LastHeartbeat.IsZero() {
				hb = now.Sub(cl.LastHeartbeat).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\n", cell(cl.Name), cell(cl.Project), dash(cl.Owner), cl.Connected, dash(cl.Node), dash(cl.AgentVersion), dash(cl.KubeVersion), hb)
		}
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return cell(s)
}
