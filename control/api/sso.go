package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/gatehouse-dev/gatehouse/control/identity"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// SSOConfig lets the login read a person's current groups at their SSO
// provider (Kratos v1.3 maps the provider's claims only at registration).
type SSOConfig struct {
	// Providers refreshes the person's tokens at their provider and reads
	// the groups claim from userinfo.
	Providers *identity.SSOProviders
	// Sealer encrypts the refresh tokens the store keeps.
	Sealer *identity.Sealer
}

// ssoGroups returns the groups the session's provider says the person is
// in now. The refresh token to use is the newest one the store keeps for
// the person, unless Kratos holds a newer link (the person linked the
// provider again), whose token then starts a new chain.
func (a *API) ssoGroups(ctx context.Context, userID string, s *identity.Session) ([]string, error) {
	sso := a.cfg.SSO
	subject, initial, err := a.cfg.Identity.OIDCCredential(ctx, s.IdentityID, s.Provider)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(initial))
	source := hex.EncodeToString(sum[:])
	ad := userID + "/" + s.Provider
	refresh := initial
	kept, err := a.cfg.Store.GetSSOToken(ctx, userID, s.Provider)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, err
	case kept.Source == source && kept.Subject == subject:
		plain, err := sso.Sealer.Open(kept.Sealed, ad)
		if err != nil {
			// A changed token key: Kratos's token is the only one left.
			a.log.Warn("api: kept SSO token does not open", "user", userID, "provider", s.Provider, "err", err)
			break
		}
		refresh = string(plain)
	}
	groups, next, err := sso.Providers.Groups(ctx, s.Provider, subject, refresh)
	if err != nil {
		return nil, err
	}
	err = a.cfg.Store.PutSSOToken(ctx, &store.SSOToken{UserID: userID, Provider: s.Provider, Subject: subject,
		Source: source, Sealed: sso.Sealer.Seal([]byte(next), ad)})
	return groups, err
}

// provision adds a person who signed in through an SSO provider that
// provisions people (SSOProvider.ProvisionOrg) and has no account yet.
// They get no access of their own: only what their IdP groups map to.
func (a *API) provision(ctx context.Context, s *identity.Session) (*store.User, error) {
	if a.cfg.SSO == nil || s.Provider == "" || s.Email == "" {
		return nil, store.ErrNotFound
	}
	orgName := a.cfg.SSO.Providers.ProvisionOrg(s.Provider)
	if orgName == "" {
		return nil, store.ErrNotFound
	}
	org, err := a.cfg.Store.GetOrg(ctx, orgName)
	if err != nil {
		return nil, fmt.Errorf("api: SSO provider %s provisions into organization %q: %w", s.Provider, orgName, err)
	}
	u := &store.User{OrgID: org.ID, Email: s.Email, Display: s.Name}
	if err := a.cfg.Store.CreateUser(ctx, u); err != nil {
		if errors.Is(err, store.ErrExists) {
			// A concurrent first login made them.
			return a.cfg.Store.GetUser(ctx, s.Email)
		}
		return nil, err
	}
	return u, nil
}
