package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"github.com/gatehouse-dev/gatehouse/grant"
)

// The agent's tests against a real API server run with the gateway's
// (node, internal/devsetup); these are its own, of pure logic, and they
// check it leaks no goroutine.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Kube, good.GatewayURL, good.GatewayCA = &rest.Config{Host: "https://k"}, "https://gw.example:8443", []byte("x")
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no kube":        func(c *Config) { c.Kube = nil },
		"http gateway":   func(c *Config) { c.GatewayURL = "http://gw.example" },
		"no CA":          func(c *Config) { c.GatewayCA = nil },
		"short tokens":   func(c *Config) { c.TokenTTL = time.Minute },
		"idle < token":   func(c *Config) { c.IdleTTL = 30 * time.Minute },
		"no sweep":       func(c *Config) { c.SweepInterval = 0 },
		"no namespace":   func(c *Config) { c.Namespace = "" },
		"no renew check": func(c *Config) { c.RenewCheckInterval = 0 },
	} {
		c := good
		mutate(&c)
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Names of a person's objects are DNS-safe, reveal nothing of the person,
// and differ between two agents (namespaces) on one API server.
func TestNamesAreSafeAndPerAgent(t *testing.T) {
	sa := ServiceAccountName("ada@example.com")
	if errs := validation.IsDNS1123Label(sa); len(errs) > 0 || strings.Contains(sa, "ada") || sa != ServiceAccountName("ada@example.com") || sa == ServiceAccountName("bob@example.com") {
		t.Fatalf("service account name %q: %v", sa, errs)
	}
	grants := []grant.Grant{{Role: grant.View}, {Role: grant.Edit, Namespace: "team"}}
	one, two := NewJIT(nil, "agent-one", time.Hour, nil), NewJIT(nil, "agent-two", time.Hour, nil)
	a, b := one.desired("ada", grants), two.desired("ada", grants)
	if len(a) != 2 || len(b) != 2 {
		t.Fatalf("bindings: %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i].name == b[i].name {
			t.Fatalf("two agents name a binding alike: %s", a[i].name)
		}
		if errs := validation.IsDNS1123Subdomain(a[i].name); len(errs) > 0 {
			t.Fatalf("binding name %q: %v", a[i].name, errs)
		}
	}
}

// A stream without the gateway's identity frame is refused.
func TestProxyRefusesAStreamWithoutIdentity(t *testing.T) {
	p, err := NewProxy(&rest.Config{Host: "https://127.0.0.1:1"}, NewJIT(nil, "ns", time.Hour, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	w := httptest.NewRecorder()
	p.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/api/v1/namespaces", nil))
	if w.Code != http.StatusBadRequest {
		t.Fatalf("status %d", w.Code)
	}
}
