package archtest

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/gatehouse-dev/gatehouse"

// deps returns, for every package of the module, the module's packages it
// depends on, directly or not (go list -deps).
func deps(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	m := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		pkg := strings.TrimPrefix(f[0], module+"/")
		for _, d := range f[1:] {
			switch {
			case d == "testing", strings.Contains(d, "kfake"):
				m[pkg] = append(m[pkg], d)
			case strings.HasPrefix(d, module+"/"):
				m[pkg] = append(m[pkg], strings.TrimPrefix(d, module+"/"))
			}
		}
	}
	return m
}

func under(pkg, root string) bool { return pkg == root || strings.HasPrefix(pkg, root+"/") }

// TestImportDirections holds the rules of issue 9 (and design 0001): the
// tunnel never depends on the control plane; the control plane never on
// the tunnel or the node; audit on nothing of ours; the ring never on the
// control plane; the node never on the agent; the CLI's API client never
// on the API server; the release binary never on kfake, and on package
// testing only through hashicorp/raft.
func TestImportDirections(t *testing.T) {
	all := deps(t)
	rules := []struct {
		from, to, why string
	}{
		{"tunnel", "control", "the tunnel and the agent do not know the control plane"},
		{"control", "tunnel", "the control plane does not know the tunnel"},
		{"control", "node", "the control plane does not know the node"},
		{"ring", "control", "the ring does not know the control plane"},
		{"node", "tunnel/agent", "the gateway does not link the agent"},
		{"control/apiclient", "control/api", "the CLI's client does not link the API server"},
		{"loadtest", "node", "the load generator is a client: it drives a gateway from outside"},
		{"loadtest", "ring", "the load generator is a client: it drives a gateway from outside"},
		{"loadtest", "internal/gateway", "the load generator is a client: it drives a gateway from outside"},
		{"loadtest", "control/api", "the load generator is a client: it drives a gateway from outside"},
	}
	for pkg, ds := range all {
		for _, r := range rules {
			if !under(pkg, r.from) {
				continue
			}
			for _, d := range ds {
				if under(d, r.to) && !under(d, r.from) {
					t.Errorf("%s depends on %s: %s", pkg, d, r.why)
				}
			}
		}
		if under(pkg, "audit") {
			for _, d := range ds {
				if d != "testing" && !strings.Contains(d, "kfake") && !under(d, "audit") {
					t.Errorf("audit depends on %s: audit imports no other Gatehouse package", d)
				}
			}
		}
	}
	for _, d := range all["cmd/gatehouse"] {
		if strings.Contains(d, "kfake") || under(d, "internal/nodetest") {
			t.Errorf("the release binary links %s", d)
		}
	}
	// Package testing itself may be linked only through hashicorp/raft,
	// whose package raft holds its own test helpers (as in Consul, Nomad
	// and Vault); since Go 1.13 importing testing registers no flags
	// until testing.Init. None of our packages may bring it in.
	for _, imp := range testingImporters(t, module+"/cmd/gatehouse") {
		if imp != "github.com/hashicorp/raft" {
			t.Errorf("the release binary links package testing through %s", imp)
		}
	}
	if len(all["cmd/gatehouse"]) == 0 || len(all["node"]) == 0 {
		t.Fatalf("go list found nothing: %v", all)
	}
}

// testingImporters returns the packages in pkg's dependencies that import
// package testing directly.
func testingImporters(t *testing.T, pkg string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, pkg)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var imps []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for _, i := range f[1:] {
			if i == "testing" {
				imps = append(imps, f[0])
			}
		}
	}
	return imps
}
