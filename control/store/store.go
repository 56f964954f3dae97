// Package store is Gatehouse's configuration store: organizations,
// projects, clusters, people, groups, roles, role bindings, API tokens,
// certificate settings, revocations and bootstrap tokens.
//
// One implementation runs the same SQL on two engines: CockroachDB (in
// production; PostgreSQL stands in for it in tests) through pgx, and an
// embedded SQLite file (modernc.org/sqlite, no cgo) for `gatehouse dev` and
// single-node trials. The SQL keeps to what both accept (see
// migrations/00001_init.sql). Every transaction runs through cockroach-go's
// crdb.ExecuteTx, which retries CockroachDB's serialization restarts.
// Migrations are forward-only and versioned (pressly/goose), run by
// `gatehouse migrate` or Store.Migrate, and never touch Kratos's tables.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/cockroachdb/cockroach-go/v2/crdb"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Drivers.
const (
	// DriverPostgres is CockroachDB or PostgreSQL; DSN is a postgres:// URL.
	DriverPostgres = "postgres"
	// DriverSQLite is the embedded store; DSN is a file path.
	DriverSQLite = "sqlite"
)

// Errors returned by the store. Callers test them with errors.Is.
var (
	// ErrNotFound: no such object.
	ErrNotFound = errors.New("store: not found")
	// ErrExists: an object with that name (or key) exists already.
	ErrExists = errors.New("store: already exists")
	// ErrConflict: the object changed since it was read (its version
	// differs); read it again and retry.
	ErrConflict = errors.New("store: version conflict")
	// ErrInvalid: the input breaks a rule of the store (a reference to a
	// missing object, an empty name).
	ErrInvalid = errors.New("store: invalid")
	// ErrBadContinue: a continue token that this store did not make.
	ErrBadContinue = errors.New("store: bad continue token")
)

// Config configures a Store.
type Config struct {
	// Driver is DriverPostgres or DriverSQLite.
	Driver string
	// DSN is the postgres:// URL or the SQLite file path.
	DSN string
	// MaxOpenConns bounds the connection pool (PostgreSQL only; SQLite has
	// one writer, so its pool is one connection). 20 serves a gateway node's
	// request rate with a CockroachDB node's default limits to spare.
	MaxOpenConns int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns an embedded store in gatehouse.db.
func DefaultConfig() Config {
	return Config{Driver: DriverSQLite, DSN: "gatehouse.db", MaxOpenConns: 20}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Driver != DriverPostgres && c.Driver != DriverSQLite:
		return fmt.Errorf("store: Driver must be %q or %q, not %q", DriverPostgres, DriverSQLite, c.Driver)
	case c.DSN == "":
		return errors.New("store: DSN is required")
	case c.MaxOpenConns < 1:
		return errors.New("store: MaxOpenConns must be at least 1")
	}
	return nil
}

// Store is the configuration store. It is safe for concurrent use.
type Store struct {
	db     *sql.DB
	driver string
	// cockroach: the postgres driver talks to CockroachDB.
	cockroach bool
	now       func() time.Time
}

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations returns the versions of the migrations this binary carries, in
// order.
func Migrations() []int64 {
	entries, _ := migrations.ReadDir("migrations")
	var out []int64
	for _, e := range entries {
		var v int64
		if _, err := fmt.Sscanf(e.Name(), "%05d_", &v); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// Open connects to the store. It does not migrate; call Migrate.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var db *sql.DB
	var err error
	switch cfg.Driver {
	case DriverPostgres:
		db, err = sql.Open("pgx", cfg.DSN)
		if err == nil {
			db.SetMaxOpenConns(cfg.MaxOpenConns)
		}
	case DriverSQLite:
		// Foreign keys are off by default in SQLite; a writer waits for
		// another rather than failing at once.
		dsn := "file:" + cfg.DSN + "?_pragma=foreign_keys(1)&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate"
		db, err = sql.Open("sqlite", dsn)
		if err == nil {
			db.SetMaxOpenConns(1)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	st := &Store{db: db, driver: cfg.Driver, now: cfg.Now}
	if cfg.Driver == DriverPostgres {
		var v string
		if err := db.QueryRowContext(ctx, `SELECT version()`).Scan(&v); err != nil {
			db.Close()
			return nil, fmt.Errorf("store: server version: %w", err)
		}
		st.cockroach = strings.Contains(v, "CockroachDB")
	}
	return st, nil
}

// Close closes the connection pool.
func (s *Store) Close() error { return s.db.Close() }

// Migrate applies the migrations not yet applied, in order, and returns the
// versions it applied. Running it again applies nothing.
func (s *Store) Migrate(ctx context.Context) ([]int64, error) {
	dialect := goose.DialectPostgres
	if s.driver == DriverSQLite {
		dialect = goose.DialectSQLite3
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	p, err := goose.NewProvider(dialect, s.db, sub, goose.WithTableName("gatehouse_schema_version"))
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: %w", err)
	}
	var applied []int64
	for _, r := range results {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// SchemaVersion returns the newest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	var v sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT MAX(version_id) FROM gatehouse_schema_version WHERE is_applied`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("store: schema version: %w", err)
	}
	return v.Int64, nil
}

// tx runs fn in a serializable transaction, retried on serialization
// failures; fn may run more than once.
//
// On CockroachDB it goes through crdb.ExecuteTx, whose SAVEPOINT
// cockroach_restart protocol retries inside the transaction; there the
// RELEASE of that savepoint commits. Elsewhere RELEASE does not commit, and
// ExecuteTx ignores the error of the COMMIT that follows: on PostgreSQL a
// transaction that failed to serialize at COMMIT was then lost while tx
// reported success (bootstrap tokens issued under load vanished;
// TestBootstrapTokensOfManyClustersAtOnce). So PostgreSQL and SQLite run
// plain BEGIN ... COMMIT, the COMMIT's error checked, and the whole
// transaction is retried by crdb.ExecuteCtx on the same retryable errors.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	opts := &sql.TxOptions{Isolation: sql.LevelSerializable}
	if s.cockroach {
		return classify(crdb.ExecuteTx(ctx, s.db, opts, fn))
	}
	if s.driver != DriverPostgres {
		opts = nil // SQLite is serializable; it takes no isolation option
	}
	return classify(crdb.ExecuteCtx(crdb.WithMaxRetries(ctx, txAttempts), func(ctx context.Context, _ ...any) error {
		tx, err := s.db.BeginTx(ctx, opts)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}))
}

// txAttempts bounds the whole-transaction retries on PostgreSQL: enough for
// a burst of writers on one row (a token redeemed by many at once).
const txAttempts = 50

// classify maps the engines' constraint errors to the store's sentinels.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation
			return fmt.Errorf("%w: %s", ErrExists, pe.Detail)
		case "23503": // foreign_key_violation
			return fmt.Errorf("%w: refers to an object that does not exist", ErrInvalid)
		}
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %v", ErrExists, se)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("%w: refers to an object that does not exist", ErrInvalid)
		}
	}
	return err
}

// newID returns a random id: 128 bits, base32, lower case. Ids are never
// derived from names or sequences (Paralus derived secrets from ids).
func newID() string { return strings.ToLower(rand.Text()) }

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// Page asks for one page of a list.
type Page struct {
	// Limit is the most items to return; 0 means DefaultLimit, and more
	// than MaxLimit is cut to MaxLimit.
	Limit int
	// Continue is the token from the previous page; empty starts at the
	// beginning.
	Continue string
}

// Page sizes.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

func (p Page) limit() int {
	switch {
	case p.Limit <= 0:
		return DefaultLimit
	case p.Limit > MaxLimit:
		return MaxLimit
	}
	return p.Limit
}

// after decodes the continue token: the sort key of the last item seen.
func (p Page) after() (string, error) {
	if p.Continue == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(p.Continue)
	if err != nil || !strings.HasPrefix(string(b), "k:") {
		return "", ErrBadContinue
	}
	return string(b[2:]), nil
}

func continueToken(lastKey string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("k:" + lastKey))
}

// list runs a keyset-paginated query. query must select rows ordered by a
// unique key, filtered by "key > $1" and limited by "$2"; scan returns each
// row's key.
func list[T any](ctx context.Context, s *Store, p Page, query string, args []any, scan func(*sql.Rows) (T, string, error)) ([]T, string, error) {
	after, err := p.after()
	if err != nil {
		return nil, "", err
	}
	limit := p.limit()
	rows, err := s.db.QueryContext(ctx, query, append([]any{after, limit + 1}, args...)...)
	if err != nil {
		return nil, "", fmt.Errorf("store: list: %w", err)
	}
	defer rows.Close()
	var out []T
	var keys []string
	for rows.Next() {
		v, key, err := scan(rows)
		if err != nil {
			return nil, "", fmt.Errorf("store: list: %w", err)
		}
		out, keys = append(out, v), append(keys, key)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("store: list: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = continueToken(keys[limit-1])
	}
	return out, next, nil
}

// one maps sql.ErrNoRows to ErrNotFound.
func one(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: %s", ErrNotFound, what)
	}
	if err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	return nil
}

// updated checks that an UPDATE ... WHERE id AND version hit its row:
// ErrNotFound when the row is gone, ErrConflict when its version moved.
func updated(ctx context.Context, tx *sql.Tx, res sql.Result, table, id string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 1 {
		return nil
	}
	var x int
	err = tx.QueryRowContext(ctx, `SELECT 1 FROM `+table+` WHERE id = $1`, id).Scan(&x)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: %s %s", ErrNotFound, table, id)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s %s", ErrConflict, table, id)
}

// deleted checks that a DELETE hit its row.
func deleted(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, what)
	}
	return nil
}
