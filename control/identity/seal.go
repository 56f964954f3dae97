package identity

import (
	"fmt"

	"github.com/gatehouse-dev/gatehouse/internal/seal"
)

// Sealer encrypts small secrets (refresh tokens) for the store with
// AES-256-GCM; the associated data binds a ciphertext to the row it was
// sealed for, so one cannot be moved to another person.
type Sealer = seal.Sealer

// NewSealer returns a sealer for a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	s, err := seal.New(key)
	if err != nil {
		return nil, fmt.Errorf("identity: the token key: %w", err)
	}
	return s, nil
}
