package record

import (
	"bytes"
	"strings"
	"unicode/utf8"

	"github.com/charmbracelet/x/ansi"
)

// A Sanitizer removes from a terminal's output what would act on the
// terminal of the person replaying it beyond drawing on its screen.
//
// A recorded session's output is written by whoever held the session, and
// it is replayed on an auditor's terminal. Escape sequences there can do
// more than draw: some make the terminal answer into its input (device
// status, attributes, window reports, DECRQM, XTVERSION, ENQ's
// answerback), which is read by whatever the auditor runs next; some set
// the clipboard (OSC 52), plant hyperlinks (OSC 8), move or resize the
// window, pass data to the terminal or a multiplexer (DCS, APC, PM, SOS),
// or switch on mouse reports, focus reports, bracketed paste or keyboard
// protocols that outlive the replay. So output passes an allowlist:
// printable text, the C0 controls that move the cursor (BEL, BS, HT, LF,
// VT, FF, CR), and the CSI and ESC sequences that draw (cursor moves,
// erases, insertions, scrolling regions, SGR colours, the alternate screen
// and other DEC modes that make no reports). Everything else is dropped:
// other C0 and C1 controls, every OSC, DCS, APC, PM and SOS string, and
// malformed sequences. What full-screen programs draw replays as it was;
// `gatehouse audit play --raw` writes the recording's bytes unchanged.
//
// Sequences may be cut between writes; a Sanitizer keeps an unfinished one
// (up to maxPending bytes; a longer one is dropped) until the next write.
// It is not safe for concurrent use.
type Sanitizer struct {
	p       *ansi.Parser
	pending []byte
	// What the output left set, to undo at Close: colours or attributes,
	// a hidden cursor, the alternate screen.
	sgr, hidden, alt bool
}

// maxPending bounds an unfinished sequence kept between writes.
const maxPending = 64 << 10

// NewSanitizer returns a Sanitizer.
func NewSanitizer() *Sanitizer { return &Sanitizer{p: ansi.NewParser()} }

// Write appends to dst what of data may reach the terminal, and returns
// the extended slice.
func (s *Sanitizer) Write(dst []byte, data string) []byte {
	b := append(s.pending, data...)
	s.pending = nil
	// A character cut at the end waits for its other bytes.
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	rest := b[cut:]
	// Bytes that are not UTF-8 never reach the terminal (nor begin an
	// 8-bit C1 sequence).
	b = bytes.ToValidUTF8(b[:cut], nil)
	var unfinished []byte
	for len(b) > 0 {
		seq, _, n, state := ansi.DecodeSequence(b, ansi.NormalState, s.p)
		if n <= 0 {
			n = 1 // cannot happen; never loop forever on a byte
			seq = b[:1]
			state = ansi.NormalState
		}
		if state != ansi.NormalState { // unfinished, at the end of b
			if len(seq) <= maxPending {
				unfinished = seq
			}
			break
		}
		if s.allowed(seq) {
			dst = append(dst, seq...)
		}
		b = b[n:]
	}
	if len(unfinished)+len(rest) > 0 {
		s.pending = append(append([]byte(nil), unfinished...), rest...)
	}
	return dst
}

// Close appends to dst what puts the terminal back as the output found it:
// default colours, a visible cursor, the normal screen. It appends nothing
// when the output left none of them changed. An unfinished sequence is
// dropped.
func (s *Sanitizer) Close(dst []byte) []byte {
	s.pending = nil
	if s.sgr {
		dst = append(dst, "\x1b[0m"...)
	}
	if s.hidden {
		dst = append(dst, "\x1b[?25h"...)
	}
	if s.alt {
		dst = append(dst, "\x1b[?1049l"...)
	}
	s.sgr, s.hidden, s.alt = false, false, false
	return dst
}

// allowed reports whether a whole sequence, or a grapheme, may pass.
func (s *Sanitizer) allowed(seq []byte) bool {
	switch {
	case seq[0] >= 0x80 && seq[0] < 0xc0:
		// 8-bit C1 controls and stray continuation bytes (Write removes
		// them first).
		return false
	case ansi.HasCsiPrefix(seq):
		return s.csiAllowed(seq)
	case ansi.HasOscPrefix(seq), ansi.HasDcsPrefix(seq), ansi.HasApcPrefix(seq), ansi.HasPmPrefix(seq), ansi.HasSosPrefix(seq):
		return false
	case seq[0] == ansi.ESC:
		return escAllowed(seq[1:])
	case seq[0] < 0x20 || seq[0] == ansi.DEL:
		return len(seq) == 1 && strings.IndexByte("\a\b\t\n\v\f\r", seq[0]) >= 0
	}
	// A grapheme: not bytes that are not UTF-8, nor a C1 control written
	// as a character (U+0080 to U+009F). U+FFFD itself passes: the
	// recorder writes it for what was not UTF-8.
	r, size := utf8.DecodeRune(seq)
	return !(r == utf8.RuneError && size <= 1) && (r < 0x80 || r > 0x9f)
}

// csiCommands are the CSI commands without prefix or intermediate that
// draw: cursor moves and positions, erases, insertions and deletions,
// scrolling, tabs, SGR, the scrolling region, cursor save and restore.
const csiCommands = "@ABCDEFGHIJKLMPSTXZ`abdefgmrsu"

// reportingModes are the DEC private modes that make the terminal send
// input (mouse, focus, bracketed paste, alternate scroll) or change what
// its keys send.
var reportingModes = map[string]bool{
	"9": true, "1000": true, "1001": true, "1002": true, "1003": true, "1004": true, "1005": true, "1006": true,
	"1007": true, "1015": true, "1016": true, "2004": true,
}

func (s *Sanitizer) csiAllowed(seq []byte) bool {
	cmd := ansi.Cmd(s.p.Command())
	final, prefix, inter := cmd.Final(), cmd.Prefix(), cmd.Intermediate()
	if final == 0 || seq[len(seq)-1] != final {
		return false // malformed, cut short
	}
	switch {
	case prefix == 0 && inter == 0 && strings.IndexByte(csiCommands, final) >= 0:
		if final == 'm' {
			p := paramsOf(seq)
			s.sgr = !(len(p) == 0 || len(p) == 1 && (p[0] == "" || p[0] == "0"))
		}
		return true
	case prefix == 0 && inter == 0 && (final == 'h' || final == 'l'):
		for _, m := range paramsOf(seq) {
			if m != "4" && m != "20" { // insert mode, new line mode
				return false
			}
		}
		return true
	case prefix == '?' && inter == 0 && (final == 'J' || final == 'K'):
		return true
	case prefix == '?' && inter == 0 && (final == 'h' || final == 'l'):
		modes := paramsOf(seq)
		for _, m := range modes {
			if m == "" || reportingModes[m] || strings.Trim(m, "0123456789") != "" {
				return false
			}
		}
		for _, m := range modes {
			switch m {
			case "25":
				s.hidden = final == 'l'
			case "47", "1047", "1049":
				s.alt = final == 'h'
			}
		}
		return true
	case prefix == 0 && inter == ' ' && final == 'q': // cursor style
		return true
	case prefix == 0 && inter == '!' && final == 'p': // soft reset
		return true
	}
	return false
}

// paramsOf returns a CSI sequence's parameters as written, without its
// prefix, intermediates and final byte. The parser's own parameter buffer
// is bounded, and a mode past its end must not go unseen.
func paramsOf(seq []byte) []string {
	body := bytes.TrimLeft(bytes.TrimPrefix(seq, []byte("\x1b[")), "<=>?")
	end := len(body)
	for end > 0 && !(body[end-1] >= '0' && body[end-1] <= '9' || body[end-1] == ';' || body[end-1] == ':') {
		end--
	}
	if end == 0 {
		return nil
	}
	return strings.Split(string(body[:end]), ";")
}

// escAllowed reports whether an escape sequence (after its ESC) draws:
// cursor save and restore, index, next line, tab set, reverse index,
// keypad modes, full reset, character set designations, DECALN.
func escAllowed(body []byte) bool {
	switch string(body) {
	case "7", "8", "D", "E", "H", "M", "=", ">", "c", "#8":
		return true
	}
	// A designation names a character set that terminals know: DEC
	// special graphics, ASCII, the UK and the other national sets.
	return len(body) == 2 && strings.IndexByte("()*+", body[0]) >= 0 && strings.IndexByte("0AB12<>4C5RfQ9KY`E6ZH7=", body[1]) >= 0
}
