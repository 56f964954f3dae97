package record

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Event is one event of a recording: its time since the session began
// (seconds), its code (Output, Input, Resize or Marker) and its data.
type Event struct {
	Time float64
	Code string
	Data string
}

// ErrBadRecording is returned (wrapped) for a recording that is not
// asciicast v2.
var ErrBadRecording = errors.New("record: not an asciicast v2 recording")

// maxLine bounds a line of a recording that Parse reads.
const maxLine = 16 << 20

// Parse reads an asciicast v2 recording.
func Parse(rd io.Reader) (Header, []Event, error) {
	var h Header
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return h, nil, fmt.Errorf("%w: %v", ErrBadRecording, err)
		}
		return h, nil, fmt.Errorf("%w: it is empty", ErrBadRecording)
	}
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil || h.Version != 2 {
		return h, nil, fmt.Errorf("%w: its header is not version 2", ErrBadRecording)
	}
	var evs []Event
	for line := 2; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var raw []json.RawMessage
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil || len(raw) != 3 ||
			json.Unmarshal(raw[0], &ev.Time) != nil || json.Unmarshal(raw[1], &ev.Code) != nil || json.Unmarshal(raw[2], &ev.Data) != nil {
			return h, nil, fmt.Errorf("%w: line %d is not an event [time, code, data]", ErrBadRecording, line)
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		return h, nil, fmt.Errorf("%w: %v", ErrBadRecording, err)
	}
	return h, evs, nil
}

// PlayOptions tune Play.
type PlayOptions struct {
	// Speed multiplies the pace (1 when zero).
	Speed float64
	// IdleLimit caps each pause (none when zero), as asciinema's
	// idle_time_limit does.
	IdleLimit time.Duration
	// Markers, if not nil, receives the recording's markers, one a line.
	Markers io.Writer
	// Sleep waits; nil means a timer that ctx cancels. Tests make it
	// instant.
	Sleep func(ctx context.Context, d time.Duration) error
	// Raw writes the output as recorded. Otherwise it passes a Sanitizer:
	// a recording is written by whoever held the session, and is played
	// on someone else's terminal.
	Raw bool
}

// Play writes a recording's output to w at the pace it was recorded:
// what the person saw, less what would act on the player's terminal
// beyond its screen (see Sanitizer) unless o.Raw. Input and resizes are
// not written (a terminal echoes what is typed into it, and that echo is
// output).
func Play(ctx context.Context, w io.Writer, evs []Event, o PlayOptions) (err error) {
	if o.Speed <= 0 {
		o.Speed = 1
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	write := func(s string) error { _, err := io.WriteString(w, s); return err }
	if !o.Raw {
		san := NewSanitizer()
		var buf []byte
		write = func(s string) error {
			buf = san.Write(buf[:0], s)
			_, err := w.Write(buf)
			return err
		}
		defer func() {
			// Put the terminal back however the replay ends.
			if _, werr := w.Write(san.Close(buf[:0])); err == nil {
				err = werr
			}
		}()
	}
	var last float64
	for _, ev := range evs {
		if ev.Code != Output && ev.Code != Marker {
			continue
		}
		d := time.Duration((ev.Time - last) / o.Speed * float64(time.Second))
		if o.IdleLimit > 0 && d > o.IdleLimit {
			d = o.IdleLimit
		}
		if ev.Time > last {
			last = ev.Time
		}
		if d > 0 {
			if err := o.Sleep(ctx, d); err != nil {
				return err
			}
		}
		switch {
		case ev.Code == Output:
			if err := write(ev.Data); err != nil {
				return err
			}
		case o.Markers != nil:
			fmt.Fprintln(o.Markers, ev.Data)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
