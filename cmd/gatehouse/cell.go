package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// cell returns s fit for a cell of a table printed on a terminal.
//
// Tables show what the server returned, and much of that is anybody's
// input: an audited request's name is the path a person sent (denied
// requests are audited too), an email comes from an identity provider, a
// description from whoever wrote it, an agent's version from the agent.
// Printed raw, control characters act on the reader's terminal: an escape
// sequence that erases the lines above could hide a person's events from
// `audit tail`, a newline could forge a row, a bidirectional override
// could reorder what is read. So a string holding any character that is
// not graphic, or bytes that are not UTF-8, is shown Go-quoted, its
// escapes visible; so is one that begins with a quote, so that no plain
// string can pass for a quoted one. JSON and YAML output are left as they
// are: they are for programs, and escape what their formats require.
func cell(s string) string {
	if s == "" {
		return s
	}
	if s[0] == '"' || strings.ContainsFunc(s, func(r rune) bool { return r == utf8.RuneError || !unicode.IsGraphic(r) }) {
		return strconv.QuoteToGraphic(s)
	}
	return s
}
