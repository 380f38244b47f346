package cas

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// openBlobFiles counts this process's descriptors open on s's blobs.
func openBlobFiles(t *testing.T, s *Store) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.Dir(), "blobs") + string(filepath.Separator)
	n := 0
	for _, e := range ents {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(p, dir) {
			n++
		}
	}
	return n
}

// keepLinkedPins keeps n files of size random bytes (seeds from seed on)
// by links, each its own pin and blob, and returns their indexes and data.
func keepLinkedPins(t *testing.T, s *Store, n, size int, seed uint64) ([]*Index, [][]byte) {
	t.Helper()
	var xs []*Index
	var datas [][]byte
	for i := range n {
		data := randBytes(size, seed+uint64(i))
		f, x := linkedFile(t, data)
		l := s.Link()
		if err := l.Add(f, int64(len(data))); err != nil {
			t.Fatal(err)
		}
		if _, err := s.KeepLinked(context.Background(), fmt.Sprintf("image-%d", i), f, l, x); err != nil {
			t.Fatal(err)
		}
		f.Close()
		xs, datas = append(xs, x), append(datas, data)
	}
	return xs, datas
}

// Reads from many blobs keep at most maxOpenBlobs of them open (the least
// recently read are closed, and read again later by reopening them), and
// Close closes the rest.
func TestOpenBlobFilesBounded(t *testing.T) {
	s := openStore(t, Options{})
	const pins = maxOpenBlobs + 36
	xs, datas := keepLinkedPins(t, s, pins, 64<<10, 1000)
	if n := len(blobNames(t, s)); n != pins {
		t.Fatalf("%d blobs, want %d", n, pins)
	}
	for round := range 2 {
		for i, x := range xs {
			checkChunks(t, s, x, datas[i])
		}
		if n := openBlobFiles(t, s); n > maxOpenBlobs || n == 0 {
			t.Fatalf("round %d: %d blob files open after reading %d blobs, want 1..%d", round, n, pins, maxOpenBlobs)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := openBlobFiles(t, s); n != 0 {
		t.Fatalf("%d blob files open after Close", n)
	}
}

// Readers racing each other over more blobs than may stay open never
// find a file closed under them (a file in use is not evicted): every
// chunk reads back. Run with -race.
func TestOpenBlobEvictionSparesReadsInProgress(t *testing.T) {
	s := openStore(t, Options{})
	s.maxOpen = 2
	xs, datas := keepLinkedPins(t, s, 8, 256<<10, 2000)
	errs := make(chan error, 6)
	for g := range 6 {
		go func() {
			for r := range 4 {
				for k := range xs {
					i := (k + g + r) % len(xs)
					offs := xs[i].Offsets()
					for j, e := range xs[i].Entries {
						got, err := s.Get(e.ID, nil)
						if err != nil || string(got) != string(datas[i][offs[j]:offs[j]+int64(e.Length)]) {
							errs <- fmt.Errorf("reader %d: pin %d entry %d: %v", g, i, j, err)
							return
						}
					}
				}
			}
			errs <- nil
		}()
	}
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
}
