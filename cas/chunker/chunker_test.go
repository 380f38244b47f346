package chunker

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"
)

// Reference values of the FastCDC 2020 Gear tables (nlfiedler/fastcdc-rs,
// src/v2020 GEAR and GEAR_LS, generated there from MD5 as here).
func TestGearTableMatchesReference(t *testing.T) {
	cases := []struct {
		i           int
		gear, gearL uint64
	}{
		{0, 0x3b5d3c7d207e37dc, 0x76ba78fa40fc6fb8},
		{1, 0x784d68ba91123086, 0xf09ad1752224610c},
		{128, 0xc0ce47f889336346, 0x819c8ff11266c68c},
		{255, 0xaabd2b2a451504e1, 0x557a56548a2a09c2},
	}
	for _, c := range cases {
		if gear[c.i] != c.gear || gearLS[c.i] != c.gearL {
			t.Errorf("gear[%d] = %#x, %#x; want %#x, %#x", c.i, gear[c.i], gearLS[c.i], c.gear, c.gearL)
		}
	}
}

// The reference's log2 rounding and mask choice (test_logarithm2, test_masks).
func TestMasksMatchReference(t *testing.T) {
	for v, want := range map[int]int{1: 0, 3: 2, 5: 2, 6: 3, 11: 3, 12: 4, 19: 4, 16383: 14, 16385: 14, 65535: 16, 4194305: 22, 16777217: 24} {
		if got := log2Round(v); got != want {
			t.Errorf("log2Round(%d) = %d, want %d", v, got, want)
		}
	}
	for _, c := range []struct {
		p      Params
		ml, ms int
	}{
		{Params{64, 256, 1024, 1}, 7, 9},
		{Params{8192, 16384, 32768, 1}, 13, 15},
		{Params{1 << 20, 4 << 20, 16 << 20, 1}, 21, 23},
	} {
		ct := newCutter(c.p)
		if ct.maskL != masks[c.ml] || ct.maskS != masks[c.ms] {
			t.Errorf("%+v: masks %#x/%#x, want masks[%d]/masks[%d]", c.p, ct.maskL, ct.maskS, c.ml, c.ms)
		}
	}
}

// Reference vector test_cut_all_zeros: 10 KiB of zeros with (64, 256,
// 1024) is cut into maximum-size chunks, each with the same Gear hash.
func TestCutAllZerosReferenceVector(t *testing.T) {
	src := make([]byte, 10240)
	p := Params{Min: 64, Avg: 256, Max: 1024, Level: 1}
	for cursor := 0; cursor < len(src); {
		h, n := Cut(src[cursor:], p)
		if h != 14169102344523991076 || n != 1024 {
			t.Fatalf("at %d: hash %d length %d, want 14169102344523991076 and 1024", cursor, h, n)
		}
		cursor += n
	}
	f, _ := NewFastCDC(bytes.NewReader(src), p)
	count := 0
	for {
		c, err := f.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || len(c.Data) != 1024 || f.Hash != 14169102344523991076 {
			t.Fatalf("chunk %d: len %d hash %d err %v", count, len(c.Data), f.Hash, err)
		}
		count++
	}
	if count != 10 {
		t.Fatalf("%d chunks, want 10", count)
	}
}

func cutsOf(t fataler, data []byte, p Params, readSize int) []int {
	f, err := NewFastCDC(&chopReader{r: bytes.NewReader(data), n: readSize}, p)
	if err != nil {
		t.Fatal(err)
	}
	var lens []int
	var off int64
	for {
		c, err := f.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.Offset != off || !bytes.Equal(c.Data, data[off:off+int64(len(c.Data))]) {
			t.Fatalf("chunk at %d does not match the input", off)
		}
		off += int64(len(c.Data))
		lens = append(lens, len(c.Data))
	}
	if off != int64(len(data)) {
		t.Fatalf("chunks cover %d of %d bytes", off, len(data))
	}
	return lens
}

type fataler interface {
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// fillRandom fills b with deterministic pseudo-random bytes.
func fillRandom(b []byte, seed uint64) {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	rand.NewChaCha8(s).Read(b)
}

// chopReader returns at most n bytes per Read, to exercise refills.
type chopReader struct {
	r io.Reader
	n int
}

func (c *chopReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// The streaming chunker cuts exactly where the one-shot Cut does, whatever
// the read sizes, and respects min and max.
func TestFastCDCStreamMatchesCut(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 300<<10).Draw(t, "n")
		seed := rapid.Uint64().Draw(t, "seed")
		readSize := rapid.IntRange(1, 100<<10).Draw(t, "read")
		level := rapid.IntRange(0, 3).Draw(t, "level")
		data := make([]byte, n)
		fillRandom(data, seed)
		p := Params{Min: 2048, Avg: 8192, Max: 32768, Level: level}
		got := cutsOf(t, data, p, readSize)
		var want []int
		for rest := data; len(rest) > 0; {
			_, l := Cut(rest, p)
			want = append(want, l)
			rest = rest[l:]
		}
		if len(got) != len(want) {
			t.Fatalf("stream made %d chunks, Cut %d", len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("chunk %d: stream %d, Cut %d", i, got[i], want[i])
			}
			if got[i] > p.Max || (got[i] < p.Min && i != len(got)-1) {
				t.Fatalf("chunk %d of %d bytes outside [%d, %d]", i, got[i], p.Min, p.Max)
			}
		}
	})
}

// Content-defined: inserting bytes near the start changes only the chunks
// around the insertion; most chunks of the rest are shared.
func TestFastCDCInsertionIsLocal(t *testing.T) {
	data := make([]byte, 4<<20)
	fillRandom(data, 7)
	edited := append(append(append([]byte(nil), data[:1000]...), []byte("inserted bytes")...), data[1000:]...)
	p := DefaultParams()
	set := func(b []byte) map[string]bool {
		m := map[string]bool{}
		off := 0
		for _, l := range cutsOf(t, b, p, 1<<20) {
			m[string(b[off:off+l])] = true
			off += l
		}
		return m
	}
	a, b := set(data), set(edited)
	shared := 0
	for k := range b {
		if a[k] {
			shared++
		}
	}
	if shared < len(b)-3 {
		t.Fatalf("only %d of %d chunks shared after a 14-byte insertion", shared, len(b))
	}
}

func TestFixed(t *testing.T) {
	data := make([]byte, 3*BlockSize+100)
	fillRandom(data, 1)
	f := NewFixed(&chopReader{bytes.NewReader(data), 1000}, BlockSize)
	var lens []int
	for {
		c, err := f.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.Data, data[c.Offset:c.Offset+int64(len(c.Data))]) {
			t.Fatalf("block at %d differs", c.Offset)
		}
		lens = append(lens, len(c.Data))
	}
	if len(lens) != 4 || lens[3] != 100 {
		t.Fatalf("block lengths %v", lens)
	}
}

func TestIsZero(t *testing.T) {
	b := make([]byte, 200<<10)
	if !IsZero(b) || !IsZero(nil) {
		t.Fatal("zeros not zero")
	}
	b[150<<10] = 1
	if IsZero(b) {
		t.Fatal("non-zero reported zero")
	}
}

func TestParamsValidate(t *testing.T) {
	bad := []Params{{63, 256, 1024, 1}, {64, 255, 1024, 1}, {64, 256, 1023, 1}, {4096, 2048, 8192, 1}, {64, 256, 1024, 4}, {4097, 16384, 65536, 1}, {4096, 16385, 65536, 1}}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := DefaultParams().Validate(); err != nil {
		t.Fatal(err)
	}
}
