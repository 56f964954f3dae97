package identity

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	ory "github.com/ory/client-go"
)

// ErrBadInvitation: the invitation is malformed, used, expired or wrong.
var ErrBadInvitation = errors.New("identity: the invitation is invalid, used or expired")

// Invitation lets a person set the first password of their local account:
// an admin-issued Kratos recovery code for a native flow. Code is the one
// string the person needs ("FLOW.CODE"); Kratos keeps only a hash of it,
// lets it be used once and refuses a flow after a few wrong codes.
type Invitation struct {
	Code    string
	Expires time.Time
}

// Invite issues an invitation for an identity, valid for ttl.
func (k *Kratos) Invite(ctx context.Context, identityID string, ttl time.Duration) (*Invitation, error) {
	if k.admin == nil {
		return nil, errors.New("identity: no admin URL configured")
	}
	body := ory.NewCreateRecoveryCodeForIdentityBody(identityID)
	body.SetFlowType("api")
	body.SetExpiresIn(ttl.String())
	rc, resp, err := k.admin.IdentityAPI.CreateRecoveryCodeForIdentity(ctx).CreateRecoveryCodeForIdentityBody(*body).Execute()
	closeBody(resp)
	if err != nil {
		return nil, fmt.Errorf("identity: invitation: %w", kratosDetail(err))
	}
	link, err := url.Parse(rc.RecoveryLink)
	if err != nil || link.Query().Get("flow") == "" {
		return nil, fmt.Errorf("identity: invitation: Kratos's link %q names no flow", rc.RecoveryLink)
	}
	inv := &Invitation{Code: link.Query().Get("flow") + "." + rc.RecoveryCode, Expires: time.Now().Add(ttl)}
	if rc.ExpiresAt != nil {
		inv.Expires = *rc.ExpiresAt
	}
	return inv, nil
}

// AcceptInvitation redeems an invitation: Kratos's recovery flow signs the
// person in, and its settings flow sets their password. It returns the
// session token.
func (k *Kratos) AcceptInvitation(ctx context.Context, invitation, password string) (string, error) {
	flowID, code, ok := strings.Cut(strings.TrimSpace(invitation), ".")
	if !ok || flowID == "" || code == "" {
		return "", fmt.Errorf("%w: expected FLOW.CODE", ErrBadInvitation)
	}
	rf, resp, err := k.public.FrontendAPI.UpdateRecoveryFlow(ctx).Flow(flowID).UpdateRecoveryFlowBody(
		ory.UpdateRecoveryFlowWithCodeMethodAsUpdateRecoveryFlowBody(&ory.UpdateRecoveryFlowWithCodeMethod{Method: "code", Code: &code})).Execute()
	closeBody(resp)
	if err != nil {
		if resp != nil && resp.StatusCode < http.StatusInternalServerError {
			return "", ErrBadInvitation
		}
		return "", fmt.Errorf("identity: invitation: %w", kratosDetail(err))
	}
	var token, settingsFlow string
	for _, c := range rf.GetContinueWith() {
		switch {
		case c.ContinueWithSetOrySessionToken != nil:
			token = c.ContinueWithSetOrySessionToken.OrySessionToken
		case c.ContinueWithSettingsUi != nil:
			settingsFlow = c.ContinueWithSettingsUi.Flow.Id
		}
	}
	if token == "" || settingsFlow == "" {
		// A wrong code answers 200 with the flow and a message, not an error.
		return "", ErrBadInvitation
	}
	_, resp, err = k.public.FrontendAPI.UpdateSettingsFlow(ctx).Flow(settingsFlow).XSessionToken(token).UpdateSettingsFlowBody(
		ory.UpdateSettingsFlowWithPasswordMethodAsUpdateSettingsFlowBody(&ory.UpdateSettingsFlowWithPasswordMethod{Method: "password", Password: password})).Execute()
	closeBody(resp)
	if err != nil {
		// Do not leave a session behind that set no password.
		k.Logout(ctx, token)
		return "", fmt.Errorf("identity: new password refused (too short or too common?): %w", kratosDetail(err))
	}
	return token, nil
}
