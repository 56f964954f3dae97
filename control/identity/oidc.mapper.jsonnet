// Maps an OIDC provider's claims to a new person's identity (Kratos runs
// this at registration only). A person is linked to Gatehouse by email, so
// only an address the provider has verified is accepted. The groups are
// recorded for reference; Gatehouse reads the current ones at every login.
local claims = std.extVar('claims');

if !('email' in claims) || !std.get(claims, 'email_verified', false) then
  error 'the identity provider sent no verified email address'
else {
  identity: {
    traits: {
      email: claims.email,
      [if 'name' in claims then 'name' else null]: claims.name,
    },
    metadata_public: {
      groups: std.get(std.get(claims, 'raw_claims', {}), 'groups', []),
    },
  },
}
