package chunker

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

// The whole Gear table equals the reference's: SHA-256 over its 256
// entries as big-endian uint64, the digest computed from the GEAR table
// published in nlfiedler/fastcdc-rs (src/v2016 and src/v2020, the same
// table; generated there by examples/table64.rs from MD5 as here).
func TestGearTableDigestMatchesReference(t *testing.T) {
	var b []byte
	for _, g := range gear {
		b = binary.BigEndian.AppendUint64(b, g)
	}
	const want = "9df0a720752a7d211fdebaf39bed01610983756fc340a1cfef41052b7356ae73"
	if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != want {
		t.Fatalf("Gear table digest %x, want %s", got, want)
	}
	for i := range gearLS {
		if gearLS[i] != gear[i]<<1 {
			t.Fatalf("gearLS[%d] is not gear[%d] shifted left", i, i)
		}
	}
}

// paperCut is the 2016 paper's FastCDC (Algorithm 1 with normalized
// chunking), written out the straightforward way, one byte per step, as the
// reference v2016 module does: no hashing below min; the harder mask
// before avg, the easier one after; never more than max. It returns the
// chunk length (the byte whose hash matched starts the next chunk, as in
// the reference).
func paperCut(src []byte, min, avg, max int, maskS, maskL uint64) int {
	n := len(src)
	if n <= min {
		return n
	}
	center := avg
	if n > max {
		n = max
	} else if n < center {
		center = n
	}
	var h uint64
	i := min
	for ; i < center; i++ {
		h = h<<1 + gear[src[i]]
		if h&maskS == 0 {
			return i
		}
	}
	for ; i < n; i++ {
		h = h<<1 + gear[src[i]]
		if h&maskL == 0 {
			return i
		}
	}
	return n
}

// referenceInput is the test input: n bytes from math/rand/v2's PCG
// (PCG-DXSM, 128-bit state) seeded with (0x5eed, 0xfa57cdc), each Uint64
// written little-endian. It stands in for the reference implementations'
// SekienAkashita.jpg, which is not available here.
func referenceInput(n int) []byte {
	r := rand.New(rand.NewPCG(0x5eed, 0xfa57cdc))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

func paperCuts(data []byte, p Params) []int {
	bits := log2Round(p.Avg)
	ms, ml := masks[bits+p.Level], masks[bits-p.Level]
	var cuts []int
	for pos := 0; pos < len(data); {
		n := paperCut(data[pos:], p.Min, p.Avg, p.Max, ms, ml)
		cuts = append(cuts, n)
		pos += n
	}
	return cuts
}

// Our FastCDC (the 2020 form: two bytes per step with the shifted table
// and masks) cuts where the paper's one-byte-per-step algorithm cuts, for
// even min and avg sizes, at every chunk but possibly the last of an
// odd-length stream (see TestOddLengthTailDiffersFromPaper).
func TestFastCDCMatchesPaperAlgorithm(t *testing.T) {
	data := referenceInput(4 << 20)
	for _, p := range []Params{
		{8192, 16384, 32768, 1}, // the reference's SekienAkashita parameters
		DefaultParams(),
		{64, 256, 1024, 1},
		{4096, 16384, 65536, 0},
		{4096, 16384, 65536, 2},
		{4096, 16384, 65536, 3},
		{1 << 20, 2 << 20, 4 << 20, 1},
	} {
		want := paperCuts(data, p)
		for _, rs := range []int{len(data), 4096, 100003} {
			got := cutsOf(t, data, p, rs)
			if len(got) != len(want) {
				t.Fatalf("%+v, reads of %d: %d chunks, paper algorithm %d", p, rs, len(got), len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("%+v, reads of %d: chunk %d is %d bytes, paper algorithm %d", p, rs, i, got[i], want[i])
				}
			}
		}
	}
}

// The first cut points of referenceInput(1 MiB) with the reference's
// SekienAkashita parameters (8 KiB, 16 KiB, 32 KiB, level 1), as computed
// by paperCut: a fixed vector, so that a change to either implementation
// (or to the input generator) shows.
func TestFastCDCReferenceInputVector(t *testing.T) {
	data := referenceInput(1 << 20)
	p := Params{8192, 16384, 32768, 1}
	want := []int{11732, 19906, 32768, 16831, 12353, 17836, 15488, 11467, 32768, 16636, 14159, 17226, 28548, 18372}
	got := cutsOf(t, data, p, len(data))
	if len(got) < len(want) {
		t.Fatalf("%d chunks, want at least %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i] != w {
			t.Fatalf("chunk %d is %d bytes, want %d (all: %v)", i, got[i], w, got[:len(want)])
		}
	}
	if pc := paperCuts(data, p); pc[0] != want[0] || pc[len(want)-1] != want[len(want)-1] {
		t.Fatalf("paper algorithm cuts %v", pc[:len(want)])
	}
}

// The one place the 2020 form (ours, and the reference's v2020) differs
// from the paper's loop: it steps two bytes at a time, so in a final chunk
// of odd length it never tests the last byte, where the paper may cut one
// byte early. (Odd min or avg sizes would shift every test by one byte;
// Params.Validate refuses them.) Shown on a tail built so that the paper
// cuts at its last byte.
func TestOddLengthTailDiffersFromPaper(t *testing.T) {
	p := Params{8192, 16384, 32768, 1}
	bits := log2Round(p.Avg)
	ms, ml := masks[bits+p.Level], masks[bits-p.Level]
	const n = 10001 // between min and avg, odd
	r := rand.New(rand.NewPCG(1, 2))
	for try := 0; try < 1000; try++ {
		tail := make([]byte, n)
		for i := range tail {
			tail[i] = byte(r.Uint32())
		}
		for b := range 256 {
			tail[n-1] = byte(b)
			if paperCut(tail, p.Min, p.Avg, p.Max, ms, ml) != n-1 {
				continue
			}
			if _, got := Cut(tail, p); got != n {
				t.Fatalf("ours cut the odd tail at %d, want %d (no test of the last byte)", got, n)
			}
			return
		}
	}
	t.Fatal("no tail found where the paper cuts at the last byte")
}
