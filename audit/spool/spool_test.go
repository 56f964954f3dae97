package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, dir string, segment, max int64) *Spool {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Dir, cfg.SegmentSize, cfg.MaxBytes = dir, segment, max
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func payload(i int) []byte {
	return []byte(fmt.Sprintf(`{"event":%d,"pad":"%s"}`, i, bytes.Repeat([]byte("x"), i%97)))
}

func readAll(t testing.TB, s *Spool, after uint64) []Record {
	t.Helper()
	var out []Record
	for {
		recs, err := s.Read(after, 100, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
		after = recs[len(recs)-1].Seq
	}
}

// Records come back in order with their sequence numbers, across segments
// and a reopening; the cursor survives too, and shipped segments go.
func TestAppendReadAckReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 4096, 1<<20)
	for i := 1; i <= 500; i++ {
		seq, err := s.Append(payload(i))
		if err != nil || seq != uint64(i) {
			t.Fatalf("append %d: seq %d, %v", i, seq, err)
		}
	}
	recs := readAll(t, s, 0)
	if len(recs) != 500 {
		t.Fatalf("read %d records", len(recs))
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) || !bytes.Equal(r.Payload, payload(i+1)) {
			t.Fatalf("record %d: seq %d %q", i, r.Seq, r.Payload)
		}
	}
	st := s.Stats()
	if st.Segments < 5 || st.Last != 500 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Ack(501); err == nil {
		t.Fatal("an ack past the last record")
	}
	if err := s.Ack(300); err != nil {
		t.Fatal(err)
	}
	if after := s.Stats(); after.Segments >= st.Segments || after.Bytes >= st.Bytes || after.Acked != 300 {
		t.Fatalf("after the ack: %+v (before %+v)", after, st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("a second Close:", err)
	}
	if _, err := s.Append(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}

	s = open(t, dir, 4096, 1<<20)
	defer s.Close()
	if st := s.Stats(); st.Acked != 300 || st.Last != 500 {
		t.Fatalf("reopened: %+v", st)
	}
	recs = readAll(t, s, 300)
	if len(recs) != 200 || recs[0].Seq != 301 || !bytes.Equal(recs[199].Payload, payload(500)) {
		t.Fatalf("reopened: read %d records from %d", len(recs), recs[0].Seq)
	}
	if seq, err := s.Append(payload(501)); err != nil || seq != 501 {
		t.Fatalf("append after reopening: %d %v", seq, err)
	}
	// Everything shipped, reopened: numbering goes on after the cursor.
	if err := s.Ack(501); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, 4096, 1<<20)
	if seq, err := s.Append(payload(502)); err != nil || seq != 502 {
		t.Fatalf("append after everything shipped: %d %v", seq, err)
	}
	s.Close()
}

// A record torn by a crash (cut short, or its CRC wrong) at the end of the
// last segment is cut off when the spool opens; the records before it are
// all there, and new ones follow them.
func TestTornLastRecordIsCutOff(t *testing.T) {
	for name, tear := range map[string]func(b []byte) []byte{
		"cut in the header":  func(b []byte) []byte { return b[:len(b)-len(payload(30))-5] },
		"cut in the payload": func(b []byte) []byte { return b[:len(b)-3] },
		"a flipped byte":     func(b []byte) []byte { b[len(b)-2] ^= 0x40; return b },
		"garbage after":      func(b []byte) []byte { return append(b, 0xA7, 0, 0) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, 1<<20, 1<<22)
			for i := 1; i <= 30; i++ {
				if _, err := s.Append(payload(i)); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			path := filepath.Join(dir, segmentName(1))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tear(b), 0o600); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, 1<<20, 1<<22)
			defer s.Close()
			recs := readAll(t, s, 0)
			want := 29
			if name == "garbage after" {
				want = 30
			}
			if len(recs) != want {
				t.Fatalf("%d records after the tear, want %d", len(recs), want)
			}
			for _, r := range recs {
				if !bytes.Equal(r.Payload, payload(int(r.Seq))) {
					t.Fatalf("record %d misread", r.Seq)
				}
			}
			if seq, err := s.Append(payload(99)); err != nil || seq != uint64(want+1) {
				t.Fatalf("append after the tear: %d %v", seq, err)
			}
			if recs := readAll(t, s, uint64(want)); len(recs) != 1 || !bytes.Equal(recs[0].Payload, payload(99)) {
				t.Fatalf("the record after the tear: %v", recs)
			}
		})
	}
}

// A corrupt record inside an older segment is never returned: the rest of
// that segment is skipped and counted, and the next segment is read.
func TestCorruptRecordIsSkippedNotMisread(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 4096, 1<<20)
	defer s.Close()
	for i := 1; i <= 200; i++ {
		if _, err := s.Append(payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, segmentName(1))
	b, _ := os.ReadFile(path)
	b[len(b)/2] ^= 0xff
	os.WriteFile(path, b, 0o600)
	recs := readAll(t, s, 0)
	for _, r := range recs {
		if !bytes.Equal(r.Payload, payload(int(r.Seq))) {
			t.Fatalf("record %d misread", r.Seq)
		}
	}
	st := s.Stats()
	if st.Lost == 0 || uint64(len(recs))+st.Lost != 200 || recs[len(recs)-1].Seq != 200 {
		t.Fatalf("read %d, lost %d", len(recs), st.Lost)
	}
}

// The spool refuses records past its cap, and takes them again once the
// shipper has caught up.
func TestFullUntilShipped(t *testing.T) {
	s := open(t, t.TempDir(), 4096, 16384)
	defer s.Close()
	var last uint64
	for {
		seq, err := s.Append(payload(50))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = seq
	}
	if _, err := s.Append(make([]byte, MaxRecord+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a record too large: %v", err)
	}
	if err := s.Ack(last); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(payload(50)); err != nil {
		t.Fatalf("after the shipper caught up: %v", err)
	}
}

// Appends from many goroutines get distinct, gapless sequence numbers and
// all read back.
func TestConcurrentAppends(t *testing.T) {
	s := open(t, t.TempDir(), 64<<10, 64<<20)
	defer s.Close()
	var wg sync.WaitGroup
	seen := make([]bool, 8*500+1)
	var mu sync.Mutex
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				seq, err := s.Append(payload(w*1000 + i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[seq] {
					t.Errorf("sequence number %d twice", seq)
				}
				seen[seq] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := len(readAll(t, s, 0)); n != 4000 {
		t.Fatalf("read %d of 4000", n)
	}
}

// The reader never returns a record that was not written, whatever a crash
// or the disk did to the last segment: every record read is the one
// written under its number.
func FuzzRecovery(f *testing.F) {
	f.Add([]byte("seed"), uint16(100), uint16(0), byte(0))
	f.Add([]byte("another seed"), uint16(5000), uint16(77), byte(0x10))
	f.Fuzz(func(t *testing.T, seed []byte, cut, flip uint16, mask byte) {
		dir := t.TempDir()
		s := open(t, dir, 4096, 1<<20)
		n := 20 + len(seed)%30
		written := map[uint64][]byte{}
		for i := range n {
			p := append(bytes.Repeat(seed, i%5+1), byte(i))
			seq, err := s.Append(p)
			if err != nil {
				t.Fatal(err)
			}
			written[seq] = p
		}
		s.Close()
		entries, _ := os.ReadDir(dir)
		var last string
		for _, e := range entries {
			if filepath.Ext(e.Name()) == ".seg" {
				last = filepath.Join(dir, e.Name())
			}
		}
		b, _ := os.ReadFile(last)
		if len(b) > 0 {
			b[int(flip)%len(b)] ^= mask
			b = b[:int(cut)%(len(b)+1)]
		}
		os.WriteFile(last, b, 0o600)
		s2, err := Open(Config{Dir: dir, SegmentSize: 4096, MaxBytes: 1 << 20, SyncInterval: DefaultConfig().SyncInterval})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		for _, r := range readAll(t, s2, 0) {
			if !bytes.Equal(r.Payload, written[r.Seq]) {
				t.Fatalf("record %d misread: %q, written %q", r.Seq, r.Payload, written[r.Seq])
			}
		}
	})
}

// BenchmarkAppend measures what auditing costs a request: one append of a
// typical event (about 400 bytes) while the group commit fsyncs, with
// p50 and p99 of single appends, from 8 goroutines.
//
//	go test -run '^$' -bench BenchmarkAppend -benchtime 200000x ./audit/spool/
func BenchmarkAppend(b *testing.B) {
	s := open(b, b.TempDir(), 64<<20, 8<<30)
	defer s.Close()
	ev := bytes.Repeat([]byte("e"), 400)
	lat := make(chan []time.Duration, 64)
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var ds []time.Duration
		for pb.Next() {
			start := time.Now()
			if _, err := s.Append(ev); err != nil {
				b.Error(err)
				return
			}
			ds = append(ds, time.Since(start))
		}
		lat <- ds
	})
	b.StopTimer()
	close(lat)
	var all []time.Duration
	for ds := range lat {
		all = append(all, ds...)
	}
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-us")
	}
}

// The cursor file lags acknowledgements by up to CursorInterval: a crash
// (no Close) then reads some shipped records again, never loses one, and
// the segments dropped meanwhile do not confuse the reopened spool.
func TestCursorLagsButLosesNothing(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 4096, 1<<20)
	for i := 1; i <= 400; i++ {
		if _, err := s.Append(payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ack(100); err != nil { // written: the first in a while
		t.Fatal(err)
	}
	if err := s.Ack(350); err != nil { // within CursorInterval: not yet written
		t.Fatal(err)
	}
	if st := s.Stats(); st.Acked != 350 {
		t.Fatalf("stats %+v", st)
	}
	// A crash: the files as they are, without Close (the open segment's
	// handle is left to the test's end).
	crashed := s
	defer crashed.Close()
	dir2 := t.TempDir()
	copyDir(t, dir, dir2)
	r := open(t, dir2, 4096, 1<<20)
	defer r.Close()
	st := r.Stats()
	if st.Acked < 100 || st.Acked > 350 || st.Last != 400 {
		t.Fatalf("after the crash: %+v", st)
	}
	recs := readAll(t, r, st.Acked)
	if len(recs) == 0 || recs[len(recs)-1].Seq != 400 || recs[0].Seq > 351 {
		t.Fatalf("after the crash: %d records, from %d", len(recs), recs[0].Seq)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("a gap after the crash at %d", recs[i-1].Seq)
		}
	}
	t.Logf("after the crash the cursor said %d (acknowledged 350): %d records read again", st.Acked, 351-int(recs[0].Seq))
	// Close writes the cursor through.
	if err := crashed.Ack(399); err != nil {
		t.Fatal(err)
	}
	crashed.Close()
	again := open(t, dir, 4096, 1<<20)
	defer again.Close()
	if st := again.Stats(); st.Acked != 399 {
		t.Fatalf("after Close: %+v", st)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
