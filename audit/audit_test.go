package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFileSinkAppendsJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, verb := range []string{"get", "list"} {
		if err := s.Write(ctx, &Event{Time: time.Unix(int64(i), 0).UTC(), Phase: PhaseComplete, User: "u", Verb: verb, Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Write(ctx, &Event{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	f, _ := os.Open(path)
	defer f.Close()
	sc := bufio.NewScanner(f)
	var verbs []string
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		verbs = append(verbs, ev.Verb)
	}
	if len(verbs) != 2 || verbs[0] != "get" || verbs[1] != "list" {
		t.Fatalf("read back %v", verbs)
	}
}
