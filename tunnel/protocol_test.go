package tunnel

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/gatehouse-dev/gatehouse/grant"
)

func TestHeaderRoundTrip(t *testing.T) {
	in := &Header{RequestID: "r1", User: "u-1", Groups: []string{"ops"}, Grants: []grant.Grant{{Role: "edit", Namespace: "team-a"}}}
	var buf bytes.Buffer
	if err := WriteHeader(&buf, in); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("GET / HTTP/1.1\r\n") // what follows the frame is left unread
	out, err := ReadHeader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if out.User != in.User || out.RequestID != in.RequestID || len(out.Grants) != 1 || out.Grants[0].Key() != in.Grants[0].Key() {
		t.Fatalf("got %+v", out)
	}
	if rest, _ := io.ReadAll(&buf); string(rest) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("frame consumed too much: %q", rest)
	}
}

func TestReadHeaderRefuses(t *testing.T) {
	frame := func(magic0 byte, version byte, typ FrameType, payload string) []byte {
		var b bytes.Buffer
		if err := WriteFrame(&b, typ, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		raw := b.Bytes()
		raw[0], raw[2] = magic0, version
		return raw
	}
	good := `{"requestId":"r","user":"u","grants":[{"role":"view"}]}`
	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"bad magic", frame('X', frameVersion, FrameHeader, good), ErrBadMagic},
		{"future version", frame('G', 2, FrameHeader, good), ErrVersion},
		{"wrong type", frame('G', frameVersion, 9, good), ErrFrameType},
		{"too long", []byte{'G', 'H', frameVersion, 1, 0xff, 0xff, 0xff, 0xff}, ErrFrameTooLong},
		{"not json", frame('G', frameVersion, FrameHeader, "{"), ErrBadHeader},
		{"unknown field", frame('G', frameVersion, FrameHeader, `{"user":"u","grants":[{"role":"view"}],"admin":true}`), ErrBadHeader},
		{"no user", frame('G', frameVersion, FrameHeader, `{"grants":[{"role":"view"}]}`), ErrBadHeader},
		{"no grants", frame('G', frameVersion, FrameHeader, `{"user":"u","grants":[]}`), ErrBadHeader},
		{"unknown role", frame('G', frameVersion, FrameHeader, `{"user":"u","grants":[{"role":"root"}]}`), ErrBadHeader},
		{"namespaced cluster-admin", frame('G', frameVersion, FrameHeader, `{"user":"u","grants":[{"role":"cluster-admin","namespace":"x"}]}`), ErrBadHeader},
		{"trailing", frame('G', frameVersion, FrameHeader, good+`{}`), ErrBadHeader},
		{"truncated", frame('G', frameVersion, FrameHeader, good)[:12], io.ErrUnexpectedEOF},
	} {
		_, err := ReadHeader(bytes.NewReader(tc.raw))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzReadHeader feeds arbitrary bytes to the parser the agent runs on every
// stream: it must never panic, and whatever it accepts must be valid and
// survive a round trip.
func FuzzReadHeader(f *testing.F) {
	var b bytes.Buffer
	WriteHeader(&b, &Header{RequestID: "r", User: "u", Grants: []grant.Grant{{Role: "view", Namespace: "n"}}})
	f.Add(b.Bytes())
	f.Add([]byte{'G', 'H', 1, 1, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("accepted an invalid header: %v", err)
		}
		var out bytes.Buffer
		if err := WriteHeader(&out, h); err != nil {
			t.Fatalf("cannot re-encode an accepted header: %v", err)
		}
		if _, err := ReadHeader(&out); err != nil {
			t.Fatalf("re-encoded header refused: %v", err)
		}
	})
}

// FuzzParseControl feeds arbitrary payloads to the control-message parser
// the agent runs: it must never panic, and what it accepts must be valid.
func FuzzParseControl(f *testing.F) {
	f.Add([]byte(`{"requestId":"r","op":"revoke","user":"u"}`))
	f.Add([]byte(`{"op":"sync","user":"u","grants":[{"role":"view","namespace":"n"}]}`))
	f.Add([]byte(`{"op":"revoke","user":"u","grants":[{"role":"view"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseControl(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted an invalid control message: %v", err)
		}
		if c.Op == OpRevoke && len(c.Grants) > 0 {
			t.Fatal("revoke with grants accepted")
		}
	})
}
