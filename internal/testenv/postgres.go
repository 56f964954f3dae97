package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a PostgreSQL server of its own, standing in for CockroachDB
// (which cannot be installed here). Schema code must stay within what
// CockroachDB accepts; tests run it here.
type Postgres struct {
	// DSN reaches the "gatehouse" database as its owner, with a password.
	DSN string
	// Dir is the server's directory (data, socket, log).
	Dir string

	proc      *process
	closeOnce sync.Once
}

// PostgresConfig configures StartPostgres.
type PostgresConfig struct {
	// StartTimeout bounds initdb and start-up (a few seconds normally).
	StartTimeout time.Duration
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
}

// DefaultPostgresConfig returns a configuration with a 60 s start timeout.
func DefaultPostgresConfig() PostgresConfig { return PostgresConfig{StartTimeout: time.Minute} }

// ErrNoPostgres is returned when no PostgreSQL server binaries are installed.
var ErrNoPostgres = errors.New("testenv: PostgreSQL server binaries not found (apt-get install postgresql, or set GATEHOUSE_PG_BIN)")

// pgBinDir finds initdb and postgres: $GATEHOUSE_PG_BIN, the newest Debian
// /usr/lib/postgresql/N/bin, or PATH.
func pgBinDir() (string, error) {
	if d := os.Getenv("GATEHOUSE_PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}

// StartPostgres runs initdb into a new directory and starts the server on a
// free loopback port. PostgreSQL refuses to run as root, so as root the
// server runs as the unprivileged user "nobody".
func StartPostgres(ctx context.Context, cfg PostgresConfig) (_ *Postgres, err error) {
	if cfg.StartTimeout <= 0 {
		return nil, errors.New("testenv: StartTimeout must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	// Not under a test's TempDir: its parents are 0700 and the server may
	// run as another user.
	dir, err := os.MkdirTemp("", "gatehouse-pg-")
	if err != nil {
		return nil, err
	}
	pg := &Postgres{Dir: dir}
	defer func() {
		if err != nil {
			pg.Close()
		}
	}()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return nil, fmt.Errorf("testenv: running as root needs user nobody for PostgreSQL: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	password := randomHex(16)
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(pwfile, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "gatehouse", "--pwfile="+pwfile, "--auth=scram-sha-256",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testenv: initdb: %w\n%s", err, out)
	}
	os.Remove(pwfile)
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "postgres.log")
	if f, err := os.Create(logPath); err == nil {
		f.Close()
		if cred != nil {
			os.Chown(logPath, int(cred.Uid), int(cred.Gid))
		}
	}
	pg.proc, err = startProcess("postgres", logPath, filepath.Join(bin, "postgres"), []string{
		"-D", data, "-p", strconv.Itoa(port), "-h", "127.0.0.1", "-k", dir,
		// Disposable data: durability settings off for speed.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200",
	}, procOptions{dir: dir, cred: cred, stopSig: syscall.SIGINT /* fast shutdown */})
	if err != nil {
		return nil, err
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword("gatehouse", password), Host: hostPort(port), Path: "/postgres", RawQuery: "sslmode=disable"}
	admin := u.String()
	if err := pg.proc.waitReady(ctx, func(ctx context.Context) error {
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			return err
		}
		return c.Close(ctx)
	}); err != nil {
		return nil, err
	}
	c, err := pgx.Connect(ctx, admin)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "CREATE DATABASE gatehouse"); err != nil {
		return nil, fmt.Errorf("testenv: create database: %w", err)
	}
	u.Path = "/gatehouse"
	pg.DSN = u.String()
	if cfg.Logger != nil {
		cfg.Logger.Info("postgres ready", "addr", hostPort(port))
	}
	return pg, nil
}

// Pid returns the postmaster's process id.
func (pg *Postgres) Pid() int { return pg.proc.Pid() }

// Close stops the server and removes its directory. It is idempotent.
func (pg *Postgres) Close() error {
	pg.closeOnce.Do(func() {
		if pg.proc != nil {
			pg.proc.Close()
		}
		os.RemoveAll(pg.Dir)
	})
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("testenv: crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// NewDatabase creates an empty database on the server, owned by the same
// role, and returns its DSN: tests that share one server each get their
// own schema.
func (pg *Postgres) NewDatabase(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		return "", fmt.Errorf("testenv: postgres: %w", err)
	}
	defer conn.Close(ctx)
	name := "t_" + randomHex(8)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("testenv: create database: %w", err)
	}
	u, err := url.Parse(pg.DSN)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}
