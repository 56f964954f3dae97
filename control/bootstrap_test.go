package control

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestBootstrapTokens(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	b := NewBootstrapTokens(func() time.Time { return now })
	tok, err := b.Create("prod", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := b.Redeem(tok, "uid-A"); err != nil || c != "prod" {
		t.Fatalf("first use: %q %v", c, err)
	}
	if _, err := b.Redeem(tok, "uid-A"); !errors.Is(err, ErrTokenUsed) {
		t.Fatalf("second use, same cluster: %v", err)
	}
	if _, err := b.Redeem(tok, "uid-B"); !errors.Is(err, ErrTokenUsed) {
		t.Fatalf("second use, other cluster: %v", err)
	}

	tok2, _ := b.Create("stage", time.Hour)
	now = now.Add(2 * time.Hour)
	if _, err := b.Redeem(tok2, "uid-C"); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}

	tok3, _ := b.Create("dev", time.Hour)
	tok4, _ := b.Create("dev", time.Hour) // replaces tok3
	if _, err := b.Redeem(tok3, "uid-D"); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("replaced token: %v", err)
	}
	forged := tok4[:strings.LastIndexByte(tok4, '.')+1] + strings.Repeat("a", 32)
	for _, bad := range []string{"", "gh1..", "x.y.z", forged, tok4 + "x"} {
		if _, err := b.Redeem(bad, "uid-E"); !errors.Is(err, ErrTokenInvalid) {
			t.Fatalf("%q: %v", bad, err)
		}
	}
	if _, err := b.Redeem(tok4, ""); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("no fingerprint: %v", err)
	}
	if c, err := b.Redeem(tok4, "uid-E"); err != nil || c != "dev" {
		t.Fatalf("tok4: %q %v", c, err)
	}
}
