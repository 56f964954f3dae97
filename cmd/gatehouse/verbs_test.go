package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestGenericVerbs(t *testing.T) {
	ctx := context.Background()
	_, conn, _, _ := apiServer(t)
	cli := func(args ...string) (string, string, error) { return runCLI(ctx, append(args, conn...)...) }

	if _, _, err := cli("create", "project", "billing", "--description", "invoices"); err != nil {
		t.Fatal(err)
	}
	out, _, err := cli("get", "projects", "-o", "json")
	var ps []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &ps) != nil || len(ps) != 2 {
		t.Fatalf("get projects: %v %s", err, out)
	}
	if _, _, err := cli("create", "user", "bea@acme.test"); err != nil {
		t.Fatal(err)
	}
	if out, _, err := cli("get", "users"); err != nil || !strings.Contains(out, "bea@acme.test") || !strings.HasPrefix(out, "ID") {
		t.Fatalf("get users: %v %s", err, out)
	}
	if _, _, err := cli("create", "group", "ops"); err != nil {
		t.Fatal(err)
	}
	if out, _, err := cli("get", "roles", "-o", "yaml"); err != nil || !strings.Contains(out, "NAMESPACE_READ_ONLY") {
		t.Fatalf("get roles: %v %s", err, out)
	}
	if out, _, err := cli("delete", "group", "ops"); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete group: %v %s", err, out)
	}
	if _, _, err := cli("delete", "group", "ops"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("delete twice: %v", err)
	}
	// An API token cannot mint another.
	if _, _, err := cli("create", "token", "ci"); err == nil || !strings.Contains(err.Error(), "session") {
		t.Fatalf("token from a token: %v", err)
	}
	if _, _, err := cli("get", "robots"); err == nil || !strings.Contains(err.Error(), "unknown kind") {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, _, err := cli("delete", "role", "ADMIN"); err == nil {
		t.Fatal("deleted a built-in role")
	}
	out, _, err = runCLI(ctx, "completion", "bash")
	if err != nil || !strings.Contains(out, "complete -F _gatehouse gatehouse") || !strings.Contains(out, "rolebindings") {
		t.Fatalf("completion: %v %s", err, out)
	}
}
