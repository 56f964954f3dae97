package identity

import (
	"bytes"
	"slices"
	"testing"
)

func TestSealerBindsTheRow(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	sealed := s.Seal([]byte("refresh-token"), "user-1/corp")
	if bytes.Contains(sealed, []byte("refresh-token")) {
		t.Fatal("the token is in the clear")
	}
	if again := s.Seal([]byte("refresh-token"), "user-1/corp"); bytes.Equal(again, sealed) {
		t.Fatal("two seals of one token are equal: the nonce repeats")
	}
	got, err := s.Open(sealed, "user-1/corp")
	if err != nil || string(got) != "refresh-token" {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := s.Open(sealed, "user-2/corp"); err == nil {
		t.Fatal("a token sealed for one person opened for another")
	}
	other, _ := NewSealer(bytes.Repeat([]byte{8}, 32))
	if _, err := other.Open(sealed, "user-1/corp"); err == nil {
		t.Fatal("another key opened the token")
	}
	if _, err := s.Open(sealed[:5], "user-1/corp"); err == nil {
		t.Fatal("a truncated value opened")
	}
	if _, err := NewSealer(key[:16]); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}

func TestGroupsClaim(t *testing.T) {
	for _, c := range []struct {
		in   any
		want []string
		bad  bool
	}{
		{in: nil, want: nil},
		{in: []any{"b", "a", "b"}, want: []string{"a", "b"}},
		{in: []any{}, want: []string{}},
		{in: "admins", bad: true},
		{in: []any{"a", 1.0}, bad: true},
	} {
		got, err := stringList(c.in)
		if (err != nil) != c.bad || (!c.bad && !slices.Equal(got, c.want)) {
			t.Errorf("stringList(%v) = %v, %v", c.in, got, err)
		}
	}
}

func TestSSOProviderValidate(t *testing.T) {
	good := SSOProvider{ID: "corp", IssuerURL: "https://login.example.com", ClientID: "c", ClientSecret: "s"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []SSOProvider{
		{IssuerURL: good.IssuerURL, ClientID: "c", ClientSecret: "s"},
		{ID: "corp", IssuerURL: "login.example.com", ClientID: "c", ClientSecret: "s"},
		{ID: "corp", IssuerURL: good.IssuerURL, ClientID: "c"},
	} {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if _, err := NewGroupReader([]SSOProvider{good, good}, nil); err == nil {
		t.Error("a provider configured twice was accepted")
	}
}
