package cas

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// randomBlocks returns n blocks of 4 KiB of randomData, seeds seed, seed+1…
func randomBlocks(n int, seed uint64) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = randomData(4096, seed+uint64(i))
	}
	return out
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

// A keep takes the chunks the store already holds where they are: a chunk
// file (Put) stays a file the pin references, a chunk in another pin's
// pack is named by the new pin's table, so both outlive that pin.
func TestKeepHoldsStoredChunksWhereTheyAre(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	dir := s.Dir()
	c := randomBlocks(4, 20)
	if _, err := s.Put(Sum(c[0]), c[0]); err != nil {
		t.Fatal(err)
	}
	a := bytes.Join([][]byte{c[0], c[1], c[2]}, nil)
	xa, _ := BuildIndex(bytes.NewReader(a), IndexOptions{Chunking: Fixed})
	if added, err := s.Keep(ctx, "a", bytes.NewReader(a), xa); err != nil || added != 2 {
		t.Fatalf("keep a: added %d, %v; want the 2 chunks not in a file", added, err)
	}
	b := bytes.Join([][]byte{c[0], c[1], c[3]}, nil)
	xb, _ := BuildIndex(bytes.NewReader(b), IndexOptions{Chunking: Fixed})
	if added, err := s.Keep(ctx, "b", bytes.NewReader(b), xb); err != nil || added != 1 {
		t.Fatalf("keep b: added %d, %v; want 1", added, err)
	}
	if err := s.Unpin("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx, time.Now().Add(time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	checkChunks(t, s, xb, b)
	if n := countChunks(t, s); n != 1 {
		t.Fatalf("%d chunk files, want c[0]'s", n)
	}
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkChunks(t, s2, xb, b)
}

// allocated is the bytes on disk of the file at p (its blocks).
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// Held counts what the pins keep on disk: a pack whole while any pin
// names one of its chunks, an inode once however many blobs link it, a
// chunk file at its length; the same after a reopen.
func TestHeldCountsBlobsOnDisk(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	dir := s.Dir()
	c := randomBlocks(5, 50)
	keep := func(name string, parts ...[]byte) *Index {
		t.Helper()
		data := bytes.Join(parts, nil)
		x, _ := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
		if _, err := s.Keep(ctx, name, bytes.NewReader(data), x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	keep("a", c[0], c[1], c[2], c[3])
	packA := filepath.Join(dir, "blobs", blobNames(t, s)[0])
	want := allocated(t, packA)
	if h := s.Held(); h != want || want < 4*4096 {
		t.Fatalf("held %d, want pack a's %d", h, want)
	}
	keep("b", c[0], c[4]) // names a's pack for c[0], a new pack for c[4]
	if err := s.Unpin("a"); err != nil {
		t.Fatal(err)
	}
	var packB string
	for _, n := range blobNames(t, s) {
		if p := filepath.Join(dir, "blobs", n); p != packA {
			packB = p
		}
	}
	want = allocated(t, packA) + allocated(t, packB)
	if h := s.Held(); h != want {
		t.Fatalf("held %d after a went, want both packs' %d (b names one chunk of a's)", h, want)
	}

	// One file linked twice (two blobs, one inode) counts once.
	data := randomData(256<<10, 55)
	f, x := linkedFile(t, data)
	for _, name := range []string{"c", "d"} {
		l := s.Link()
		if err := l.Add(f, x.Size); err != nil {
			t.Fatal(err)
		}
		if _, err := s.KeepLinked(ctx, name, f, l, x); err != nil {
			t.Fatal(err)
		}
	}
	want += allocated(t, f.Name())
	if h := s.Held(); h != want {
		t.Fatalf("held %d with the file linked twice, want %d", h, want)
	}

	// A chunk file counts its length.
	if _, err := s.Put(Sum(c[3][:1000]), c[3][:1000]); err != nil {
		t.Fatal(err)
	}
	xe, _ := BuildIndex(bytes.NewReader(c[3][:1000]), IndexOptions{Chunking: Fixed})
	if err := s.Pin("e", xe); err != nil {
		t.Fatal(err)
	}
	want += 1000
	if h := s.Held(); h != want {
		t.Fatalf("held %d with a chunk file pinned, want %d", h, want)
	}
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if h := s2.Held(); h != want {
		t.Fatalf("held %d after reopen, want %d", h, want)
	}

	// Unpinning one of the two links frees nothing; the other, the file's
	// blocks from Held; GC then frees nothing on disk (the file is still
	// linked where it came from).
	for _, name := range []string{"c", "d"} {
		if err := s2.Unpin(name); err != nil {
			t.Fatal(err)
		}
	}
	if h, w := s2.Held(), want-allocated(t, f.Name()); h != w {
		t.Fatalf("held %d after the links' pins went, want %d", h, w)
	}
	st, err := s2.GC(ctx, time.Now().Add(time.Hour), 0)
	if err != nil || st.BlobsRemoved != 2 || st.RemovedBytes != 0 {
		t.Fatalf("GC of two links to a file still linked elsewhere: %+v %v; want 2 blobs, 0 bytes freed", st, err)
	}
}

// A keep naming a chunk that a held blob and an unreferenced one (in its
// grace period) both hold names the held one: naming the other makes the
// pins hold it whole (Held), and a link is never compacted. Here the task's
// image was re-pinned (its earlier version's link unreferenced) and another
// pin keeps the image's first chunks.
func TestKeepPrefersAHeldBlob(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	v1 := randomData(256<<10, 91)
	v2 := append(append([]byte(nil), v1[:len(v1)-4096]...), randomData(4096, 92)...)
	var links []string
	for _, v := range [][]byte{v1, v2} {
		f, x := linkedFile(t, v)
		l := s.Link()
		if err := l.Add(f, x.Size); err != nil {
			t.Fatal(err)
		}
		if _, err := s.KeepLinked(ctx, "image-t", f, l, x); err != nil {
			t.Fatal(err)
		}
		links = append(links, s.tables["image-t"].blobs[0])
	}
	held := s.Held()
	head := v1[:64<<10]
	x, _ := BuildIndex(bytes.NewReader(head), IndexOptions{Chunking: CDC})
	if _, err := s.Keep(ctx, "u", bytes.NewReader(head), x); err != nil {
		t.Fatal(err)
	}
	var packs int64 // u's own pack (its cut last chunk)
	for _, n := range s.tables["u"].blobs {
		switch {
		case n == links[0]:
			t.Fatalf("pin u names the image's earlier link %s, not the held %s (held %d, was %d)", n, links[1], s.Held(), held)
		case strings.HasPrefix(n, "pack-"):
			packs += allocated(t, s.blobPath(n))
		}
	}
	if h := s.Held(); h != held+packs {
		t.Fatalf("held %d, want %d + %d", h, held, packs)
	}
}
