// The body of the web hook that runs before a password registration is
// stored: evaluating it fails, so Kratos refuses the registration. Admins
// create local accounts through Gatehouse's API instead.
function(ctx) error 'password self-registration is disabled: ask an admin for an account'
