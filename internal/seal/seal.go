// Package seal encrypts small secrets for the store with AES-256-GCM. The
// associated data binds a ciphertext to the row (or key) it was sealed for,
// so that one cannot be moved to another. It holds no key of its own: the
// caller brings it (a node's token key, the CA's key-encryption key).
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// KeySize is the size of an AES-256 key.
const KeySize = 32

// ErrOpen is returned when a sealed value does not open: a wrong key, other
// associated data, or tampering.
var ErrOpen = errors.New("seal: cannot open: wrong key or associated data, or tampered")

// Sealer seals and opens with one key. It is safe for concurrent use.
type Sealer struct{ aead cipher.AEAD }

// New returns a sealer for a KeySize-byte key.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("seal: the key must be %d bytes, not %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext for ad under a random nonce, which it prepends.
func (s *Sealer) Seal(plaintext []byte, ad string) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plaintext, []byte(ad))
}

// Open decrypts what Seal made for the same ad.
func (s *Sealer) Open(sealed []byte, ad string) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, ErrOpen
	}
	out, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(ad))
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}
