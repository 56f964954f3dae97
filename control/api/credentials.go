package api

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/control/apitypes"
	"github.com/gatehouse-dev/gatehouse/control/ca"
	"github.com/gatehouse-dev/gatehouse/control/policy"
	"github.com/gatehouse-dev/gatehouse/control/store"
)

// LoginResult is apitypes.LoginResult.
type LoginResult = apitypes.LoginResult

// login records a Kratos login: it links a person provisioned by email to
// their identity (first login) and replaces their IdP groups with those of
// this login's session (every login, not only the first).
func (a *API) login(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if c.Session == nil {
		return &apiError{status: http.StatusBadRequest, title: "invalid request", detail: "log in with a session, not an API token"}
	}
	if c.User.KratosID != "" && c.User.KratosID != c.Session.IdentityID {
		// Refused before anything is read or kept for the account.
		err := fmt.Errorf("%w: %s is linked to another identity", store.ErrConflict, c.User.Email)
		a.auditChange(r.Context(), r, c, "login", "user/"+c.User.ID, http.StatusConflict, err.Error())
		return err
	}
	idpGroups, warning := c.Session.Groups, ""
	if p := c.Session.Provider; p != "" && a.cfg.SSO != nil && a.cfg.SSO.Providers.SyncsGroups(p) {
		var err error
		if idpGroups, err = a.ssoGroups(r.Context(), c.User.ID, c.Session); err != nil {
			// Fail closed: groups that cannot be confirmed do not count.
			a.log.Warn("api: SSO groups not read", "user", c.User.ID, "provider", p, "err", err)
			idpGroups = nil
			warning = fmt.Sprintf("your groups at %s could not be read, so none of them count until a later login reads them (%v)", p, err)
		}
	}
	if c.provisioned {
		a.auditChange(r.Context(), r, c, "user.provision", "user/"+c.User.ID, http.StatusCreated, "")
	}
	u, err := a.cfg.Store.RecordLogin(r.Context(), c.User.Email, c.Session.IdentityID, idpGroups)
	if err != nil {
		a.auditChange(r.Context(), r, c, "login", "user/"+c.User.ID, http.StatusConflict, err.Error())
		return err
	}
	groups, err := a.cfg.Store.UserGroups(r.Context(), u.ID)
	if err != nil {
		return err
	}
	if !slices.Equal(groups, c.Subject.Groups) {
		// The provider's groups changed the person's access: the gateway
		// ends what they may no longer do and the agents sync their RBAC
		// now, not at their next request.
		a.notify(r.Context(), store.SubjectUser, u.ID)
	}
	org, err := a.cfg.Store.GetOrg(r.Context(), u.OrgID)
	if err != nil {
		return err
	}
	a.auditGroups(r.Context(), r, c, "login", "user/"+u.ID, http.StatusOK, warning, groups)
	if groups == nil {
		groups = []string{}
	}
	return writeJSON(w, http.StatusOK, LoginResult{Whoami: Whoami{ID: u.ID, Email: u.Email, Org: org.Name}, Groups: groups, Warning: warning,
		TrustBundle: string(a.trustBundle())})
}

func (a *API) logout(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if c.Session == nil {
		return &apiError{status: http.StatusBadRequest, title: "invalid request", detail: "only a session can log out; revoke API tokens instead"}
	}
	if err := a.cfg.Identity.Logout(r.Context(), c.SessionToken); err != nil {
		return err
	}
	a.auditChange(r.Context(), r, c, "logout", "user/"+c.User.ID, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// CredentialRequest is apitypes.CredentialRequest.
type CredentialRequest = apitypes.CredentialRequest

// Credential is apitypes.Credential.
type Credential = apitypes.Credential

func (a *API) credentials(w http.ResponseWriter, r *http.Request, c *Caller) error {
	if a.cfg.Issuer == nil {
		return &apiError{status: http.StatusNotFound, title: "not found", detail: "this node does not issue credentials"}
	}
	var in CredentialRequest
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if c.Subject.Limit != nil {
		// A certificate carries the person, and the cluster runs the
		// person's requests as their one service account, whose RBAC
		// follows their full grants: a limited token's certificate would
		// either carry more than the token's limit or, if the gateway
		// narrowed it, flip that shared account's RBAC under the person's
		// other requests. So limited tokens mint no certificates (design
		// 0003).
		a.auditChange(r.Context(), r, c, "credential.issue", "user/"+c.User.ID, http.StatusForbidden, "limited API token")
		return &apiError{status: http.StatusForbidden, title: "forbidden",
			detail: "this API token is limited to some of your roles, and limited tokens cannot mint Kubernetes credentials: use a session (gatehouse login) or an unlimited token"}
	}
	block, _ := pem.Decode([]byte(in.CSR))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return badField("csr", "csr must be a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		return badField("csr", "csr is malformed or its signature does not verify")
	}
	org, err := a.cfg.Store.GetOrg(r.Context(), c.User.OrgID)
	if err != nil {
		return err
	}
	def, maxTTL := DefaultCertTTL, MaxCertTTL
	if org.MaxCertTTL > 0 {
		maxTTL = org.MaxCertTTL
	}
	if org.CertTTL > 0 {
		def = org.CertTTL
	}
	if c.User.CertTTL > 0 {
		def = c.User.CertTTL
	}
	ttl := min(def, maxTTL)
	if in.TTL != "" {
		if ttl, err = time.ParseDuration(in.TTL); err != nil || ttl < time.Minute {
			return badField("ttl", "ttl must be a duration of at least 1m, like 8h")
		}
		if ttl > maxTTL {
			return badField("ttl", "ttl may be at most %s in this organization", maxTTL)
		}
	}
	chain, err := a.cfg.Issuer.IssueUser(r.Context(), c.User.ID, nil, csr.PublicKey, ttl)
	if ca.Retryable(err) {
		return &apiError{status: http.StatusServiceUnavailable, title: "unavailable", detail: "the certificate authority is not available right now (" + err.Error() + "); retry", retryAfter: 2}
	}
	if err != nil {
		return err
	}
	leafBlock, _ := pem.Decode(chain)
	leaf, err := x509.ParseCertificate(leafBlock.Bytes)
	if err != nil {
		return err
	}
	serial := leaf.SerialNumber.Text(16)
	a.auditChange(r.Context(), r, c, "credential.issue", "certificate/"+serial, http.StatusOK, "")
	return writeJSON(w, http.StatusOK, Credential{Certificate: string(chain), Expires: leaf.NotAfter.UTC(), Serial: serial})
}

// RevocationRequest is apitypes.RevocationRequest.
type RevocationRequest = apitypes.RevocationRequest

func (a *API) revoke(w http.ResponseWriter, r *http.Request, c *Caller) error {
	var in RevocationRequest
	if err := decode(w, r, &in); err != nil {
		return err
	}
	if (in.User == "") == (in.Serial == "") {
		return badField("user", "name either a user or a certificate serial")
	}
	if in.Serial != "" && strings.Trim(strings.ToLower(in.Serial), "0123456789abcdef") != "" {
		return badField("serial", "serial must be hexadecimal")
	}
	if !c.decider.Allowed(c.scope(""), policy.Revoke) {
		a.auditChange(r.Context(), r, c, "revoke", "user/"+in.User+in.Serial, http.StatusForbidden, "forbidden")
		return forbidden(policy.Revoke)
	}
	now := time.Now()
	rev := &store.Revocation{Serial: in.Serial, Reason: in.Reason, Until: now.Add(MaxCertTTL + time.Hour)}
	object := "certificate/" + in.Serial
	if in.User != "" {
		u, err := a.cfg.Store.GetUser(r.Context(), in.User)
		if errors.Is(err, store.ErrNotFound) || (err == nil && u.OrgID != c.User.OrgID) {
			return badField("user", "no user %q", in.User)
		}
		if err != nil {
			return err
		}
		rev.UserID, rev.Before, object = u.ID, now, "user/"+u.ID
		if u.KratosID != "" && a.cfg.Identity != nil {
			if err := a.cfg.Identity.RevokeSessions(r.Context(), u.KratosID); err != nil {
				a.log.Warn("api: cannot end the person's Kratos sessions", "err", err)
			}
		}
	}
	if err := a.cfg.Store.Revoke(r.Context(), rev); err != nil {
		return err
	}
	if a.cfg.Revoker != nil {
		var err error
		if rev.UserID != "" {
			err = a.cfg.Revoker.RevokeUser(r.Context(), rev.UserID, now)
		} else {
			err = a.cfg.Revoker.RevokeSerial(r.Context(), rev.Serial)
		}
		if err != nil {
			a.auditChange(r.Context(), r, c, "revoke", object, http.StatusInternalServerError, err.Error())
			return fmt.Errorf("api: revocation recorded but not applied everywhere: %w", err)
		}
	}
	a.auditChange(r.Context(), r, c, "revoke", object, http.StatusNoContent, "")
	w.WriteHeader(http.StatusNoContent)
	return nil
}
