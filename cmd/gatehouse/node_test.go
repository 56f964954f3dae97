package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/store"
	"github.com/gatehouse-dev/gatehouse/internal/testenv"
)

func TestMigrateCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	all := store.Migrations()
	if len(all) < 4 || all[0] != 1 {
		t.Fatalf("embedded migrations %v", all)
	}
	out, _, err := runCLI(ctx, "migrate", "--state-dir", dir)
	if err != nil || !strings.Contains(out, fmt.Sprintf("applied migrations %v", all)) {
		t.Fatalf("migrate: %v %s", err, out)
	}
	if out, _, err := runCLI(ctx, "migrate", "--state-dir", dir); err != nil || !strings.Contains(out, fmt.Sprintf("up to date at version %d", all[len(all)-1])) {
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
	t.Setenv("GATEHOUSE_CA_KEK", "")
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--addr", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "key-encryption key") {
		t.Fatalf("node without a KEK: %v", err)
	}
	kek := filepath.Join(dir, "kek")
	os.WriteFile(kek, []byte(base64.StdEncoding.EncodeToString(make([]byte, 31))+"\n"), 0o600)
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--ca-kek-file", kek); err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Fatalf("node with a short KEK: %v", err)
	}
	os.WriteFile(kek, []byte(base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))+"\n"), 0o600)
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--addr", "127.0.0.1:0", "--ca-kek-file", kek); err == nil || !strings.Contains(err.Error(), "gatehouse migrate") {
		t.Fatalf("node on an empty store: %v", err)
	}
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--addr", "127.0.0.1:0", "--ca-kek-file", kek, "--migrate"); err == nil || !strings.Contains(err.Error(), "gatehouse ca init") {
		t.Fatalf("node on a store without a CA: %v", err)
	}
	out, _, err := runCLI(context.Background(), "ca", "init", "--state-dir", dir, "--ca-kek-file", kek)
	if err != nil || !strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Fatalf("ca init: %v %s", err, out)
	}
	if _, _, err := runCLI(context.Background(), "ca", "init", "--state-dir", dir, "--ca-kek-file", kek); err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("ca init twice: %v", err)
	}
	t.Setenv("GATEHOUSE_CA_KEK", base64.StdEncoding.EncodeToString([]byte("another key, 32 bytes long......")))
	if _, _, err := runCLI(context.Background(), "node", "--state-dir", dir, "--addr", "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "key-encryption key") {
		t.Fatalf("node with another KEK: %v", err)
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
		_, stderr, err := runCLI(ctx, "node", "--state-dir", dir, "--addr", addr, "--ca-kek-file", kek, "--log-level", "warn")
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
