package testenv

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Kratos is an Ory Kratos server on SQLite with password login enabled and
// an identity schema whose traits are an email (the login identifier) and a
// display name.
type Kratos struct {
	// PublicURL serves the self-service flows (login, sessions).
	PublicURL string
	// AdminURL serves the admin API (identities).
	AdminURL string
	// Dir holds the configuration, the database and the log.
	Dir string

	proc      *process
	tempDir   bool
	closeOnce sync.Once
}

// KratosConfig configures StartKratos.
type KratosConfig struct {
	// Dir holds the state; empty means a temporary directory that Close
	// removes.
	Dir string
	// StartTimeout bounds migration and start-up; both take a few seconds.
	StartTimeout time.Duration
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
}

// DefaultKratosConfig returns a configuration with a 90 s start timeout.
func DefaultKratosConfig() KratosConfig { return KratosConfig{StartTimeout: 90 * time.Second} }

//go:embed assets/kratos.yml
var kratosConfigTemplate string

//go:embed assets/identity.schema.json
var kratosIdentitySchema []byte

// StartKratos writes a configuration, migrates the SQLite database with
// `kratos migrate sql` and serves until Close.
func StartKratos(ctx context.Context, cfg KratosConfig) (_ *Kratos, err error) {
	if cfg.StartTimeout <= 0 {
		return nil, errors.New("testenv: StartTimeout must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	bin, err := Tool("kratos")
	if err != nil {
		return nil, err
	}
	kr := &Kratos{Dir: cfg.Dir}
	if kr.Dir == "" {
		if kr.Dir, err = os.MkdirTemp("", "gatehouse-kratos-"); err != nil {
			return nil, err
		}
		kr.tempDir = true
	} else if err := os.MkdirAll(kr.Dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			kr.Close()
		}
	}()
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	kr.PublicURL = "http://" + hostPort(ports[0])
	kr.AdminURL = "http://" + hostPort(ports[1])
	schema := filepath.Join(kr.Dir, "identity.schema.json")
	dsn := "sqlite://" + filepath.Join(kr.Dir, "kratos.sqlite") + "?_fk=true&mode=rwc"
	conf := strings.NewReplacer(
		"{{DSN}}", dsn,
		"{{PUBLIC_PORT}}", strconv.Itoa(ports[0]),
		"{{ADMIN_PORT}}", strconv.Itoa(ports[1]),
		"{{SCHEMA}}", "file://"+schema,
		"{{COOKIE_SECRET}}", randomHex(16),
		"{{CIPHER_SECRET}}", randomHex(16),
	).Replace(kratosConfigTemplate)
	confPath := filepath.Join(kr.Dir, "kratos.yml")
	if err := writeFiles(map[string][]byte{confPath: []byte(conf), schema: kratosIdentitySchema}); err != nil {
		return nil, err
	}
	// No usage statistics are sent anywhere.
	env := []string{"SQA_OPT_OUT=true", "DSN=" + dsn}
	migrate := exec.CommandContext(ctx, bin, "migrate", "sql", "-e", "--yes", "--config", confPath)
	migrate.Env = append(os.Environ(), env...)
	migrate.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := migrate.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testenv: kratos migrate: %w\n%s", err, out)
	}
	kr.proc, err = startProcess("kratos", filepath.Join(kr.Dir, "kratos.log"), bin,
		[]string{"serve", "--config", confPath, "--sqa-opt-out"}, procOptions{env: env, dir: kr.Dir})
	if err != nil {
		return nil, err
	}
	c := &http.Client{Timeout: 2 * time.Second}
	if err := kr.proc.waitReady(ctx, httpOK(c, kr.AdminURL+"/admin/health/ready")); err != nil {
		return nil, err
	}
	if err := kr.proc.waitReady(ctx, httpOK(c, kr.PublicURL+"/health/ready")); err != nil {
		return nil, err
	}
	if cfg.Logger != nil {
		cfg.Logger.Info("kratos ready", "public", kr.PublicURL, "admin", kr.AdminURL)
	}
	return kr, nil
}

// Pid returns the server's process id.
func (kr *Kratos) Pid() int { return kr.proc.Pid() }

// Close stops the server and removes a temporary directory. It is idempotent.
func (kr *Kratos) Close() error {
	kr.closeOnce.Do(func() {
		if kr.proc != nil {
			kr.proc.Close()
		}
		if kr.tempDir {
			os.RemoveAll(kr.Dir)
		}
	})
	return nil
}
