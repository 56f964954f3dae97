package loadtest

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := DefaultConfig()
	good.Server, good.Token, good.CAPEM = "https://127.0.0.1:8443", "tok", []byte("pem")
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"http server":   func(c *Config) { c.Server = "http://127.0.0.1:8443" },
		"no host":       func(c *Config) { c.Server = "https://" },
		"no token":      func(c *Config) { c.Token = "" },
		"no CA":         func(c *Config) { c.CAPEM = nil },
		"no project":    func(c *Config) { c.Project = "" },
		"no agents":     func(c *Config) { c.Agents = 0 },
		"no parallel":   func(c *Config) { c.Parallel = 0 },
		"neg clients":   func(c *Config) { c.Clients = -1 },
		"relative path": func(c *Config) { c.Path = "api/v1" },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "server") {
		t.Fatalf("New of an empty config: %v", err)
	}
}

// Failures of many connections count as one kind.
func TestErrorKind(t *testing.T) {
	a := errors.New("read tcp 127.0.0.1:5000->127.0.0.1:8443: read: connection reset by peer")
	b := errors.New("read tcp 127.0.0.1:5001->127.0.0.1:8443: read: connection reset by peer")
	if errorKind(a) != errorKind(b) || errorKind(a) != "connection reset by peer" {
		t.Fatalf("%q %q", errorKind(a), errorKind(b))
	}
	if got := errorKind(errors.New("EOF")); got != "EOF" {
		t.Fatal(got)
	}
}
