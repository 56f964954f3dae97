// Package pki holds the key and certificate-request helpers that both sides
// of Gatehouse use: the agent and the CLI make keys and CSRs, the gateway
// and the CA parse and check them. It is a leaf package, so that the agent
// and the CLI need not link the certificate authority.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Errors of ParseCSR.
var (
	ErrNotCSR       = errors.New("csr: not a PEM CERTIFICATE REQUEST")
	ErrCSRSignature = errors.New("csr: bad signature")
)

// NewKey returns a fresh P-256 key and its PKCS#8 PEM, for clients that
// generate their key locally.
func NewKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, PEM("PRIVATE KEY", der), nil
}

// CSR returns a PEM certificate request signed by key. The subject is
// empty: the gateway decides what a certificate names.
func CSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	return PEM("CERTIFICATE REQUEST", der), nil
}

// ParseCSR parses a PEM certificate request and checks its signature: proof
// that the caller holds the key it wants certified.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, ErrNotCSR
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, ErrCSRSignature
	}
	return csr, nil
}

// PEM encodes one block.
func PEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
