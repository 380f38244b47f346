package cas

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"
)

func randBytes(n int, seed uint64) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

func genIndex(t *rapid.T) *Index {
	x := &Index{Chunking: Chunking(rapid.IntRange(1, 2).Draw(t, "chunking"))}
	n := rapid.IntRange(0, 50).Draw(t, "n")
	for i := 0; i < n; i++ {
		e := Entry{Length: uint32(rapid.IntRange(1, MaxChunkLen).Draw(t, "len"))}
		if rapid.Bool().Draw(t, "hole") {
			e.Hole = true
		} else {
			copy(e.ID[:], rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "id"))
		}
		x.Size += int64(e.Length)
		x.Entries = append(x.Entries, e)
	}
	if rapid.Bool().Draw(t, "v2") {
		x.Version = IndexV2
		x.Digest = x.Root()
	} else {
		copy(x.Digest[:], rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "digest"))
	}
	return x
}

func TestIndexRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		x := genIndex(t)
		var buf bytes.Buffer
		if err := EncodeIndex(&buf, x); err != nil {
			t.Fatal(err)
		}
		if int64(buf.Len()) != x.EncodedLen() {
			t.Fatalf("encoded %d bytes, EncodedLen says %d", buf.Len(), x.EncodedLen())
		}
		y, err := DecodeIndex(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if y.Size != x.Size || y.Digest != x.Digest || y.Chunking != x.Chunking || y.V2() != x.V2() || len(y.Entries) != len(x.Entries) {
			t.Fatalf("decoded %+v, want %+v", y, x)
		}
		for i := range x.Entries {
			if x.Entries[i] != y.Entries[i] {
				t.Fatalf("entry %d: %+v, want %+v", i, y.Entries[i], x.Entries[i])
			}
		}
	})
}

func encoded(t testing.TB, x *Index) []byte {
	var buf bytes.Buffer
	if err := EncodeIndex(&buf, x); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeIndexRejectsHostileInput(t *testing.T) {
	good := encoded(t, &Index{Chunking: Fixed, Size: 8192 + 100, Entries: []Entry{{ID: Sum([]byte("a")), Length: 4096}, {Hole: true, Length: 4096}, {ID: Sum([]byte("b")), Length: 100}}})
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string][]byte{
		"empty":       nil,
		"bad magic":   mut(func(b []byte) []byte { b[0] = 'X'; return b }),
		"chunking":    mut(func(b []byte) []byte { b[8] = 9; return b }),
		"truncated":   good[:len(good)-7],
		"trailing":    append(append([]byte(nil), good...), 0),
		"huge count":  mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[49:], 1<<62); return b }),
		"count short": mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[49:], DefaultMaxEntries); return b }),
		"huge size":   mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[9:], 1<<62); return b }),
		"size lies":   mut(func(b []byte) []byte { binary.BigEndian.PutUint64(b[9:], 8192); return b }),
		"oversized chunk": mut(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[HeaderLen+1:], MaxChunkLen+1)
			return b
		}),
		"zero length": mut(func(b []byte) []byte { binary.BigEndian.PutUint32(b[HeaderLen+1:], 0); return b }),
		"entry kind":  mut(func(b []byte) []byte { b[HeaderLen] = 7; return b }),
	}
	for name, b := range cases {
		_, err := DecodeIndex(bytes.NewReader(b))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if _, err := DecodeIndex(bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(encoded(f, &Index{Chunking: Fixed}))
	f.Add(encoded(f, &Index{Chunking: CDC, Size: 5000, Entries: []Entry{{ID: Sum([]byte("x")), Length: 1000}, {Hole: true, Length: 4000}}}))
	f.Add([]byte("FRYIDX1\n"))
	f.Add([]byte("FRYIDX2\n"))
	v2 := &Index{Version: IndexV2, Chunking: Fixed, Size: 8192, Entries: []Entry{{ID: Sum([]byte("y")), Length: 4096}, {Hole: true, Length: 4096}}}
	v2.Digest = v2.Root()
	f.Add(encoded(f, v2))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := DecodeIndexLimits(bytes.NewReader(b), DecodeLimits{MaxEntries: 1 << 16, MaxFileSize: 1 << 40})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		if err := x.Validate(); err != nil {
			t.Fatalf("decoded index fails Validate: %v", err)
		}
		if x.V2() && x.Digest != x.Root() {
			t.Fatal("v2 index accepted with a digest that is not its root")
		}
		if !bytes.Equal(encoded(t, x), b) {
			t.Fatal("re-encoding differs from the input")
		}
	})
}

func TestBuildIndexFixedWithHoles(t *testing.T) {
	data := randBytes(10*4096+123, 1)
	clear(data[4096 : 4*4096]) // three zero blocks: one hole
	copy(data[5*4096:6*4096], data[0:4096])
	x, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
	if err != nil {
		t.Fatal(err)
	}
	if x.Version != IndexV2 || x.Digest != x.Root() || x.Size != int64(len(data)) {
		t.Fatalf("version, digest or size wrong: %d %d", x.Version, x.Size)
	}
	if len(x.Entries) != 9 || !x.Entries[1].Hole || x.Entries[1].Length != 3*4096 || x.Entries[3].ID != x.Entries[0].ID {
		t.Fatalf("entries %+v", x.Entries)
	}
	st := x.Stats()
	if st.Holes != 1 || st.HoleBytes != 3*4096 || st.UniqueChunks != st.DataChunks-1 {
		t.Fatalf("stats %+v", st)
	}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestBuildIndexCDC(t *testing.T) {
	data := randBytes(3<<20+5, 2) // several hashing batches
	x, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: CDC})
	if err != nil {
		t.Fatal(err)
	}
	offs := x.Offsets()
	for i, e := range x.Entries {
		if e.Hole || Sum(data[offs[i]:offs[i]+int64(e.Length)]) != e.ID {
			t.Fatalf("entry %d does not name its bytes", i)
		}
	}
	if x.Digest != x.Root() {
		t.Fatal("digest")
	}
}

// The root commits to every entry: changing any ID, length, kind, the
// chunking or the size changes it, and the decoder refuses a v2 index whose
// digest is not its root. A v1 index keeps a whole-file digest and decodes
// as before.
func TestIndexV2Root(t *testing.T) {
	data := append(randBytes(3*4096+10, 5), make([]byte, 8192)...)
	x, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed})
	if err != nil {
		t.Fatal(err)
	}
	b := encoded(t, x)
	if string(b[:8]) != "FRYIDX2\n" {
		t.Fatalf("magic %q", b[:8])
	}
	y, err := DecodeIndex(bytes.NewReader(b))
	if err != nil || y.Version != IndexV2 || y.Digest != x.Digest {
		t.Fatalf("decode: %v %+v", err, y)
	}
	seen := map[ID]bool{x.Root(): true}
	for name, f := range map[string]func(z *Index){
		"id":       func(z *Index) { z.Entries[0].ID[3] ^= 1 },
		"swap":     func(z *Index) { z.Entries[0], z.Entries[1] = z.Entries[1], z.Entries[0] },
		"length":   func(z *Index) { z.Entries[3].Length--; z.Entries[4].Length++ },
		"chunking": func(z *Index) { z.Chunking = CDC },
		"size":     func(z *Index) { z.Size++; z.Entries[4].Length++ },
	} {
		z := *x
		z.Entries = append([]Entry(nil), x.Entries...)
		f(&z)
		r := z.Root()
		if seen[r] {
			t.Errorf("%s: root unchanged", name)
		}
		seen[r] = true
		if err := z.Validate(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Validate with the old digest: %v", name, err)
		}
	}
	for _, off := range []int{17, HeaderLen + 5, len(b) - 1} { // digest, first ID, last byte
		bad := append([]byte(nil), b...)
		bad[off] ^= 1
		_, err := DecodeIndex(bytes.NewReader(bad))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("flipped byte %d: got %v, want ErrInvalid", off, err)
		}
	}
	v1 := *x
	v1.Version, v1.Digest = IndexV1, ID(sha256.Sum256(data))
	b1 := encoded(t, &v1)
	if string(b1[:8]) != "FRYIDX1\n" {
		t.Fatalf("v1 magic %q", b1[:8])
	}
	if y, err := DecodeIndex(bytes.NewReader(b1)); err != nil || y.Version != IndexV1 || y.Digest != v1.Digest {
		t.Fatalf("v1 decode: %v %+v", err, y)
	}
	if err := (&Index{Version: 3, Chunking: Fixed}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("version 3: %v", err)
	}
}

func TestCompress(t *testing.T) {
	text := bytes.Repeat([]byte("ferry moves chunks "), 300)
	enc, out := Compress(nil, text)
	if enc != Zstd || len(out) >= len(text) {
		t.Fatalf("text not compressed: %v %d", enc, len(out))
	}
	back, err := Decode(enc, out, len(text), nil)
	if err != nil || !bytes.Equal(back, text) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := Decode(enc, out, len(text)-1, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("wrong length accepted: %v", err)
	}
	random := randBytes(4096, 3)
	if enc, _ := Compress(nil, random); enc != Raw {
		t.Fatal("random data stored compressed")
	}
	if _, err := Decode(Encoding(9), random, 4096, nil); !errors.Is(err, ErrInvalid) {
		t.Fatal("unknown encoding accepted")
	}
}

func TestDecodeRefusesZstdBomb(t *testing.T) {
	_, bomb := Compress(nil, make([]byte, 16<<20)) // 16 MiB of zeros in a few hundred bytes
	if len(bomb) > 4096 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	if _, err := Decode(Zstd, bomb, 4096, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
}
