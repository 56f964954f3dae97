package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/control/store"
)

const applyDocs = `kind: Project
name: payments
description: card processing
---
kind: Cluster
name: pay-eu
project: payments
---
kind: User
email: nora@acme.test
---
kind: Group
name: sre
idpGroups: ["github:acme/sre"]
members: ["nora@acme.test"]
---
kind: RoleBinding
subject: {kind: group, name: sre}
role: NAMESPACE_READ_ONLY
project: payments
namespace: web
---
kind: RoleBinding
subject: {kind: user, name: nora@acme.test}
role: PROJECT_READ_ONLY
project: payments
`

func TestApplyIsIdempotent(t *testing.T) {
	ctx := context.Background()
	st, conn, _, _ := apiServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "gatehouse.yaml")
	os.WriteFile(file, []byte(applyDocs), 0o600)
	apply := func() (string, string, error) { return runCLI(ctx, append([]string{"apply", "-f", file}, conn...)...) }

	out, notes, err := apply()
	if err != nil {
		t.Fatalf("apply: %v\n%s%s", err, out, notes)
	}
	// Ordered so that what a document names exists first.
	want := []string{"project/payments created", "user/nora@acme.test created", "group/sre created", "cluster/pay-eu created",
		"rolebinding/group:sre:NAMESPACE_READ_ONLY@payments/web created", "rolebinding/user:nora@acme.test:PROJECT_READ_ONLY@payments/ created"}
	if got := strings.Split(strings.TrimSpace(out), "\n"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("first apply:\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
	if !strings.Contains(notes, "gatehouse cluster bootstrap pay-eu") {
		t.Fatalf("no bootstrap hint: %s", notes)
	}
	out, _, err = apply()
	if err != nil || strings.Count(out, "unchanged") != 6 {
		t.Fatalf("second apply changed something: %v\n%s", err, out)
	}
	os.WriteFile(file, []byte(strings.Replace(applyDocs, "card processing", "cards", 1)), 0o600)
	if out, _, err = apply(); err != nil || !strings.Contains(out, "project/payments updated") {
		t.Fatalf("changed description: %v\n%s", err, out)
	}
	bindings, _, _ := st.ListBindings(ctx, store.BindingFilter{}, store.Page{})
	if len(bindings) != 3 { // the admin's and the two applied
		t.Fatalf("%d bindings after three applies", len(bindings))
	}

	// A bad document anywhere: nothing is applied, and the error names the
	// document and the field.
	os.WriteFile(file, []byte("kind: Project\nname: fresh\n---\nkind: Cluster\nname: c2\nproject: fresh\nregion: eu\n"), 0o600)
	if _, _, err := apply(); err == nil || !strings.Contains(err.Error(), "#2") || !strings.Contains(err.Error(), "region") {
		t.Fatalf("bad document: %v", err)
	}
	os.WriteFile(file, []byte("kind: Robot\nname: r\n"), 0o600)
	if _, _, err := apply(); err == nil || !strings.Contains(err.Error(), `unknown kind "Robot"`) {
		t.Fatalf("unknown kind: %v", err)
	}
	ps, _, _ := st.ListProjects(ctx, bindings[0].OrgID, store.Page{})
	for _, p := range ps {
		if p.Name == "fresh" {
			t.Fatal("a file with a bad document was partly applied")
		}
	}
}
