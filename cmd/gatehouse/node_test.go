package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func TestMigrateCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	out, _, err := runCLI(ctx, "migrate", "--state-dir", dir)
	if err != nil || !strings.Contains(out, "applied migrations [1 2 3]") {
		t.Fatalf("migrate: %v %s", err, out)
	}
	if out, _, err := runCLI(ctx, "migrate", "--state-dir", dir); err != nil || !strings.Contains(out, "up to date at version 3") {
		t.Fatalf("migrate again: %v %s", err, out)
	}
	pg := testenv.PostgresT(t)
	if out, _, err := runCLI(ctx, "migrate", "--store-driver", "postgres", "--store-dsn", pg.DSN); err != nil || !strings.Contains(out, "applied migrations") {
		t.Fatalf("migrate postgres: %v %s", err, out)
	}
	if _, _, err := runCLI(ctx, "migrate", "--store-driver", "mysql", "--store-dsn", "x"); err == nil || !strings.Contains(err.Error(), "Driver") {
		t.Fatalf("bad driver: %v", err)
	}
}

func TestNodeCommandServes(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--addr", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "gatehouse migrate") {
		t.Fatalf("node on an empty store: %v", err)
	}
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--access-cache-ttl", "1h"); err == nil || !strings.Contains(err.Error(), "access-cache-ttl") {
		t.Fatalf("node with an hour's access cache: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, stderr, err := runCLI(ctx, "node", "--state-dir", dir, "--addr", addr, "--migrate", "--log-level", "warn")
		if err != nil {
			err = &cliError{err, stderr}
		}
		done <- err
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	}()
	var pool *x509.CertPool
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "ca.crt")); err == nil {
			pool = x509.NewCertPool()
			if pool.AppendCertsFromPEM(b) {
				c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
				resp, err := c.Get("https://" + addr + "/api/v1/openapi.json")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Fatalf("openapi: %d", resp.StatusCode)
					}
					resp, err = c.Get("https://" + addr + "/api/v1/whoami")
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusUnauthorized {
						t.Fatalf("whoami without credentials: %d", resp.StatusCode)
					}
					c.CloseIdleConnections()
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("node did not serve")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type cliError struct {
	err    error
	stderr string
}

func (e *cliError) Error() string { return e.err.Error() + ": " + e.stderr }

func TestNodeSSOFlags(t *testing.T) {
	dir := t.TempDir()
	providers := filepath.Join(dir, "sso.yaml")
	key := filepath.Join(dir, "token.key")
	os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600)
	base := []string{"node", "--state-dir", dir, "--addr", "127.0.0.1:0", "--kratos-public-url", "http://127.0.0.1:1", "--kratos-admin-url", "http://127.0.0.1:2"}
	for _, c := range []struct {
		yaml, key, want string
	}{
		{yaml: "- {id: corp, issuer: https://login.example.com, clientID: c, clientSecret: s}\n", want: "--token-key-file"},
		{yaml: "- {id: corp, issuer: https://login.example.com, clientID: c, clientSecret: s, scope: x}\n", key: key, want: "unknown field"},
		{yaml: "- {id: corp, issuer: login.example.com, clientID: c, clientSecret: s}\n", key: key, want: "must be an http(s) URL"},
		{yaml: "- {id: corp, issuer: https://login.example.com, clientID: c}\n", key: key, want: "clientSecret are required"},
		{yaml: "- {id: corp, issuer: https://login.example.com, clientID: c, clientSecret: s}\n", key: providers, want: "--token-key-file"},
	} {
		os.WriteFile(providers, []byte(c.yaml), 0o600)
		args := append(slices.Clone(base), "--sso-providers", providers)
		if c.key != "" {
			args = append(args, "--token-key-file", c.key)
		}
		if _, _, err := runCLI(context.Background(), args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s with key %q: %v, want an error naming %q", c.yaml, c.key, err, c.want)
		}
	}
}
