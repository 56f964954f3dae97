package identity

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
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
	if _, err := NewSSOProviders([]SSOProvider{good, good}, nil); err == nil {
		t.Error("a provider configured twice was accepted")
	}
}

func TestPresets(t *testing.T) {
	for _, c := range []struct {
		p        SSOProvider
		provider string
		issuer   string
		syncs    bool
	}{
		{p: SSOProvider{ID: "corp", IssuerURL: "https://idp.example.com"}, provider: "generic", issuer: "https://idp.example.com", syncs: true},
		{p: SSOProvider{ID: "okta", Preset: PresetOkta, IssuerURL: "https://acme.okta.com/oauth2/default"}, provider: "generic", issuer: "https://acme.okta.com/oauth2/default", syncs: true},
		{p: SSOProvider{ID: "gl", Preset: PresetGitLab}, provider: "gitlab", issuer: "https://gitlab.com", syncs: true},
		{p: SSOProvider{ID: "g", Preset: PresetGoogle}, provider: "google", syncs: false},
		{p: SSOProvider{ID: "gh", Preset: PresetGitHub}, provider: "github", syncs: false},
	} {
		c.p.ClientID, c.p.ClientSecret = "client", "secret"
		if err := c.p.Validate(); err != nil {
			t.Errorf("%s: %v", c.p.ID, err)
			continue
		}
		k := c.p.KratosConfig()
		if k["provider"] != c.provider || k["id"] != c.p.ID || k["client_secret"] != "secret" {
			t.Errorf("%s: Kratos config %v", c.p.ID, k)
		}
		if iss, _ := k["issuer_url"].(string); c.issuer != "" && iss != c.issuer {
			t.Errorf("%s: issuer_url %q, want %q", c.p.ID, iss, c.issuer)
		}
		mapper, _ := k["mapper_url"].(string)
		if !strings.HasPrefix(mapper, "base64://") {
			t.Errorf("%s: mapper_url %q", c.p.ID, mapper)
		}
		scopes, _ := k["scope"].([]string)
		if c.provider == "generic" && !slices.Contains(scopes, "offline_access") {
			t.Errorf("%s: scopes %v lack offline_access: Kratos would keep no refresh token", c.p.ID, scopes)
		}
		if c.p.SyncsGroups() != c.syncs {
			t.Errorf("%s: SyncsGroups %v, want %v", c.p.ID, !c.syncs, c.syncs)
		}
		r, err := NewSSOProviders([]SSOProvider{c.p}, nil)
		if err != nil || r.SyncsGroups(c.p.ID) != c.syncs {
			t.Errorf("%s: providers: %v", c.p.ID, err)
		}
	}
	if err := (SSOProvider{ID: "x", Preset: "saml", IssuerURL: "https://x", ClientID: "c", ClientSecret: "s"}).Validate(); err == nil {
		t.Error("an unknown preset was accepted")
	}
}

// FuzzGroupsClaim: whatever userinfo a provider sends, reading its groups
// claim returns names or an error, never a panic.
func FuzzGroupsClaim(f *testing.F) {
	for _, seed := range []string{`{"groups":["a","b"]}`, `{"groups":"a"}`, `{"groups":[1,{"x":2},null]}`, `{}`, `{"groups":null}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var claims map[string]any
		if json.Unmarshal(data, &claims) != nil {
			return
		}
		groups, err := stringList(claims["groups"])
		if err == nil && !slices.IsSorted(groups) {
			t.Fatalf("groups not sorted: %v", groups)
		}
	})
}
