package cas

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func randomData(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// countChunks counts the chunk files in the store's directory.
func countChunks(t *testing.T, s *Store) int {
	n := 0
	filepath.WalkDir(filepath.Join(s.Dir(), "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// blobBytes sums the sizes of the store's blobs (links and packs).
func blobBytes(t *testing.T, s *Store) int64 {
	ents, err := os.ReadDir(filepath.Join(s.Dir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// Keep stores a file's chunks and pins it; past MaxBytes the oldest pins
// go and GC frees their chunks, so the disk use stays bounded.
func TestKeepPinsAndTrimBoundsTheStore(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir(), Options{MaxBytes: 5 * 4096, GCGrace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"img-a", "img-b", "img-c", "img-d"} {
		data := randomData(2*4096, uint64(i))
		x, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
		if err != nil {
			t.Fatal(err)
		}
		added, err := s.Keep(ctx, name, bytes.NewReader(data), x)
		if err != nil || added != 2 {
			t.Fatalf("keep %s: added %d, %v", name, added, err)
		}
		// Keeping the same file again adds nothing.
		if added, err := s.Keep(ctx, name, bytes.NewReader(data), x); err != nil || added != 0 {
			t.Fatalf("keep %s again: added %d, %v", name, added, err)
		}
		if h := s.Held(); h > 5*4096 {
			t.Fatalf("after %s the pins hold %d bytes, over the 20480 allowed", name, h)
		}
	}
	if pins := s.Pins(); len(pins) != 2 || pins[0] != "img-c" || pins[1] != "img-d" {
		t.Fatalf("pins %v, want the two newest", pins)
	}
	time.Sleep(time.Millisecond)
	if n, b := countChunks(t, s), blobBytes(t, s); n != 0 || b != 4*4096 {
		t.Fatalf("%d chunk files and %d bytes of blobs on disk, want the 4 chunks of the kept pins in blobs", n, b)
	}
	// A single pin larger than the bound is kept (the newest always is).
	big := randomData(8*4096, 9)
	x, _ := BuildIndex(bytes.NewReader(big), IndexOptions{Chunking: Fixed})
	if _, err := s.Keep(ctx, "img-big", bytes.NewReader(big), x); err != nil {
		t.Fatal(err)
	}
	if pins := s.Pins(); len(pins) != 1 || pins[0] != "img-big" {
		t.Fatalf("pins %v, want only img-big", pins)
	}
}

// Keep refuses a bad name and a source shorter than its index, and pins
// nothing then.
func TestKeepRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := randomData(3*4096, 1)
	x, _ := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
	if _, err := s.Keep(ctx, "../evil", bytes.NewReader(data), x); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := s.Keep(ctx, "short", bytes.NewReader(data[:5000]), x); err == nil {
		t.Fatal("short source accepted")
	}
	changed := append([]byte(nil), data...)
	changed[9000] ^= 1
	if _, err := s.Keep(ctx, "changed", bytes.NewReader(changed), x); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("source that no longer matches its index: %v", err)
	}
	if pins := s.Pins(); len(pins) != 0 {
		t.Fatalf("pins %v after refused keeps", pins)
	}
}

// Pins and their held bytes survive reopening; Trim then still knows the
// oldest.
func TestHeldSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := Open(dir, Options{})
	for i, name := range []string{"p1", "p2"} {
		data := randomData(4096, uint64(10+i))
		x, _ := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
		if _, err := s.Keep(ctx, name, bytes.NewReader(data), x); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // distinct pin times
	}
	s2, err := Open(dir, Options{MaxBytes: 4096, GCGrace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if h := s2.Held(); h != 2*4096 {
		t.Fatalf("held %d after reopen, want 8192", h)
	}
	st, err := s2.Trim(ctx)
	if err != nil || len(st.Unpinned) != 1 || st.Unpinned[0] != "p1" || st.Held != 4096 {
		t.Fatalf("trim: %+v %v", st, err)
	}
}
