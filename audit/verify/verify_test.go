package verify_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse-dev/gatehouse/audit"
	"github.com/gatehouse-dev/gatehouse/audit/spool"
	"github.com/gatehouse-dev/gatehouse/audit/verify"
	"github.com/gatehouse-dev/gatehouse/control/ca"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stream writes n events through a spooled sink that signs a checkpoint
// every 10, then a final checkpoint, and returns them as written, with
// the CA.
func stream(t *testing.T, n int) ([][]byte, *ca.Authority) {
	t.Helper()
	auth, cert, sp := nodeSpool(t)
	sink := &audit.SpoolSink{Spool: sp, Node: "node-1", CheckpointEvery: 10}
	sink.SetKey(func() *tls.Certificate { return &cert })
	for i := range n {
		ev := &audit.Event{Kind: audit.KindKube, Node: "node-1", Cluster: fmt.Sprintf("c%d", i%3), Verb: "get", Path: fmt.Sprintf("/p/%d", i), Time: time.Now(), Phase: audit.PhaseComplete}
		if err := sink.Write(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	recs, err := sp.Read(0, 1000, 1<<24)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, r := range recs {
		out = append(out, r.Payload)
	}
	return out, auth
}

// nodeSpool returns a CA, a node's certificate from it, and a spool
// closed at the test's end.
func nodeSpool(t *testing.T) (*ca.Authority, tls.Certificate, *spool.Spool) {
	t.Helper()
	auth, err := ca.New(ca.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.IssueServer([]string{"node-1.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := spool.DefaultConfig()
	cfg.Dir = t.TempDir()
	sp, err := spool.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return auth, cert, sp
}

func check(auth *ca.Authority, evs [][]byte) verify.Report {
	s := verify.New(auth.RootPool())
	for _, e := range evs {
		s.Add("export", e)
	}
	return s.Report()
}

func kinds(r verify.Report) []string {
	var out []string
	for _, p := range r.Problems {
		out = append(out, fmt.Sprintf("%s %d-%d", p.Kind, p.From, p.To))
	}
	return out
}

// An untouched stream passes, with its checkpoints verified; an edited
// event, a deleted one, a reordered pair and a forged checkpoint are each
// found, with the node, chain and range.
func TestVerify(t *testing.T) {
	evs, auth := stream(t, 35)
	// 35 events and 4 checkpoints: after events 10, 20, 30 and at the end.
	r := check(auth, evs)
	if !r.OK() || len(r.Chains) != 1 || r.Chains[0].Events != 39 || r.Chains[0].Checkpoints != 4 || len(r.Warnings) != 0 {
		t.Fatalf("untouched: %+v %v", r.Chains, kinds(r))
	}
	clone := func() [][]byte {
		out := make([][]byte, len(evs))
		for i := range evs {
			out[i] = bytes.Clone(evs[i])
		}
		return out
	}
	t.Run("edited", func(t *testing.T) {
		e := clone()
		e[14] = bytes.Replace(e[14], []byte(`"verb":"get"`), []byte(`"verb":"delete"`), 1)
		if r := check(auth, e); r.OK() || r.Problems[0].Kind != verify.Altered || r.Problems[0].From != 15 {
			t.Fatalf("an edit: %v", kinds(r))
		}
	})
	t.Run("deleted", func(t *testing.T) {
		e := clone()
		e = append(e[:6], e[7:]...)
		if r := check(auth, e); r.OK() || r.Problems[0].Kind != verify.Missing || r.Problems[0].From != 7 || r.Problems[0].To != 7 {
			t.Fatalf("a deletion: %v", kinds(r))
		}
	})
	t.Run("reordered", func(t *testing.T) {
		e := clone()
		e[19], e[20] = e[20], e[19]
		if r := check(auth, e); r.OK() || r.Problems[0].Kind != verify.Reordered {
			t.Fatalf("a reordered pair: %v", kinds(r))
		}
	})
	t.Run("forged checkpoint", func(t *testing.T) {
		e := clone()
		other, _ := stream(t, 12) // another CA's node
		e[10] = other[10]         // checkpoint 11, signed by a stranger
		r := check(auth, e)
		if r.OK() {
			t.Fatal("a checkpoint of another CA passed")
		}
	})
	t.Run("tail cut with its checkpoint", func(t *testing.T) {
		e := clone()[:len(evs)-3]
		r := check(auth, e)
		if !r.OK() || len(r.Warnings) != 1 || r.Warnings[0].Kind != verify.Unsigned {
			t.Fatalf("a cut tail: problems %v, warnings %+v", kinds(r), r.Warnings)
		}
	})
	t.Run("duplicates", func(t *testing.T) {
		// Delivered again (at least once), later in the same stream or in
		// another: not a problem.
		if r := check(auth, append(clone(), evs[:5]...)); !r.OK() || r.Duplicates != 5 {
			t.Fatalf("duplicates later in the stream: %v, %d", kinds(r), r.Duplicates)
		}
		s := verify.New(auth.RootPool())
		for _, x := range evs {
			s.Add("p0", x)
		}
		for _, x := range evs[:5] {
			s.Add("p1", x)
		}
		if r := s.Report(); !r.OK() || r.Duplicates != 5 {
			t.Fatalf("duplicates in another stream: %v, %d", kinds(r), r.Duplicates)
		}
	})
}

// A node that restarts begins a new chain linked to the last one's last
// checkpoint: the previous chain deleted whole, or cut short with its
// checkpoints, is found.
func TestChainsLinkedAcrossRestarts(t *testing.T) {
	auth, cert, sp := nodeSpool(t)
	headFile := filepath.Join(t.TempDir(), "chain.head")
	run := func() {
		// One run of the node: a sink of its own, the same head file.
		sink := &audit.SpoolSink{Spool: sp, Node: "node-1", CheckpointEvery: 10, HeadFile: headFile}
		sink.SetKey(func() *tls.Certificate { return &cert })
		for i := range 15 {
			if err := sink.Write(context.Background(), &audit.Event{Kind: audit.KindKube, Node: "node-1", Verb: "get", Path: fmt.Sprintf("/p/%d", i), Time: time.Now(), Phase: audit.PhaseComplete}); err != nil {
				t.Fatal(err)
			}
		}
		if err := sink.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	run()
	run()
	recs, err := sp.Read(0, 1000, 1<<24)
	if err != nil {
		t.Fatal(err)
	}
	var evs [][]byte
	chains := map[string][]int{} // chain -> indexes in evs
	var order []string
	for i, r := range recs {
		evs = append(evs, r.Payload)
		var ev audit.Event
		json.Unmarshal(r.Payload, &ev)
		if _, ok := chains[ev.Chain]; !ok {
			order = append(order, ev.Chain)
		}
		chains[ev.Chain] = append(chains[ev.Chain], i)
	}
	if len(order) != 2 {
		t.Fatalf("%d chains", len(order))
	}
	var start audit.Event
	json.Unmarshal(evs[chains[order[1]][0]], &start)
	if start.Action != audit.ActionChainStart || start.Link == nil || start.Link.Chain != order[0] || start.Link.Seq != uint64(len(chains[order[0]])) {
		t.Fatalf("the second chain begins with %+v", start)
	}
	if r := check(auth, evs); !r.OK() || len(r.Chains) != 2 {
		t.Fatalf("untouched: %v %+v", kinds(r), r.Chains)
	}
	without := func(drop func(i int) bool) [][]byte {
		var out [][]byte
		for i, e := range evs {
			if !drop(i) {
				out = append(out, e)
			}
		}
		return out
	}
	first := chains[order[0]]
	t.Run("the previous chain deleted whole", func(t *testing.T) {
		r := check(auth, without(func(i int) bool { return i <= first[len(first)-1] }))
		if r.OK() || r.Problems[0].Kind != verify.Missing || r.Problems[0].Chain != order[0] || r.Problems[0].To != uint64(len(first)) {
			t.Fatalf("a chain deleted whole: %v", r.Problems)
		}
	})
	t.Run("the previous chain cut short with its checkpoints", func(t *testing.T) {
		r := check(auth, without(func(i int) bool { return i >= first[len(first)-6] && i <= first[len(first)-1] }))
		if r.OK() || r.Problems[0].Kind != verify.Missing || r.Problems[0].From != uint64(len(first)-5) || r.Problems[0].To != uint64(len(first)) {
			t.Fatalf("a chain cut short: %v", r.Problems)
		}
	})
}
