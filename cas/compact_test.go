package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// sparseStore keeps, in a store in dir, pin a (8 chunks: pack A), b
// (2 of a's chunks and one new) and c (1 of a's and one new), then unpins
// a: pack A is a quarter live, named by b's and c's tables.
func sparseStore(t *testing.T, dir string, opts Options) (*Store, map[string]*Index, map[string][]byte) {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	c := randomBlocks(10, 60)
	xs, data := map[string]*Index{}, map[string][]byte{}
	for _, p := range []struct {
		name  string
		parts [][]byte
	}{
		{"a", c[:8]},
		{"b", [][]byte{c[0], c[1], c[8]}},
		{"c", [][]byte{c[1], c[9]}},
	} {
		data[p.name] = bytes.Join(p.parts, nil)
		xs[p.name], _ = BuildIndex(bytes.NewReader(data[p.name]), IndexOptions{Chunking: Fixed})
		if _, err := s.Keep(context.Background(), p.name, bytes.NewReader(data[p.name]), xs[p.name]); err != nil {
			t.Fatal(err)
		}
	}
	if opts.MaxBytes == 0 {
		if err := s.Unpin("a"); err != nil {
			t.Fatal(err)
		}
	}
	return s, xs, data
}

// blobsAllocated sums the blocks of the store's blob files.
func blobsAllocated(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	for _, e := range ents {
		n += allocated(t, filepath.Join(dir, "blobs", e.Name()))
	}
	return n
}

// Compact copies a sparse pack's live chunks into a new pack and moves the
// tables onto it; stopped after any step (as a crash would) and reopened,
// the store reads every pin, a second compaction finishes the work, and
// once GC has passed the grace period the disk holds what the pins hold.
func TestCompactStoppedAfterEachStep(t *testing.T) {
	ctx := context.Background()
	const grace = time.Hour
	for _, stop := range []string{"", "pack", "table b", "table c"} {
		t.Run("stop="+stop, func(t *testing.T) {
			dir := t.TempDir()
			s, xs, data := sparseStore(t, dir, Options{GCGrace: grace})
			packA := s.where[Sum(data["b"][:4096])][0].b.name
			held := s.Held()
			s.stopAt = func(step string) bool { return step == stop }
			st, err := s.Compact(ctx, DefaultCompactBelow)
			switch {
			case stop == "" && (err != nil || st.Packs != 1 || st.Tables != 2 || st.Copied != 2*4096 || st.Freed <= 0):
				t.Fatalf("compact: %+v %v; want 1 pack, 2 tables, 8192 bytes copied, bytes freed", st, err)
			case stop != "" && !errors.Is(err, errStopped):
				t.Fatalf("compact stopped after %s: %v", stop, err)
			}
			if stop == "" {
				if h := s.Held(); h != held-st.Freed {
					t.Fatalf("held %d, want %d - %d", h, held, st.Freed)
				}
				checkChunks(t, s, xs["b"], data["b"])
				checkChunks(t, s, xs["c"], data["c"])
			}
			s.Close()

			s2, err := Open(dir, Options{GCGrace: grace})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"b", "c"} {
				checkChunks(t, s2, xs[p], data[p])
			}
			if _, err := s2.Compact(ctx, DefaultCompactBelow); err != nil {
				t.Fatal(err)
			}
			if _, err := s2.GC(ctx, time.Now().Add(2*grace), grace); err != nil {
				t.Fatal(err)
			}
			s3, err := Open(dir, Options{GCGrace: grace})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"b", "c"} {
				checkChunks(t, s2, xs[p], data[p])
				checkChunks(t, s3, xs[p], data[p])
			}
			onDisk := blobsAllocated(t, dir)
			if h := s3.Held(); h != onDisk || h >= held {
				t.Fatalf("held %d, blobs on disk %d, before compaction %d: want equal and less", h, onDisk, held)
			}
			// Pack A is gone; stopped between the tables, b's chunks of it
			// and c's went into two packs (one per compaction).
			want := 3
			if stop == "table b" {
				want = 4
			}
			if n := blobNames(t, s3); len(n) != want || slices.Contains(n, packA) {
				t.Fatalf("blobs %v, want %d and not pack A %s", n, want, packA)
			}
		})
	}
}

// Trim compacts before it gives up: the oldest pin goes, and the pack it
// leaves a quarter live is rewritten, so the newer pins fit MaxBytes
// whole.
func TestTrimCompacts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, xs, data := sparseStore(t, dir, Options{MaxBytes: 6 * 4096, GCGrace: time.Nanosecond})
	if pins := s.Pins(); len(pins) != 2 || pins[0] != "b" || pins[1] != "c" {
		t.Fatalf("pins %v, want b and c", pins)
	}
	if h := s.Held(); h > 6*4096 {
		t.Fatalf("held %d over MaxBytes", h)
	}
	for _, p := range []string{"b", "c"} {
		checkChunks(t, s, xs[p], data[p])
	}
	if _, err := s.GC(ctx, time.Now().Add(time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	if h, d := s.Held(), blobsAllocated(t, dir); h != d {
		t.Fatalf("held %d, blobs on disk %d", h, d)
	}
}

// Compactions run while a pin is re-pinned with versions that share half
// their chunks (leaving sparse packs) and while another pin's chunks are
// read: every read finds its chunk, every version reads back whole.
func TestCompactConcurrentWithKeepsAndReads(t *testing.T) {
	ctx := context.Background()
	s, xs, data := sparseStore(t, t.TempDir(), Options{GCGrace: time.Hour})
	blocks := randomBlocks(16, 200)
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, 3)
	wg.Add(3)
	go func() { // keeper
		defer wg.Done()
		defer close(done)
		for i := range 16 {
			v := bytes.Join(blocks[i%8:i%8+8], nil)
			x, _ := BuildIndex(bytes.NewReader(v), IndexOptions{Chunking: Fixed})
			if _, err := s.Keep(ctx, "b", bytes.NewReader(v), x); err != nil {
				errs <- err
				return
			}
		}
	}()
	compactions := 0
	go func() { // compactor
		defer wg.Done()
		for { // at least once: pack A is a quarter live
			st, err := s.Compact(ctx, 0.9)
			if err != nil {
				errs <- err
				return
			}
			compactions += st.Packs
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	go func() { // reader
		defer wg.Done()
		for {
			offs := xs["c"].Offsets()
			for i, e := range xs["c"].Entries {
				got, err := s.Get(e.ID, nil)
				if err != nil || !bytes.Equal(got, data["c"][offs[i]:offs[i]+int64(e.Length)]) {
					errs <- fmt.Errorf("read of c's entry %d during compactions: %v", i, err)
					return
				}
			}
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if compactions == 0 {
		t.Fatal("no pack compacted")
	}
	last := bytes.Join(blocks[7:15], nil)
	x, _ := BuildIndex(bytes.NewReader(last), IndexOptions{Chunking: Fixed})
	checkChunks(t, s, x, last)
	checkChunks(t, s, xs["c"], data["c"])
}
