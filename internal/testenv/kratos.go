package testenv

import (
	"context"
	_ "embed"
	"encoding/json"
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
	// OIDC are entries of Kratos's OIDC providers list
	// (identity.SSOProvider.KratosConfig makes them). With any,
	// self-service registration is on for OIDC only (a person's first SSO
	// login creates their identity); password self-registration stays
	// refused, because Gatehouse links a person provisioned by email to
	// the first identity that logs in with that address.
	OIDC []map[string]any
	// ReturnURLs are further allowed return_to URLs, such as the loopback
	// callback of `gatehouse login --sso`.
	ReturnURLs []string
	// PublicPort fixes the public API's port (SSO providers must know the
	// callback URL in advance); 0 picks a free one.
	PublicPort int
}

// CallbackURL is where an OIDC provider sends the browser back to Kratos.
func (kr *Kratos) CallbackURL(providerID string) string {
	return kr.PublicURL + "/self-service/methods/oidc/callback/" + providerID
}

// DefaultKratosConfig returns a configuration with a 90 s start timeout.
func DefaultKratosConfig() KratosConfig { return KratosConfig{StartTimeout: 90 * time.Second} }

//go:embed assets/kratos.yml
var kratosConfigTemplate string

//go:embed assets/identity.schema.json
var kratosIdentitySchema []byte

//go:embed assets/refuse-registration.jsonnet
var kratosRefuseRegistration []byte

// kratosSSO returns the YAML (JSON) for Kratos's oidc method and the
// registration flow: off without providers; with them, registration by
// OIDC only.
func kratosSSO(dir string, providers []map[string]any) (oidcMethod, registration string, err error) {
	if len(providers) == 0 {
		return `{"enabled": false}`, `{"enabled": false}`, nil
	}
	m, err := json.Marshal(map[string]any{"enabled": true, "config": map[string]any{"providers": providers}})
	if err != nil {
		return "", "", err
	}
	r, err := json.Marshal(map[string]any{
		"enabled": true,
		"ui_url":  "http://127.0.0.1/registration",
		"after": map[string]any{
			"oidc": map[string]any{"hooks": []any{map[string]any{"hook": "session"}}},
			// A web hook whose body template fails refuses the flow before
			// the identity is stored: no password self-registration.
			"password": map[string]any{"hooks": []any{map[string]any{"hook": "web_hook", "config": map[string]any{
				"url": "http://127.0.0.1:1/", "method": "POST", "can_interrupt": true,
				"body": "file://" + filepath.Join(dir, "refuse-registration.jsonnet"),
			}}}},
		},
	})
	return string(m), string(r), err
}

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
	if cfg.PublicPort != 0 {
		ports[0] = cfg.PublicPort
	}
	kr.PublicURL = "http://" + hostPort(ports[0])
	kr.AdminURL = "http://" + hostPort(ports[1])
	schema := filepath.Join(kr.Dir, "identity.schema.json")
	dsn := "sqlite://" + filepath.Join(kr.Dir, "kratos.sqlite") + "?_fk=true&mode=rwc"
	oidcMethod, registration, err := kratosSSO(kr.Dir, cfg.OIDC)
	if err != nil {
		return nil, err
	}
	returnURLs, err := json.Marshal(append([]string{kr.PublicURL + "/"}, cfg.ReturnURLs...))
	if err != nil {
		return nil, err
	}
	conf := strings.NewReplacer(
		"{{OIDC}}", oidcMethod,
		"{{REGISTRATION}}", registration,
		"{{RETURN_URLS}}", string(returnURLs),
		"{{DSN}}", dsn,
		"{{PUBLIC_PORT}}", strconv.Itoa(ports[0]),
		"{{ADMIN_PORT}}", strconv.Itoa(ports[1]),
		"{{SCHEMA}}", "file://"+schema,
		"{{COOKIE_SECRET}}", randomHex(16),
		"{{CIPHER_SECRET}}", randomHex(16),
	).Replace(kratosConfigTemplate)
	confPath := filepath.Join(kr.Dir, "kratos.yml")
	if err := writeFiles(map[string][]byte{
		confPath: []byte(conf), schema: kratosIdentitySchema,
		filepath.Join(kr.Dir, "refuse-registration.jsonnet"): kratosRefuseRegistration,
	}); err != nil {
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
