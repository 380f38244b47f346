package cas

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// linkedFile writes data to a new file and returns it open, with its CDC
// index.
func linkedFile(t *testing.T, data []byte) (*os.File, *Index) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "state.bin")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	x, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: CDC})
	if err != nil {
		t.Fatal(err)
	}
	return f, x
}

func blobNames(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Dir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// checkChunks reads every data chunk of x back and compares it with data.
func checkChunks(t *testing.T, s *Store, x *Index, data []byte) {
	t.Helper()
	offs := x.Offsets()
	for i, e := range x.Entries {
		if e.Hole {
			continue
		}
		got, err := s.Get(e.ID, nil)
		if err != nil || !bytes.Equal(got, data[offs[i]:offs[i]+int64(e.Length)]) {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
}

// A linked file is kept by reference: one hard link, no copy, and its
// chunks read back (verified) after the original path is gone and after a
// reopen.
func TestKeepLinkedReferencesTheFile(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	data := randBytes(3<<20, 40)
	f, x := linkedFile(t, data)
	l := s.Link()
	if err := l.Add(f, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name()) // the image goes before the keep runs
	added, err := s.KeepLinked(ctx, "image-a", f, l, x)
	if err != nil || added != len(x.Entries) {
		t.Fatalf("keep: added %d of %d, %v", added, len(x.Entries), err)
	}
	names := blobNames(t, s)
	if len(names) != 1 || names[0][:5] != "link-" || countChunks(t, s) != 0 {
		t.Fatalf("blobs %v and %d chunk files, want one link", names, countChunks(t, s))
	}
	fi1, _ := f.Stat()
	fi2, _ := os.Stat(filepath.Join(s.Dir(), "blobs", names[0]))
	if !os.SameFile(fi1, fi2) {
		t.Fatal("the blob is not a link to the kept file")
	}
	checkChunks(t, s, x, data)
	s2, err := Open(s.Dir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkChunks(t, s2, x, data)
	if s2.Refs(x.Entries[0].ID) != 1 || s2.Held() != int64(len(data)) {
		t.Fatalf("after reopen: refs %d, held %d", s2.Refs(x.Entries[0].ID), s2.Held())
	}
}

// A file that cannot be linked (removed before Link) is copied into a
// pack by the keep, still verified against the index.
func TestKeepLinkedCopiesWhatItCannotLink(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	data := randBytes(1<<20, 41)
	f, x := linkedFile(t, data)
	os.Remove(f.Name())
	l := s.Link()
	if err := l.Add(f, int64(len(data))); err == nil {
		t.Fatal("linked a removed file")
	}
	if _, err := s.KeepLinked(ctx, "image-b", f, l, x); err != nil {
		t.Fatal(err)
	}
	if names := blobNames(t, s); len(names) != 1 || names[0][:5] != "pack-" {
		t.Fatalf("blobs %v, want one pack", names)
	}
	checkChunks(t, s, x, data)
}

// The file under a reference changes: rewritten in place (the link shares
// its inode) the changed chunk is a miss (ErrCorrupt once, then not
// found), never wrong data, and the other chunks still read; replaced by a
// rename (a new inode) the link keeps the old bytes.
func TestLinkedFileReplacedUnderAReference(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	data := randBytes(2<<20, 42)
	p := filepath.Join(t.TempDir(), "state.bin")
	os.WriteFile(p, data, 0o600)
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	defer f.Close()
	x, _ := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: CDC})
	l := s.Link()
	if err := l.Add(f, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KeepLinked(ctx, "image-c", f, l, x); err != nil {
		t.Fatal(err)
	}
	// In place: the first chunk's bytes change.
	if _, err := f.WriteAt([]byte("rewritten"), 10); err != nil {
		t.Fatal(err)
	}
	first := x.Entries[0].ID
	if _, err := s.Get(first, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("changed chunk: %v", err)
	}
	if s.Has(first) {
		t.Fatal("a location that no longer holds its chunk is still reported")
	}
	if _, err := s.Get(first, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("changed chunk, second read: %v", err)
	}
	offs := x.Offsets()
	last := len(x.Entries) - 1
	if got, err := s.Get(x.Entries[last].ID, nil); err != nil || !bytes.Equal(got, data[offs[last]:]) {
		t.Fatalf("unchanged chunk: %v", err)
	}
	// Replaced by a rename: the store's link still holds the old inode.
	data2 := randBytes(1<<20, 43)
	g, x2 := linkedFile(t, data2)
	l2 := s.Link()
	l2.Add(g, int64(len(data2)))
	if _, err := s.KeepLinked(ctx, "image-d", g, l2, x2); err != nil {
		t.Fatal(err)
	}
	other := randBytes(1<<20, 44)
	tmp := g.Name() + ".new"
	os.WriteFile(tmp, other, 0o600)
	if err := os.Rename(tmp, g.Name()); err != nil {
		t.Fatal(err)
	}
	checkChunks(t, s, x2, data2)
}

// A keep cut by a crash leaves a pack no table names, or a table without
// its pin, or (replacing a pin) a table of another index: Open removes
// the first two once the grace period has passed and ignores the third
// (its chunks are misses). A pack torn
// under its table reads as misses, never as wrong data.
func TestPackCrashMidWay(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := Open(dir, Options{})
	data := randBytes(64<<10, 45)
	x, _ := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
	if _, err := s.Keep(ctx, "image-e", bytes.NewReader(data), x); err != nil {
		t.Fatal(err)
	}
	names := blobNames(t, s)
	if len(names) != 1 {
		t.Fatalf("blobs %v", names)
	}
	// Crash leftovers: half a pack, a table without a pin.
	orphan := filepath.Join(dir, "blobs", newBlobName("pack"))
	os.WriteFile(orphan, data[:5000], 0o600)
	tbl, _ := os.ReadFile(filepath.Join(dir, "locs", "image-e"))
	os.WriteFile(filepath.Join(dir, "locs", "image-gone"), tbl, 0o600)
	// Within the grace period they stay (another process using the store,
	// as `ferry cas gc` beside an agent, must not take a keep in flight).
	if _, err := Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatal("a fresh orphan pack was removed")
	}
	s2, err := Open(dir, Options{GCGrace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("orphan pack kept")
	}
	if _, err := os.Stat(filepath.Join(dir, "locs", "image-gone")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("table without its pin kept")
	}
	checkChunks(t, s2, x, data)

	// The pack torn (the disk lost its tail): misses, not wrong data.
	os.Truncate(filepath.Join(dir, "blobs", names[0]), 30000)
	s3, _ := Open(dir, Options{})
	offs := x.Offsets()
	for i, e := range x.Entries {
		got, err := s3.Get(e.ID, nil)
		switch {
		case offs[i]+int64(e.Length) <= 30000:
			if err != nil || !bytes.Equal(got, data[offs[i]:offs[i]+int64(e.Length)]) {
				t.Fatalf("entry %d before the tear: %v", i, err)
			}
		case err == nil:
			t.Fatalf("entry %d past the tear read back", i)
		}
	}

	// A table of another index (a crash between writing the new table and
	// the new pin): ignored, the pin's chunks are misses.
	other := randBytes(64<<10, 46)
	y, _ := BuildIndex(bytes.NewReader(other), IndexOptions{Chunking: Fixed})
	s4, _ := Open(t.TempDir(), Options{})
	if _, err := s4.Keep(ctx, "image-f", bytes.NewReader(other), y); err != nil {
		t.Fatal(err)
	}
	tbl, _ = os.ReadFile(filepath.Join(s4.Dir(), "locs", "image-f"))
	os.WriteFile(filepath.Join(dir, "locs", "image-e"), tbl, 0o600)
	s5, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s5.Has(x.Entries[0].ID) || s5.Has(y.Entries[0].ID) {
		t.Fatal("a table of another index was used")
	}
}

// Unpinned blobs stay readable for the grace period (a transfer in flight
// may use them; keeping the same chunks again reuses them), then GC
// removes them; blobs linked for a keep that has not pinned yet survive
// GC.
func TestBlobGC(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, Options{})
	data := randBytes(64<<10, 47)
	x, _ := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
	if _, err := s.Keep(ctx, "image-g", bytes.NewReader(data), x); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin("image-g"); err != nil {
		t.Fatal(err)
	}
	st, err := s.GC(ctx, time.Now(), time.Hour)
	if err != nil || st.BlobsRemoved != 0 || !s.Has(x.Entries[0].ID) {
		t.Fatalf("gc within the grace period: %+v %v", st, err)
	}
	// Kept again within the grace period: nothing is copied.
	if added, err := s.Keep(ctx, "image-h", bytes.NewReader(data), x); err != nil || added != 0 || len(blobNames(t, s)) != 1 {
		t.Fatalf("keep again: added %d, blobs %v, %v", added, blobNames(t, s), err)
	}
	if st, _ := s.GC(ctx, time.Now().Add(2*time.Hour), time.Hour); st.BlobsRemoved != 0 {
		t.Fatalf("gc removed a pinned blob: %+v", st)
	}
	s.Unpin("image-h")
	st, _ = s.GC(ctx, time.Now().Add(2*time.Hour), time.Hour)
	if st.BlobsRemoved != 1 || st.RemovedBytes != int64(len(data)) || s.Has(x.Entries[0].ID) || len(blobNames(t, s)) != 0 {
		t.Fatalf("gc after the grace period: %+v, blobs %v", st, blobNames(t, s))
	}

	// Linked, not yet pinned: GC leaves it.
	f, y := linkedFile(t, data)
	l := s.Link()
	if err := l.Add(f, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.GC(ctx, time.Now().Add(2*time.Hour), time.Hour); st.BlobsRemoved != 0 {
		t.Fatalf("gc removed a link awaiting its keep: %+v", st)
	}
	if _, err := s.KeepLinked(ctx, "image-i", f, l, y); err != nil {
		t.Fatal(err)
	}
	checkChunks(t, s, y, data)
	// A link whose keep never comes is removed by Close.
	l2 := s.Link()
	l2.Add(f, int64(len(data)))
	l2.Close()
	if n := len(blobNames(t, s)); n != 1 {
		t.Fatalf("%d blobs after an abandoned link, want 1", n)
	}
	// A blob nobody knows (a crashed keep's, another process's): GC
	// removes it after the grace period only.
	orphan := filepath.Join(s.Dir(), "blobs", newBlobName("pack"))
	os.WriteFile(orphan, data[:100], 0o600)
	if st, _ := s.GC(ctx, time.Now(), time.Hour); st.BlobsRemoved != 0 {
		t.Fatalf("gc removed a fresh unknown blob: %+v", st)
	}
	if st, _ := s.GC(ctx, time.Now().Add(2*time.Hour), time.Hour); st.BlobsRemoved != 1 || len(blobNames(t, s)) != 1 {
		t.Fatalf("gc kept an old unknown blob: %+v", st)
	}
}

// decodeLocs refuses malformed tables.
func TestDecodeLocsRefusals(t *testing.T) {
	good := encodeLocs(&locTable{blobs: []string{newBlobName("pack")}, ents: []locEnt{{id: Sum([]byte("a")), off: 0, n: 1}}})
	if _, err := decodeLocs(good); err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"empty":      nil,
		"magic":      append([]byte("FRYLOC9\n"), good[8:]...),
		"truncated":  good[:len(good)-1],
		"trailing":   append(append([]byte(nil), good...), 0),
		"blob index": func() []byte { b := append([]byte(nil), good...); b[len(b)-16] = 1; return b }(),
		"zero len":   func() []byte { b := append([]byte(nil), good...); b[len(b)-1] = 0; return b }(),
		"blob name":  func() []byte { b := append([]byte(nil), good...); b[45] = '/'; return b }(),
	}
	for name, b := range bad {
		if _, err := decodeLocs(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzDecodeLocs(f *testing.F) {
	f.Add(encodeLocs(&locTable{blobs: []string{newBlobName("link")}, ents: []locEnt{{id: Sum([]byte("a")), off: 7, n: 3}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := decodeLocs(b)
		if err == nil && !bytes.Equal(encodeLocs(x), b) {
			t.Fatal("decoded table does not encode back")
		}
	})
}

// KeepLinked without a name pins nothing and writes no table: the chunks
// stay readable, unreferenced, for the grace period (a later pin naming
// them keeps their blob), then GC removes them; after a restart the blob
// is an orphan, kept on disk for the grace period too.
func TestKeepLinkedUnpinned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	grace := time.Hour
	s, err := Open(dir, Options{GCGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	data := randomData(1<<20, 40)
	f, x := linkedFile(t, data)
	keepUnnamed := func(s *Store) {
		t.Helper()
		l := s.Link()
		if err := l.Add(f, x.Size); err != nil {
			t.Fatal(err)
		}
		if _, err := s.KeepLinked(ctx, "", f, l, x); err != nil {
			t.Fatal(err)
		}
	}
	keepUnnamed(s)
	for _, d := range []string{"pins", "locs"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, d)); len(ents) != 0 {
			t.Fatalf("%s/ holds %d files after a keep without a name", d, len(ents))
		}
	}
	if len(s.Pins()) != 0 || s.Held() != 0 || len(blobNames(t, s)) != 1 {
		t.Fatalf("pins %v, held %d, blobs %v", s.Pins(), s.Held(), blobNames(t, s))
	}
	if st, err := s.GC(ctx, time.Now(), grace); err != nil || st.BlobsRemoved != 0 {
		t.Fatalf("GC within the grace period: %+v %v", st, err)
	}
	checkChunks(t, s, x, data)

	// A pin of the same file takes the blob (nothing added), and after a
	// restart reads it through its table.
	if added, err := s.Keep(ctx, "p", bytes.NewReader(data), x); err != nil || added != 0 {
		t.Fatalf("keep p: added %d, %v", added, err)
	}
	if n := blobNames(t, s); len(n) != 1 {
		t.Fatalf("blobs %v, want the one link", n)
	}
	s2, err := Open(dir, Options{GCGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	checkChunks(t, s2, x, data)
	if err := s2.Unpin("p"); err != nil {
		t.Fatal(err)
	}
	if st, err := s2.GC(ctx, time.Now().Add(2*grace), grace); err != nil || st.BlobsRemoved != 1 || s2.Has(x.Entries[0].ID) {
		t.Fatalf("GC after the grace period: %+v %v, chunk still there: %v", st, err, s2.Has(x.Entries[0].ID))
	}

	// A restart after an unnamed keep: an orphan, kept for the grace
	// period, then collected.
	keepUnnamed(s2)
	s3, err := Open(dir, Options{GCGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	if n := blobNames(t, s3); len(n) != 1 {
		t.Fatalf("blobs after restart %v, want the unnamed keep's link", n)
	}
	if st, err := s3.GC(ctx, time.Now().Add(2*grace), grace); err != nil || st.BlobsRemoved != 1 || len(blobNames(t, s3)) != 0 {
		t.Fatalf("GC of the orphan: %+v %v, left %v", st, err, blobNames(t, s3))
	}
}
