package ca

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
)

// ErrNoSecret: the store holds no secret of that name.
var ErrNoSecret = errors.New("ca: no such sealed secret")

// SecretStore keeps secrets that every node shares, sealed under the KEK.
// *store.Store implements it.
type SecretStore interface {
	// SealedSecret returns the sealed secret and the id of the KEK that
	// sealed it, or an error wrapping ErrNoSecret.
	SealedSecret(ctx context.Context, name string) (sealed []byte, kekID string, err error)
	// CreateSealedSecret records it once; it fails if another node
	// recorded it first.
	CreateSealedSecret(ctx context.Context, name string, sealed []byte, kekID string) error
}

// SharedSecret returns the 32-byte secret name that every node holding the
// KEK can read: made at its first use, sealed under the KEK in the store
// (never in the clear), the same for every node after. The enrolment of a
// new node proves with it that the node holds the KEK (design 0006).
func SharedSecret(ctx context.Context, kek KEK, st SecretStore, name string) ([]byte, error) {
	if kek == nil {
		return nil, ErrNoKEK
	}
	ad := []byte("gatehouse-secret/" + name)
	for attempt := 0; ; attempt++ {
		sealed, kekID, err := st.SealedSecret(ctx, name)
		if err == nil {
			if kekID != kek.ID() {
				return nil, fmt.Errorf("ca: the secret %s was sealed with key-encryption key %s, and this node has %s", name, kekID, kek.ID())
			}
			secret, err := kek.Unwrap(ctx, sealed, ad)
			if err != nil {
				return nil, fmt.Errorf("ca: the secret %s: %w", name, err)
			}
			return secret, nil
		}
		if !errors.Is(err, ErrNoSecret) || attempt > 0 {
			return nil, err
		}
		secret := make([]byte, 32)
		rand.Read(secret)
		wrapped, err := kek.Wrap(ctx, secret, ad)
		if err != nil {
			return nil, fmt.Errorf("ca: seal the secret %s: %w", name, err)
		}
		if err := st.CreateSealedSecret(ctx, name, wrapped, kek.ID()); err == nil {
			return secret, nil
		}
		// Another node made it first: read theirs.
	}
}
