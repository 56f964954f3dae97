package testenv_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	crdbpgx "github.com/cockroachdb/cockroach-go/v2/crdb/crdbpgxv5"
	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func TestPostgresTransaction(t *testing.T) {
	pg := testenv.PostgresT(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE clusters (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), name STRING NOT NULL UNIQUE)`); err == nil {
		t.Log("note: PostgreSQL accepted a CockroachDB-only type")
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE clusters (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), name TEXT NOT NULL UNIQUE)`); err != nil {
		t.Fatal(err)
	}
	var id string
	err = crdbpgx.ExecuteTx(ctx, conn, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO clusters (name) VALUES ($1) RETURNING id`, "prod-eu").Scan(&id); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM clusters WHERE name = $1`, "prod-eu").Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			t.Errorf("inside the transaction: %d rows", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ExecuteTx: %v", err)
	}
	var name string
	if err := conn.QueryRow(ctx, `SELECT name FROM clusters WHERE id = $1`, id).Scan(&name); err != nil {
		t.Fatal(err)
	}
	if name != "prod-eu" {
		t.Fatalf("read back %q", name)
	}
	// A failed transaction leaves nothing behind.
	err = crdbpgx.ExecuteTx(ctx, conn, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO clusters (name) VALUES ('staging')`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO clusters (name) VALUES ('prod-eu')`) // duplicate
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "duplicate key") {
		t.Fatalf("want a unique violation, got %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM clusters`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("after the rolled-back transaction: %d rows, want 1", n)
	}
}

// TestNoProcessSurvivesClose checks that a component and every process it
// started are gone once Close returns. PostgreSQL forks a backend per
// connection and several workers, so it is a fair test of that.
func TestNoProcessSurvivesClose(t *testing.T) {
	pg, err := testenv.StartPostgres(context.Background(), testenv.DefaultPostgresConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	group := processTree(t, pg.Pid())
	if len(group) < 3 {
		t.Fatalf("expected the postmaster and its workers, found %v", group)
	}
	pg.Close()
	pg.Close() // idempotent
	for _, pid := range group {
		if processAlive(pid) {
			t.Errorf("process %d survived Close", pid)
		}
	}
	if _, err := os.Stat(pg.Dir); !os.IsNotExist(err) {
		t.Errorf("directory %s left behind: %v", pg.Dir, err)
	}
}

// processTree lists root and its live descendants. (PostgreSQL makes each
// child a session leader of its own, so process groups do not find them.)
func processTree(t *testing.T, root int) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	children := map[int][]int{}
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		// After the command: state ppid ...
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		children[ppid] = append(children[ppid], pid)
	}
	tree := []int{root}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}
