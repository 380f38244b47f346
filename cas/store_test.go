package cas

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openStore(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStorePutGet(t *testing.T) {
	for _, compress := range []bool{false, true} {
		s := openStore(t, Options{Compress: compress})
		data := append(randBytes(2048, 4), make([]byte, 2048)...)
		id := Sum(data)
		if wrote, err := s.Put(id, data); err != nil || !wrote {
			t.Fatalf("put: %v %v", wrote, err)
		}
		if wrote, err := s.Put(id, data); err != nil || wrote {
			t.Fatalf("second put: %v %v", wrote, err)
		}
		got, err := s.Get(id, nil)
		if err != nil || string(got) != string(data) {
			t.Fatalf("get: %v", err)
		}
		if _, err := s.Put(id, data[1:]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("put under the wrong id: %v", err)
		}
		if _, err := s.Get(Sum([]byte("absent")), nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("absent: %v", err)
		}
	}
}

func TestStoreCorruptChunkIsRemoved(t *testing.T) {
	s := openStore(t, Options{})
	data := randBytes(4096, 5)
	id := Sum(data)
	s.Put(id, data)
	p := s.chunkPath(id)
	raw, _ := os.ReadFile(p)
	raw[100] ^= 0xff
	os.WriteFile(p, raw, 0o644)
	if _, err := s.Get(id, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corruption not detected: %v", err)
	}
	if s.Has(id) {
		t.Fatal("corrupt chunk kept")
	}
	// A torn (truncated) file too.
	s.Put(id, data)
	os.Truncate(p, 3)
	if _, err := s.Get(id, nil); !errors.Is(err, ErrCorrupt) || s.Has(id) {
		t.Fatalf("torn chunk: %v", err)
	}
}

func TestStoreConcurrentWritersOfOneChunk(t *testing.T) {
	s := openStore(t, Options{Compress: true})
	chunks := make([][]byte, 8)
	for i := range chunks {
		chunks[i] = randBytes(4096, uint64(i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < 20; r++ {
				c := chunks[(g+r)%len(chunks)]
				if _, err := s.Put(Sum(c), c); err != nil {
					errs <- err
				}
				if _, err := s.Get(Sum(c), nil); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(s.Dir(), "chunks", "*", tmpPrefix+"*"))
	if len(left) != 0 {
		t.Fatalf("%d temporary files left", len(left))
	}
}

func TestStorePinsAndGC(t *testing.T) {
	s := openStore(t, Options{})
	a, b, c := randBytes(4096, 10), randBytes(4096, 11), randBytes(4096, 12)
	for _, d := range [][]byte{a, b, c} {
		s.Put(Sum(d), d)
	}
	x1 := &Index{Chunking: Fixed, Size: 3 * 4096, Entries: []Entry{{ID: Sum(a), Length: 4096}, {ID: Sum(b), Length: 4096}, {ID: Sum(a), Length: 4096}}}
	x2 := &Index{Chunking: Fixed, Size: 4096, Entries: []Entry{{ID: Sum(b), Length: 4096}}}
	if err := s.Pin("img-1", x1); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin("img-2", x2); err != nil {
		t.Fatal(err)
	}
	if s.Refs(Sum(a)) != 1 || s.Refs(Sum(b)) != 2 || s.Refs(Sum(c)) != 0 {
		t.Fatalf("refs a=%d b=%d c=%d", s.Refs(Sum(a)), s.Refs(Sum(b)), s.Refs(Sum(c)))
	}
	ctx := context.Background()
	// Within the grace period nothing goes.
	st, err := s.GC(ctx, time.Now(), time.Hour)
	if err != nil || st.Removed != 0 {
		t.Fatalf("gc in grace: %+v %v", st, err)
	}
	st, _ = s.GC(ctx, time.Now().Add(2*time.Hour), time.Hour)
	if st.Removed != 1 || s.Has(Sum(c)) || !s.Has(Sum(a)) {
		t.Fatalf("gc: %+v", st)
	}
	// Refcounts survive a reopen.
	s2, err := Open(s.Dir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Refs(Sum(b)) != 2 || len(s2.Pins()) != 2 {
		t.Fatalf("after reopen: refs %d pins %v", s2.Refs(Sum(b)), s2.Pins())
	}
	if err := s2.Unpin("img-1"); err != nil {
		t.Fatal(err)
	}
	st, _ = s2.GC(ctx, time.Now().Add(2*time.Hour), time.Hour)
	if st.Removed != 1 || s2.Has(Sum(a)) || !s2.Has(Sum(b)) {
		t.Fatalf("gc after unpin: %+v", st)
	}
	if got, err := s2.Pinned("img-2"); err != nil || got.Entries[0].ID != Sum(b) {
		t.Fatalf("pinned: %v", err)
	}
	// Pinning needs every chunk present, and a clean name.
	if err := s2.Pin("img-3", x1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pin with a missing chunk: %v", err)
	}
	for _, bad := range []string{"", "../x", "a/b", ".hidden", "-x"} {
		if err := s2.Pin(bad, x2); !errors.Is(err, ErrInvalid) {
			t.Errorf("pin name %q: %v", bad, err)
		}
	}
}

func TestStoreGCConcurrentWithPuts(t *testing.T) {
	s := openStore(t, Options{})
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 30; i++ {
			d := randBytes(512, uint64(100+i))
			if _, err := s.Put(Sum(d), d); err != nil {
				t.Error(err)
				return
			}
			x := &Index{Chunking: CDC, Size: 512, Entries: []Entry{{ID: Sum(d), Length: 512}}}
			if err := s.Pin("p", x); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 10; i++ {
			if _, err := s.GC(ctx, time.Now(), time.Minute); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
}
