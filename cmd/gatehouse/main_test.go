package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRunUsage(t *testing.T) {
	ctx := context.Background()
	var out, errb bytes.Buffer
	if err := run(ctx, nil, &out, &errb); !errors.Is(err, errUsage) {
		t.Fatalf("no args: %v", err)
	}
	if !strings.Contains(errb.String(), "node") {
		t.Fatalf("usage does not list commands: %q", errb.String())
	}
	errb.Reset()
	if err := run(ctx, []string{"frobnicate"}, &out, &errb); !errors.Is(err, errUsage) || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %v %q", err, errb.String())
	}
	if err := run(ctx, []string{"node", "-addr", "nohostport"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "nohostport") {
		t.Fatalf("bad addr: %v", err)
	}
	if err := run(ctx, []string{"node", "-log-level", "loud"}, &out, &errb); !errors.Is(err, errUsage) {
		t.Fatalf("bad log level: %v", err)
	}
	out.Reset()
	if err := run(ctx, []string{"version"}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "gatehouse ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}
