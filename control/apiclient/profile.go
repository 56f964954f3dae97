package apiclient

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gatehouse-dev/gatehouse/internal/pki"
)

// Profile is what `gatehouse login` keeps for the other commands: where the
// gateway and Kratos are, the CA that verifies the gateway, and the session
// token. It lives in Dir()/profile.json, mode 0600, like a kubeconfig.
type Profile struct {
	Server       string `json:"server"`
	IdentityURL  string `json:"identityURL"`
	CA           string `json:"ca,omitempty"`
	Email        string `json:"email,omitempty"`
	SessionToken string `json:"sessionToken"`
}

// ErrNotLoggedIn is returned when there is no profile.
var ErrNotLoggedIn = errors.New("not logged in: run gatehouse login")

// Dir returns the CLI's state directory: $GATEHOUSE_CONFIG_DIR, else
// $XDG_CONFIG_HOME/gatehouse, else ~/.config/gatehouse.
func Dir() (string, error) {
	if d := os.Getenv("GATEHOUSE_CONFIG_DIR"); d != "" {
		return d, nil
	}
	base, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "gatehouse"), nil
}

// LoadProfile reads the profile in dir.
func LoadProfile(dir string) (*Profile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "profile.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoggedIn
	}
	if err != nil {
		return nil, err
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "profile.json"), err)
	}
	return &p, nil
}

// Save writes the profile to dir (0600), replacing it atomically.
func (p *Profile) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "profile.json"), b)
}

// Remove deletes the profile and the cached credential.
func Remove(dir string) error {
	for _, f := range []string{"profile.json", "credential.json"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Client returns an API client authenticated with the profile's session.
func (p *Profile) Client() (*Client, error) {
	return New(Config{Server: p.Server, Token: p.SessionToken, CAPEM: []byte(p.CA)})
}

// writeFileAtomic replaces path with b, mode 0600: written to a temporary
// file of its own beside path (os.CreateTemp: mode 0600), synced, then
// renamed over it. Two kubectl commands run at once may both renew the
// credential: each writes its own file, and the last rename wins whole (a
// shared ".tmp" name let their writes interleave, and the second rename
// fail for want of its file). renameio does this too, but does not build
// for Windows.
func writeFileAtomic(path string, b []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(b); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// CachedCredential is a client certificate and its key, as the credential
// plugin keeps them between kubectl runs.
type CachedCredential struct {
	Certificate string    `json:"certificate"`
	Key         string    `json:"key"`
	Expires     time.Time `json:"expires"`
	Issued      time.Time `json:"issued"`
	Server      string    `json:"server"`
}

// fresh reports whether c may still be handed to kubectl: it is for this
// server and has more than a tenth of its life (and at least a minute)
// left, so a long kubectl command does not start with a dying certificate.
func (c *CachedCredential) fresh(server string, now time.Time) bool {
	life := c.Expires.Sub(c.Issued)
	return c.Server == server && c.Expires.Sub(now) > max(time.Minute, life/10)
}

// Credential returns a client certificate for kubectl: the cached one while
// fresh, else a new one for a key generated here (the key never leaves
// this machine), renewed from the session.
func (p *Profile) Credential(ctx context.Context, dir string, now time.Time) (*CachedCredential, error) {
	path := filepath.Join(dir, "credential.json")
	if b, err := os.ReadFile(path); err == nil {
		var c CachedCredential
		if json.Unmarshal(b, &c) == nil && c.fresh(p.Server, now) {
			return &c, nil
		}
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gatehouse-user"}}, key)
	if err != nil {
		return nil, err
	}
	c, err := p.Client()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cred, err := c.Credential(ctx, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), "")
	if err != nil {
		return nil, err
	}
	out := &CachedCredential{Certificate: cred.Certificate, Key: string(keyPEM), Expires: cred.Expires, Issued: now, Server: p.Server}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, b); err != nil {
		return nil, err
	}
	return out, nil
}
