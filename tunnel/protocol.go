// Package tunnel owns the protocol between a cluster's agent and the gateway,
// and the agent itself.
//
// The agent dials out (never in) with TLS 1.3 and its own client certificate,
// negotiates the versioned ALPN protocol ALPN and runs a yamux session over
// that one connection. The gateway opens one yamux stream per client request;
// each stream starts with a Header frame naming the person the request runs
// for, followed by one HTTP/1.1 exchange (which may upgrade to SPDY or
// WebSocket for exec, attach and port-forward). Only the gateway can write to
// the tunnel, so the frame is authenticated by the tunnel's mutual TLS; no
// HTTP header a client could forge ever carries identity.
//
// The wire format is specified in docs/design/0002-tunnel-protocol.md.
package tunnel

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/gatehouse-dev/gatehouse/grant"
)

// ALPN is the TLS application protocol of the tunnel. The version is part
// of the name: an incompatible protocol gets a new name, and a gateway can
// serve several during an upgrade.
const ALPN = "gatehouse-tunnel/1"

// ALPN2 is version 2 of the tunnel: before the yamux session starts, the
// gateway sends one FrameWelcome, which may redirect the agent to the node
// that should hold its tunnel (docs/design/0002-tunnel-protocol.md).
// Gateways serve both versions; agents offer 2, then 1.
const ALPN2 = "gatehouse-tunnel/2"

// Frame layout: magic (2 bytes "GH"), version (1), type (1), payload length
// (4, big endian), payload.
const (
	frameMagic0, frameMagic1 = 'G', 'H'
	frameVersion             = 1
	frameHeaderLen           = 8

	// MaxFramePayload bounds a frame's payload. A header names a person,
	// their groups and grants; 64 KiB is far more than any real one needs
	// and small enough that a hostile peer cannot make us allocate much.
	MaxFramePayload = 64 << 10
)

// FrameType identifies a frame's payload.
type FrameType uint8

// Frame types.
const (
	// FrameHeader opens a person's stream (gateway to agent): a JSON Header
	// follows, then one HTTP/1.1 exchange.
	FrameHeader FrameType = 1
	// FrameControl opens a control stream (gateway to agent): a JSON
	// Control follows, answered by one FrameResult.
	FrameControl FrameType = 2
	// FrameRenew opens a renewal stream (agent to gateway): a JSON Renew
	// follows, answered by one FrameResult.
	FrameRenew FrameType = 3
	// FrameResult answers a FrameControl or FrameRenew: a JSON Result.
	FrameResult FrameType = 4
	// FrameWelcome (version 2) is the gateway's first frame on a new
	// tunnel connection, before yamux: a JSON Welcome.
	FrameWelcome FrameType = 5
	// FrameHello (version 2) is the agent's answer to a welcome that did
	// not redirect it, before yamux: a JSON Hello.
	FrameHello FrameType = 6
)

// Control operations.
const (
	// OpRevoke: the person has lost all access to the cluster. The agent
	// deletes their service account and bindings and drops their
	// connections.
	OpRevoke = "revoke"
	// OpSync: the person's grants changed. The agent makes their bindings
	// match Grants now, before their next request.
	OpSync = "sync"
	// OpMove (version 2): the cluster's tunnel belongs on the node at Addr
	// now. The agent opens a tunnel there, serves both until this one is
	// closed, and answers once the new one is up; the gateway then sends
	// no new stream here and closes this tunnel when its streams are done.
	OpMove = "move"
	// OpTrust (version 2): the gateway's trust bundle (Trust, PEM roots)
	// changed: a rotation of its root began or ended. The agent verifies
	// the gateway with it from its next connection on, and keeps it.
	OpTrust = "trust"
)

// MaxTrust bounds a trust bundle: a few roots.
const MaxTrust = 64 << 10

// Control is a gateway-to-agent instruction about one person.
type Control struct {
	RequestID string        `json:"requestId"`
	Op        string        `json:"op"`
	User      string        `json:"user,omitempty"`
	Grants    []grant.Grant `json:"grants,omitempty"`
	// Addr is where OpMove sends the tunnel, host:port.
	Addr string `json:"addr,omitempty"`
	// Trust is OpTrust's bundle: PEM root certificates.
	Trust string `json:"trust,omitempty"`
}

// Validate checks what the agent relies on.
func (c *Control) Validate() error {
	switch {
	case c.Op == OpMove:
		if _, _, err := net.SplitHostPort(c.Addr); err != nil || len(c.Addr) > 256 || c.User != "" || len(c.Grants) != 0 || c.Trust != "" {
			return fmt.Errorf("%w: move names an address (host:port) and nothing else", ErrBadHeader)
		}
		return nil
	case c.Op == OpTrust:
		if _, err := TrustPool([]byte(c.Trust)); err != nil || c.User != "" || len(c.Grants) != 0 || c.Addr != "" {
			return fmt.Errorf("%w: trust carries a bundle of root certificates and nothing else", ErrBadHeader)
		}
		return nil
	case c.Trust != "":
		return fmt.Errorf("%w: only trust carries a bundle", ErrBadHeader)
	}
	if c.User == "" || len(c.User) > 256 || len(c.RequestID) > 128 {
		return fmt.Errorf("%w: user must be 1..256 bytes, request id at most 128", ErrBadHeader)
	}
	switch c.Op {
	case OpRevoke:
		if len(c.Grants) != 0 {
			return fmt.Errorf("%w: revoke carries no grants", ErrBadHeader)
		}
		return nil
	case OpSync:
		return validGrants(c.Grants)
	}
	return fmt.Errorf("%w: unknown control op %q", ErrBadHeader, c.Op)
}

// TrustPool parses a trust bundle: at least one PEM certificate, each a CA,
// nothing else, at most MaxTrust bytes.
func TrustPool(bundle []byte) (*x509.CertPool, error) {
	if len(bundle) == 0 || len(bundle) > MaxTrust {
		return nil, errors.New("tunnel: a trust bundle is 1 byte to 64 KiB")
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return nil, errors.New("tunnel: a trust bundle holds PEM certificates only")
			}
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if b.Type != "CERTIFICATE" || err != nil || !cert.IsCA {
			return nil, errors.New("tunnel: a trust bundle holds CA certificates only")
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("tunnel: an empty trust bundle")
	}
	return pool, nil
}

// Renew asks the gateway for a new agent certificate for the tunnel's own
// cluster. The cluster comes from the tunnel's certificate, never from the
// request.
type Renew struct {
	// CSR is a PEM certificate request for a key the agent generated.
	CSR string `json:"csr"`
}

// Welcome is the gateway's first word on a version-2 tunnel connection.
type Welcome struct {
	// Redirect, when set, is the direct address (host:port) of the node
	// that should hold this cluster's tunnel; the gateway closes the
	// connection after saying it, and the agent dials there. Empty: the
	// tunnel starts here.
	Redirect string `json:"redirect,omitempty"`
	// Node, when the tunnel starts here, is the node's name (for the
	// agent's logs and status; an agent behind a load balancer cannot tell
	// nodes apart by address).
	Node string `json:"node,omitempty"`
}

// Hello is what a version-2 agent says of itself when its tunnel starts,
// for gatehouse status.
type Hello struct {
	// AgentVersion is the agent's build.
	AgentVersion string `json:"agentVersion,omitempty"`
	// KubeVersion is its cluster's API server version (gitVersion).
	KubeVersion string `json:"kubeVersion,omitempty"`
}

// Validate bounds what the gateway keeps.
func (h *Hello) Validate() error {
	if len(h.AgentVersion) > 64 || len(h.KubeVersion) > 64 {
		return fmt.Errorf("%w: hello versions longer than 64 bytes", ErrBadHeader)
	}
	return nil
}

// Result answers a control or renewal stream. Error is empty on success.
type Result struct {
	Error string `json:"error,omitempty"`
	// Certificate is the renewed chain (PEM), for FrameRenew.
	Certificate string `json:"certificate,omitempty"`
}

// Errors returned by the frame codec.
var (
	ErrBadMagic     = errors.New("tunnel: bad frame magic")
	ErrVersion      = errors.New("tunnel: unsupported frame version")
	ErrFrameType    = errors.New("tunnel: unexpected frame type")
	ErrFrameTooLong = errors.New("tunnel: frame too long")
	ErrBadHeader    = errors.New("tunnel: malformed header")
)

// Header is the first frame of every stream.
type Header struct {
	// RequestID correlates the request across gateway, agent and audit.
	RequestID string `json:"requestId"`
	// User is the person's stable id (never an email, which can change).
	User string `json:"user"`
	// Groups are the person's groups, for audit.
	Groups []string `json:"groups,omitempty"`
	// Grants is the person's access on this cluster; never empty for a
	// request the gateway let through.
	Grants []grant.Grant `json:"grants"`
	// Deadline, when set, is when the person's credential expires; the agent
	// ends the stream then.
	Deadline time.Time `json:"deadline,omitzero"`
}

// Validate checks what the agent relies on.
func (h *Header) Validate() error {
	switch {
	case h.User == "" || len(h.User) > 256:
		return fmt.Errorf("%w: user must be 1..256 bytes", ErrBadHeader)
	case len(h.RequestID) > 128:
		return fmt.Errorf("%w: request id longer than 128 bytes", ErrBadHeader)
	}
	return validGrants(h.Grants)
}

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	if len(payload) > MaxFramePayload {
		return ErrFrameTooLong
	}
	buf := make([]byte, frameHeaderLen+len(payload))
	buf[0], buf[1], buf[2], buf[3] = frameMagic0, frameMagic1, frameVersion, byte(t)
	binary.BigEndian.PutUint32(buf[4:8], uint32(len(payload)))
	copy(buf[frameHeaderLen:], payload)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame, refusing payloads over MaxFramePayload before
// allocating for them.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0] != frameMagic0 || h[1] != frameMagic1 {
		return 0, nil, ErrBadMagic
	}
	if h[2] != frameVersion {
		return 0, nil, fmt.Errorf("%w: %d", ErrVersion, h[2])
	}
	n := binary.BigEndian.Uint32(h[4:8])
	if n > MaxFramePayload {
		return 0, nil, ErrFrameTooLong
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return FrameType(h[3]), payload, nil
}

// WriteHeader writes h as a FrameHeader frame.
func WriteHeader(w io.Writer, h *Header) error {
	if err := h.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return WriteFrame(w, FrameHeader, b)
}

// ReadHeader reads and validates a FrameHeader frame.
func ReadHeader(r io.Reader) (*Header, error) {
	t, payload, err := ReadFrame(r)
	if err != nil {
		return nil, err
	}
	if t != FrameHeader {
		return nil, fmt.Errorf("%w: %d", ErrFrameType, t)
	}
	return ParseHeader(payload)
}

// ParseHeader decodes and validates a FrameHeader payload.
func ParseHeader(payload []byte) (*Header, error) {
	var h Header
	if err := decodeStrict(payload, &h); err != nil {
		return nil, err
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return &h, nil
}

// ParseControl decodes and validates a FrameControl payload.
func ParseControl(payload []byte) (*Control, error) {
	var c Control
	if err := decodeStrict(payload, &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// WriteJSON writes v as one frame of type t.
func WriteJSON(w io.Writer, t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, t, b)
}

// ReadJSON reads one frame, which must be of type t, into v (unknown
// fields refused).
func ReadJSON(r io.Reader, t FrameType, v any) error {
	got, payload, err := ReadFrame(r)
	if err != nil {
		return err
	}
	if got != t {
		return fmt.Errorf("%w: %d, want %d", ErrFrameType, got, t)
	}
	return decodeStrict(payload, v)
}

// decodeStrict decodes one JSON value, refusing unknown fields and
// trailing data: both ends of a tunnel speak the same ALPN version.
func decodeStrict(payload []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrBadHeader)
	}
	return nil
}

// validGrants checks grants as the agent relies on them.
func validGrants(gs []grant.Grant) error {
	if err := grant.Validate(gs); err != nil {
		return fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	return nil
}
