// Package spool is each gateway node's durable audit spool (issue 12): an
// append-only log of records in segment files, which the node writes
// every audit event to before the request goes on, and from which a
// shipper sends them to Kafka, advancing a cursor only when Kafka has
// acknowledged them. Nothing is lost when Kafka or the node fails: a
// record is in the spool before its request is answered, and it leaves
// the spool only once shipped.
//
// Durability policy: Append writes the record to its segment file with one
// write(2) before it returns, so a crash of the process (kill -9) loses
// nothing; the file is fsynced by group commit every SyncInterval (5 ms by
// default) while records are being written, so a crash of the machine (a
// power loss) can lose the last SyncInterval of records. A segment is
// fsynced before the next one starts.
//
// A record on disk is a 9-byte header (a marker byte, the payload's length
// and its CRC-32C, big-endian) and the payload. A record torn by a crash
// (the last one of the last segment, cut short, or with a CRC that does
// not match) is detected when the spool opens and cut off: it was never
// acknowledged to anyone. A record whose CRC does not match elsewhere is
// never returned: the reader skips the rest of that segment and counts
// the records it lost.
package spool

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"
)

// Errors.
var (
	// ErrFull: the spool holds MaxBytes and takes no more until the
	// shipper catches up. The gateway then refuses requests (fail closed)
	// unless configured to go on without auditing them.
	ErrFull = errors.New("spool: full")
	// ErrClosed: Close has been called.
	ErrClosed = errors.New("spool: closed")
	// ErrTooLarge: a record larger than MaxRecord.
	ErrTooLarge = errors.New("spool: record too large")
)

// Record format.
const (
	marker     = 0xA7
	headerSize = 9
	// MaxRecord bounds one record's payload: an audit event is a few
	// hundred bytes; a session recording is written in chunks.
	MaxRecord = 4 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Config configures a Spool.
type Config struct {
	// Dir holds the segment files and the cursor; it is created 0700.
	Dir string
	// SegmentSize is the size past which a new segment starts.
	SegmentSize int64
	// MaxBytes bounds the spool on disk: Append fails with ErrFull past
	// it.
	MaxBytes int64
	// SyncInterval is the group commit's window: records written within
	// it share one fsync.
	SyncInterval time.Duration
	Logger       *slog.Logger
}

// DefaultConfig returns 64 MiB segments, a 4 GiB cap (an hour of a busy
// node's events with Kafka down) and a 5 ms group commit (a quiet node
// then syncs a few events at once rather than each alone).
func DefaultConfig() Config {
	return Config{SegmentSize: 64 << 20, MaxBytes: 4 << 30, SyncInterval: 5 * time.Millisecond}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("spool: Dir is required")
	case c.SegmentSize < 4096 || c.MaxBytes < c.SegmentSize:
		return errors.New("spool: SegmentSize must be at least 4 KiB and MaxBytes at least SegmentSize")
	case c.SyncInterval <= 0 || c.SyncInterval > time.Second:
		return errors.New("spool: SyncInterval must be from 1ns to 1s")
	}
	return nil
}

// Record is one record read back, with its sequence number (from 1, in
// the order written).
type Record struct {
	Seq     uint64
	Payload []byte
}

// segment is one segment file: its first record's sequence number, and
// its size and last sequence number as far as written.
type segment struct {
	first, last uint64 // last < first: empty
	size        int64
}

func segmentName(first uint64) string { return fmt.Sprintf("%020d.seg", first) }

// Spool is a node's audit spool.
type Spool struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex // guards everything below, and writes to f
	f        *os.File   // the current (last) segment, open for appending
	segs     []segment  // by first sequence number; the last is f's
	bytes    int64      // on disk, over every segment
	acked    uint64     // shipped: records up to it may go
	lost     uint64     // records skipped as corrupt by readers
	closed   bool
	dirty    bool       // written since the last fsync
	reader   readCursor // where the last Read stopped, to go on from there
	syncWake chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup
	syncErr  error // the last fsync's failure, returned by Append until one succeeds

	cursorMu  sync.Mutex // serializes writes of the cursor file, outside mu
	persisted uint64     // the acknowledgement the cursor file holds; guarded by cursorMu
	cursorAt  time.Time  // when it was written; guarded by cursorMu
}

// CursorInterval is how often, at most, the cursor file is written while
// records are being acknowledged (and at Close). The file may lag behind
// what was acknowledged by that much: after a crash those records are
// shipped again (at least once; consumers deduplicate by event id).
const CursorInterval = 100 * time.Millisecond

// readCursor is where sequential reads go on from.
type readCursor struct {
	seg  uint64 // the segment's first sequence number
	off  int64  // the offset of the record after seq
	next uint64 // its sequence number
}

// Open opens the spool in cfg.Dir, or makes it: it finds the segments and
// the cursor, and cuts off a torn last record.
func Open(cfg Config) (*Spool, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{cfg: cfg, log: cfg.Logger, syncWake: make(chan struct{}, 1), done: make(chan struct{})}
	var err error
	if s.acked, err = readCursorFile(filepath.Join(cfg.Dir, "cursor")); err != nil {
		return nil, err
	}
	s.persisted = s.acked
	entries, err := os.ReadDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok {
			continue
		}
		first, err := strconv.ParseUint(name, 10, 64)
		if err != nil || first == 0 {
			return nil, fmt.Errorf("spool: a segment file named %q", e.Name())
		}
		s.segs = append(s.segs, segment{first: first, last: first - 1})
	}
	slices.SortFunc(s.segs, func(a, b segment) int { return cmp.Compare(a.first, b.first) })
	// Every segment but the last was complete when the next began; the
	// last is scanned for its end, and a torn record cut off.
	for i := range s.segs {
		sg := &s.segs[i]
		path := filepath.Join(cfg.Dir, segmentName(sg.first))
		if i < len(s.segs)-1 {
			fi, err := os.Stat(path)
			if err != nil {
				return nil, fmt.Errorf("spool: %w", err)
			}
			sg.size, sg.last = fi.Size(), s.segs[i+1].first-1
			s.bytes += sg.size
			continue
		}
		n, end, err := scanSegment(path)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		if fi.Size() != end {
			s.log.Warn("spool: a torn record at the end of the last segment cut off (a crash while it was written; it was never acknowledged)",
				"segment", path, "bytes", fi.Size()-end)
			if err := os.Truncate(path, end); err != nil {
				return nil, fmt.Errorf("spool: %w", err)
			}
		}
		sg.size, sg.last = end, sg.first-1+n
		s.bytes += end
	}
	next := uint64(1)
	if len(s.segs) > 0 {
		next = s.segs[len(s.segs)-1].last + 1
	}
	if s.acked >= next {
		// The cursor is past what is left (the segments went): start after it.
		next = s.acked + 1
	}
	if len(s.segs) == 0 || s.segs[len(s.segs)-1].last+1 != next {
		if err := s.newSegment(next); err != nil {
			return nil, err
		}
	} else {
		last := s.segs[len(s.segs)-1]
		if s.f, err = os.OpenFile(filepath.Join(cfg.Dir, segmentName(last.first)), os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	s.dropShipped()
	s.wg.Add(1)
	go s.syncLoop()
	return s, nil
}

// scanSegment reads the records of a segment file and returns how many are
// whole and where the last one ends.
func scanSegment(path string) (uint64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	var n uint64
	var end int64
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		payload, err := readRecord(r)
		if err != nil {
			return n, end, nil // io.EOF, a torn or corrupt record: the end
		}
		n++
		end += int64(headerSize + len(payload))
	}
}

// readRecord reads one record from r and returns its payload. At the end
// it is io.EOF; a record cut short is io.ErrUnexpectedEOF; one whose
// marker, length or CRC is wrong is errCorrupt.
func readRecord(r *bufio.Reader) ([]byte, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, io.ErrUnexpectedEOF
	}
	size := binary.BigEndian.Uint32(h[1:5])
	if h[0] != marker || size > MaxRecord {
		return nil, errCorrupt
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, io.ErrUnexpectedEOF
	}
	if crc32.Checksum(buf, castagnoli) != binary.BigEndian.Uint32(h[5:9]) {
		return nil, errCorrupt
	}
	return buf, nil
}

var errCorrupt = errors.New("spool: a corrupt record")

// newSegment starts the segment whose first record is first. The caller
// holds mu (or the spool is not in use yet).
func (s *Spool) newSegment(first uint64) error {
	path := filepath.Join(s.cfg.Dir, segmentName(first))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := syncDir(s.cfg.Dir); err != nil {
		f.Close()
		return err
	}
	s.f = f
	s.segs = append(s.segs, segment{first: first, last: first - 1})
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: sync %s: %w", dir, err)
	}
	return nil
}

// Append writes one record and returns its sequence number. It returns
// once the record is in the segment file (a crash of the process loses
// nothing from then on); the group commit fsyncs it within SyncInterval.
// It fails with ErrFull when the spool holds MaxBytes, and with the last
// fsync's error while the disk fails.
func (s *Spool) Append(payload []byte) (uint64, error) {
	if len(payload) > MaxRecord {
		return 0, ErrTooLarge
	}
	rec := make([]byte, headerSize+len(payload))
	rec[0] = marker
	binary.BigEndian.PutUint32(rec[1:5], uint32(len(payload)))
	binary.BigEndian.PutUint32(rec[5:9], crc32.Checksum(payload, castagnoli))
	copy(rec[headerSize:], payload)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return 0, ErrClosed
	case s.syncErr != nil:
		return 0, s.syncErr
	case s.bytes+int64(len(rec)) > s.cfg.MaxBytes:
		return 0, ErrFull
	}
	cur := &s.segs[len(s.segs)-1]
	if cur.size > 0 && cur.size+int64(len(rec)) > s.cfg.SegmentSize {
		// The segment is complete: durable before the next begins.
		if err := s.f.Sync(); err != nil {
			return 0, fmt.Errorf("spool: sync: %w", err)
		}
		s.f.Close()
		if err := s.newSegment(cur.last + 1); err != nil {
			return 0, err
		}
		cur = &s.segs[len(s.segs)-1]
	}
	if _, err := s.f.Write(rec); err != nil {
		// A short write leaves a torn record that the next Open cuts; no
		// record goes after it in this process.
		s.syncErr = fmt.Errorf("spool: write: %w", err)
		return 0, s.syncErr
	}
	cur.size += int64(len(rec))
	cur.last++
	s.bytes += int64(len(rec))
	if !s.dirty {
		s.dirty = true
		select {
		case s.syncWake <- struct{}{}:
		default:
		}
	}
	return cur.last, nil
}

// syncLoop is the group commit: woken by the first write after a sync, it
// waits SyncInterval for more, then fsyncs them all at once.
func (s *Spool) syncLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.syncWake:
		}
		select {
		case <-s.done:
			return
		case <-time.After(s.cfg.SyncInterval):
		}
		s.mu.Lock()
		f := s.f
		s.dirty = false
		s.mu.Unlock()
		// Outside the lock: appends go on while the disk syncs. A segment
		// closed meanwhile was synced before it closed.
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
			s.log.Error("spool: fsync failed; the spool takes no more records until one succeeds", "err", err)
			s.mu.Lock()
			s.syncErr = fmt.Errorf("spool: sync: %w", err)
			s.mu.Unlock()
		} else if err == nil {
			s.mu.Lock()
			s.syncErr = nil
			s.mu.Unlock()
		}
	}
}

// Read returns up to max records after sequence number after, in order,
// and at most about maxBytes of payload (at least one record). A corrupt
// record is never returned: the rest of its segment is skipped, and
// counted in Lost.
func (s *Spool) Read(after uint64, max int, maxBytes int) ([]Record, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	segs := slices.Clone(s.segs)
	cur := s.reader
	s.mu.Unlock()
	var out []Record
	total := 0
	for _, sg := range segs {
		if sg.last <= after || sg.last < sg.first {
			continue
		}
		off, seq := int64(0), sg.first
		if cur.seg == sg.first && cur.next <= after+1 && cur.next >= sg.first {
			off, seq = cur.off, cur.next
		}
		recs, end, next, err := s.readSegment(sg, off, seq, after, max-len(out), maxBytes-total)
		out = append(out, recs...)
		for _, r := range recs {
			total += len(r.Payload)
		}
		if err != nil {
			return out, err
		}
		s.mu.Lock()
		s.reader = readCursor{seg: sg.first, off: end, next: next}
		s.mu.Unlock()
		if len(out) >= max || total >= maxBytes {
			break
		}
	}
	return out, nil
}

// readSegment reads sg's records from offset off (whose record is seq),
// keeping those after after, up to max and maxBytes; it returns where it
// stopped.
func (s *Spool) readSegment(sg segment, off int64, seq, after uint64, max, maxBytes int) ([]Record, int64, uint64, error) {
	path := filepath.Join(s.cfg.Dir, segmentName(sg.first))
	f, err := os.Open(path)
	if err != nil {
		return nil, off, seq, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil, off, seq, fmt.Errorf("spool: %w", err)
	}
	r := bufio.NewReaderSize(f, 1<<16)
	var out []Record
	total := 0
	for seq <= sg.last && len(out) < max && (total < maxBytes || len(out) == 0) {
		payload, err := readRecord(r)
		if err != nil {
			lost := sg.last - seq + 1
			s.mu.Lock()
			s.lost += lost
			s.mu.Unlock()
			s.log.Error("spool: a corrupt record; the rest of its segment is skipped", "segment", path, "offset", off, "seq", seq, "lost", lost, "err", err)
			return out, sg.size, sg.last + 1, nil
		}
		if seq > after {
			out = append(out, Record{Seq: seq, Payload: payload})
			total += len(payload)
		}
		off += int64(headerSize + len(payload))
		seq++
	}
	return out, off, seq, nil
}

// Ack records that every record up to seq has been shipped: the cursor
// moves there (kept in Dir/cursor, written atomically, at most every
// CursorInterval and at Close) and segments wholly shipped are deleted.
// Appends never wait for the cursor file.
func (s *Spool) Ack(seq uint64) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrClosed
	case seq <= s.acked:
		s.mu.Unlock()
		return nil
	case seq > s.segs[len(s.segs)-1].last:
		last := s.segs[len(s.segs)-1].last
		s.mu.Unlock()
		return fmt.Errorf("spool: ack of %d past the last record %d", seq, last)
	}
	s.acked = seq
	// A segment may go before the cursor file says so: after a crash the
	// cursor is before the first segment left, and reading starts there.
	s.dropShipped()
	s.mu.Unlock()
	return s.saveCursor(false)
}

// saveCursor writes the acknowledgement to the cursor file, outside mu
// (appends do not wait on its fsync), at most every CursorInterval unless
// now is set.
func (s *Spool) saveCursor(now bool) error {
	s.cursorMu.Lock()
	defer s.cursorMu.Unlock()
	if !now && time.Since(s.cursorAt) < CursorInterval {
		return nil
	}
	s.mu.Lock()
	seq := s.acked
	s.mu.Unlock()
	if seq <= s.persisted {
		return nil
	}
	if err := writeCursorFile(filepath.Join(s.cfg.Dir, "cursor"), seq); err != nil {
		return err
	}
	s.persisted, s.cursorAt = seq, time.Now()
	return nil
}

// dropShipped deletes the segments whose every record is acknowledged,
// but never the current one. The caller holds mu.
func (s *Spool) dropShipped() {
	for len(s.segs) > 1 && s.segs[0].last <= s.acked {
		path := filepath.Join(s.cfg.Dir, segmentName(s.segs[0].first))
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("spool: a shipped segment not deleted", "segment", path, "err", err)
			return
		}
		s.bytes -= s.segs[0].size
		s.segs = s.segs[1:]
	}
}

// Room returns how many bytes the spool may still take, or why it takes
// no records now (closed, or its disk failing): one look, under one lock,
// on the path of every request.
func (s *Spool) Room() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.cfg.MaxBytes - s.bytes, s.syncErr
}

// Stats are the spool's figures for metrics.
type Stats struct {
	// Last is the last record's sequence number, Acked the last shipped.
	Last, Acked uint64
	// Bytes on disk, and the cap.
	Bytes, MaxBytes int64
	Segments        int
	// Lost counts records skipped as corrupt.
	Lost uint64
}

// Stats returns the spool's figures now.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Last: s.segs[len(s.segs)-1].last, Acked: s.acked, Bytes: s.bytes, MaxBytes: s.cfg.MaxBytes, Segments: len(s.segs), Lost: s.lost}
}

// Close fsyncs and closes the spool. It is idempotent.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if cerr := s.saveCursor(true); err == nil {
		err = cerr
	}
	return err
}

// Sync fsyncs what has been written now, without waiting for the group
// commit.
func (s *Spool) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.f.Sync()
}

func readCursorFile(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spool: cursor: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("spool: cursor %q: %w", b, err)
	}
	return v, nil
}

// writeCursorFile replaces the cursor atomically and durably (renameio:
// written aside in the same directory, synced, renamed over it).
func writeCursorFile(path string, seq uint64) error {
	if err := renameio.WriteFile(path, []byte(strconv.FormatUint(seq, 10)+"\n"), 0o600, renameio.WithTempDir(filepath.Dir(path))); err != nil {
		return fmt.Errorf("spool: cursor: %w", err)
	}
	return nil
}
