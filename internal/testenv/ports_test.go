package testenv

import (
	"net"
	"slices"
	"testing"
)

// A block of ports one claim holds is never handed to another: the claims
// are flocks, which conflict between open files in one process just as
// between processes (go test's parallel packages).
func TestPortBlocksAreExclusive(t *testing.T) {
	var bases []int
	for range 6 {
		base, f, err := claimPortBlock(nil) // held: nil, so only the locks keep them apart
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		if slices.Contains(bases, base) {
			t.Fatalf("block %d claimed twice: %v", base, bases)
		}
		if base < 10000 || base+portBlockSize > ephemeralLow() {
			t.Fatalf("block %d is not below the ephemeral range (%d)", base, ephemeralLow())
		}
		bases = append(bases, base)
	}
	// Ports handed out come from this process's claimed blocks.
	for range 20 {
		l, err := listenOutsideEphemeral("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		portBlocksMu.Lock()
		in := slices.ContainsFunc(portBlocks, func(b int) bool { return port >= b && port < b+portBlockSize })
		portBlocksMu.Unlock()
		if !in {
			t.Fatalf("port %d is outside the claimed blocks", port)
		}
	}
}
