package record

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func sanitize(parts ...string) string {
	s := NewSanitizer()
	var out []byte
	for _, p := range parts {
		out = s.Write(out, p)
	}
	return string(out)
}

// What draws passes unchanged: full-screen programs replay as they were.
func TestSanitizerKeepsDrawing(t *testing.T) {
	for _, in := range []string{
		"plain text\r\n\ttabbed\b\a",
		"héllo wörld € 日本語 👩‍👩‍👧 \ufffd",
		"\x1b[1mbold\x1b[0m \x1b[38;5;196mred\x1b[m \x1b[38:2::255:0:0mtrue\x1b[0m",
		"\x1b[H\x1b[2J\x1b[10;20H\x1b[K\x1b[3A\x1b[2B\x1b[5C\x1b[D\x1b[?25l\x1b[?25h",
		"\x1b[?1049h\x1b[1;24r\x1b[?1h\x1b=\x1b[?7h\x1b[?12l\x1b[?1049l\x1b[?1l\x1b>",
		"\x1b7\x1b8\x1bM\x1bD\x1bE\x1b(0lqk\x1b(B\x1b)0\x1b[4h\x1b[4l\x1b[2 q\x1b[!p\x1b[?2J\x1b[s\x1b[u\x1b[5@\x1b[2P\x1b[3X\x1b[L\x1b[M\x1b[2S\x1b[T",
	} {
		if got := sanitize(in); got != in {
			t.Errorf("sanitize changed a drawing:\n in %q\nout %q", in, got)
		}
	}
}

// What acts beyond the screen is dropped, and the text around it stays.
func TestSanitizerDropsWhatActsBeyondTheScreen(t *testing.T) {
	for name, seq := range map[string]string{
		"OSC 52 clipboard (BEL)":     "\x1b]52;c;ZWNobyBwd25lZAo=\a",
		"OSC 52 clipboard (ST)":      "\x1b]52;c;ZWNobyBwd25lZAo=\x1b\\",
		"OSC 8 hyperlink":            "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
		"OSC title":                  "\x1b]0;title\a",
		"OSC colour query":           "\x1b]11;?\a",
		"DCS DECRQSS":                "\x1bP$qm\x1b\\",
		"DCS tmux passthrough":       "\x1bPtmux;\x1b\x1b]52;c;eA==\a\x1b\\",
		"APC kitty graphics":         "\x1b_Gf=100;AAAA\x1b\\",
		"PM":                         "\x1b^private\x1b\\",
		"SOS":                        "\x1bXstring\x1b\\",
		"device status report":       "\x1b[6n",
		"device attributes":          "\x1b[c",
		"secondary attributes":       "\x1b[>c",
		"window title report":        "\x1b[21t",
		"window resize":              "\x1b[8;100;300t",
		"DECRQM":                     "\x1b[?2004$p",
		"XTVERSION":                  "\x1b[>0q",
		"mouse tracking":             "\x1b[?1000h",
		"SGR mouse":                  "\x1b[?1006h",
		"focus reports":              "\x1b[?1004h",
		"bracketed paste":            "\x1b[?2004h",
		"a mode among others":        "\x1b[?25;1000h",
		"a mode past the parser":     "\x1b[?" + strings.Repeat("1;", 40) + "1003h",
		"kitty keyboard push":        "\x1b[>1u",
		"kitty keyboard query":       "\x1b[?u",
		"modifyOtherKeys":            "\x1b[>4;2m",
		"send/receive mode":          "\x1b[12l",
		"DECID":                      "\x1bZ",
		"ENQ (answerback)":           "\x05",
		"NUL, SO, DEL":               "\x00\x0e\x7f",
		"C1 CSI as a character":      "\u009b",
		"C1 OSC as a character":      "\u009d",
		"8-bit CSI":                  "\x9b6n",
		"a lone ESC":                 "\x1b",
		"CSI cut by a control":       "\x1b[6\x18",
		"an unfinished OSC at close": "\x1b]52;c;ZWNobw==",
	} {
		want := "before  after"
		switch name {
		case "OSC 8 hyperlink":
			want = "before click after" // the text stays, the link goes
		case "8-bit CSI":
			want = "before 6n after" // 0x9b is not UTF-8 and goes; "6n" is text
		case "a lone ESC":
			want = "before fter" // ESC, space (an intermediate) and "a" make an escape sequence, dropped
		case "an unfinished OSC at close":
			want = "before " // what follows is the OSC's, until it ends
		}
		if got := sanitize("before ", seq, " after"); got != want {
			t.Errorf("%s: %q became %q, want %q", name, seq, got, want)
		}
	}
}

// A sequence or a character cut between writes is judged whole.
func TestSanitizerJoinsWhatWritesCut(t *testing.T) {
	in := "a\x1b[1mb\x1b]52;c;eA==\x1b\\é€\x1b[?1049h\x1b[6n👩‍👩‍👧\x1b(0q"
	whole := sanitize(in)
	for i := range len(in) + 1 {
		if got := sanitize(in[:i], in[i:]); got != whole {
			t.Fatalf("cut at %d: %q, whole: %q", i, got, whole)
		}
	}
	if whole != "a\x1b[1mbé€\x1b[?1049h👩‍👩‍👧\x1b(0q" {
		t.Fatalf("whole: %q", whole)
	}
}

// Close puts back what the output left changed, and only that.
func TestSanitizerClose(t *testing.T) {
	for in, want := range map[string]string{
		"text":                "",
		"\x1b[1mbold\x1b[0m":  "",
		"\x1b[1mbold":         "\x1b[0m",
		"\x1b[?25l":           "\x1b[?25h",
		"\x1b[?1049h\x1b[31m": "\x1b[0m\x1b[?1049l",
		"\x1b[?1049h\x1b[?1049l\x1b[?25l\x1b[?25h": "",
	} {
		s := NewSanitizer()
		s.Write(nil, in)
		if got := string(s.Close(nil)); got != want {
			t.Errorf("after %q, Close wrote %q, want %q", in, got, want)
		}
	}
}

// Play sanitizes unless told Raw, and puts the terminal back at the end.
func TestPlaySanitizes(t *testing.T) {
	evs := []Event{{0, Output, "\x1b]52;c;eA==\a\x1b[31mred"}, {0.1, Output, "\x1b[6n done"}}
	instant := func(context.Context, time.Duration) error { return nil }
	var safe, raw strings.Builder
	if err := Play(context.Background(), &safe, evs, PlayOptions{Sleep: instant}); err != nil {
		t.Fatal(err)
	}
	if err := Play(context.Background(), &raw, evs, PlayOptions{Sleep: instant, Raw: true}); err != nil {
		t.Fatal(err)
	}
	if safe.String() != "\x1b[31mred done\x1b[0m" || raw.String() != evs[0].Data+evs[1].Data {
		t.Fatalf("safe %q, raw %q", safe.String(), raw.String())
	}
}

// Whatever a session wrote, the output holds only what the allowlist lets
// through (sanitizing it again changes nothing, and no string sequence or
// stray control is in it), however the writes cut it.
func FuzzSanitizer(f *testing.F) {
	for _, s := range []string{"a\x1b[1mb", "\x1b]52;c;eA==\a", "\x1bP$qm\x1b\\", "é\x1b[?1000;25h", "\x1b[6n\u009b", "\x1b(0q\x1b7"} {
		f.Add(s, 1)
	}
	f.Fuzz(func(t *testing.T, in string, cut int) {
		cut = min(max(cut, 0), len(in))
		whole := NewSanitizer()
		out := whole.Write(nil, in)
		parts := NewSanitizer()
		split := parts.Write(nil, in[:cut])
		split = parts.Write(split, in[cut:])
		if len(in) <= maxPending && !bytes.Equal(out, split) {
			t.Fatalf("cut at %d: %q, whole: %q", cut, split, out)
		}
		if again := NewSanitizer().Write(nil, string(out)); !bytes.Equal(again, out) {
			t.Fatalf("sanitized output changed when sanitized again:\n%q\n%q", out, again)
		}
		for _, bad := range []string{"\x1b]", "\x1bP", "\x1b_", "\x1b^", "\x1bX", "\x1bZ"} {
			if bytes.Contains(out, []byte(bad)) {
				t.Fatalf("%q in %q", bad, out)
			}
		}
		for _, r := range string(out) {
			if r < 0x20 && !strings.ContainsRune("\a\b\t\n\v\f\r\x1b", r) || r == 0x7f || r >= 0x80 && r <= 0x9f {
				t.Fatalf("control %U in %q", r, out)
			}
		}
		if !utf8.Valid(out) && utf8.ValidString(in) {
			t.Fatalf("output not UTF-8: %q", out)
		}
	})
}
