package chunker

import (
	"crypto/md5"
	"encoding/binary"
	"io"
	"math"
)

// gear is the Gear hash table: entry i is the first 8 bytes (big-endian) of
// the MD5 of 64 bytes of value i, as in the reference implementation.
// gearLS is the same table shifted left one bit, used on even positions
// when rolling two bytes per step.
var gear, gearLS [256]uint64

func init() {
	var seed [64]byte
	for i := range gear {
		for j := range seed {
			seed[j] = byte(i)
		}
		sum := md5.Sum(seed[:])
		gear[i] = binary.BigEndian.Uint64(sum[:8])
		gearLS[i] = gear[i] << 1
	}
}

// masks[b] has b one-bits spread over the word; the spread values are the
// reference implementation's (the paper notes spreading the bits slightly
// improves deduplication). Index 5 and 25 exist only for level 3.
var masks = [26]uint64{
	0, 0, 0, 0, 0,
	0x0000000001804110,
	0x0000000001803110, // 64 B
	0x0000000018035100,
	0x0000001800035300,
	0x0000019000353000,
	0x0000590003530000, // 1 KiB
	0x0000d90003530000,
	0x0000d90103530000,
	0x0000d90303530000,
	0x0000d90313530000, // 16 KiB
	0x0000d90f03530000,
	0x0000d90303537000,
	0x0000d90703537000,
	0x0000d90707537000,
	0x0000d91707537000,
	0x0000d91747537000, // 1 MiB
	0x0000d91767537000,
	0x0000d93767537000,
	0x0000d93777537000,
	0x0000d93777577000, // 16 MiB
	0x0000db3777577000,
}

// log2Round is log2(v) rounded to the nearest integer.
func log2Round(v int) int { return int(math.Round(math.Log2(float64(v)))) }

// cutter holds the masks derived from Params.
type cutter struct {
	min, avg, max                  int
	maskS, maskL, maskSLS, maskLLS uint64
}

func newCutter(p Params) cutter {
	bits := log2Round(p.Avg)
	ms, ml := masks[bits+p.Level], masks[bits-p.Level]
	return cutter{min: p.Min, avg: p.Avg, max: p.Max, maskS: ms, maskL: ml, maskSLS: ms << 1, maskLLS: ml << 1}
}

// cut returns the length of the first chunk of src and the Gear hash at
// the cut. Below min it does not hash at all (cut-point skipping); up to avg
// it uses the harder mask, after it the easier one; it never exceeds max.
func (c *cutter) cut(src []byte) (uint64, int) {
	n := len(src)
	if n <= c.min {
		return 0, n
	}
	center := c.avg
	if n > c.max {
		n = c.max
	} else if n < center {
		center = n
	}
	var h uint64
	i := c.min / 2
	for ; i < center/2; i++ {
		a := 2 * i
		h = h<<2 + gearLS[src[a]]
		if h&c.maskSLS == 0 {
			return h, a
		}
		h += gear[src[a+1]]
		if h&c.maskS == 0 {
			return h, a + 1
		}
	}
	for ; i < n/2; i++ {
		a := 2 * i
		h = h<<2 + gearLS[src[a]]
		if h&c.maskLLS == 0 {
			return h, a
		}
		h += gear[src[a+1]]
		if h&c.maskL == 0 {
			return h, a + 1
		}
	}
	return h, n
}

// Cut returns the Gear hash and length of the first FastCDC chunk of src,
// as if src were the whole rest of the stream.
func Cut(src []byte, p Params) (hash uint64, length int) {
	c := newCutter(p)
	return c.cut(src)
}

// FastCDC is a streaming content-defined chunker.
type FastCDC struct {
	c          cutter
	r          io.Reader
	buf        []byte
	start, end int
	off        int64
	eof        bool
	err        error
	// Hash is the Gear hash at the end of the last chunk returned (0 for a
	// chunk shorter than the minimum).
	Hash uint64
}

// NewFastCDC returns a FastCDC chunker over r.
func NewFastCDC(r io.Reader, p Params) (*FastCDC, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &FastCDC{c: newCutter(p), r: r, buf: make([]byte, max(4*p.Max, 256<<10))}, nil
}

func (f *FastCDC) fill() {
	if f.start > 0 {
		f.end = copy(f.buf, f.buf[f.start:f.end])
		f.start = 0
	}
	for f.end < len(f.buf) && !f.eof {
		n, err := f.r.Read(f.buf[f.end:])
		f.end += n
		if err == io.EOF {
			f.eof = true
		} else if err != nil {
			f.err = err
			return
		}
	}
}

// Next returns the next chunk.
func (f *FastCDC) Next() (Chunk, error) {
	if f.err != nil {
		return Chunk{}, f.err
	}
	if f.end-f.start < f.c.max && !f.eof {
		f.fill()
		if f.err != nil {
			return Chunk{}, f.err
		}
	}
	if f.start == f.end {
		return Chunk{}, io.EOF
	}
	h, n := f.c.cut(f.buf[f.start:f.end])
	ch := Chunk{Offset: f.off, Data: f.buf[f.start : f.start+n]}
	f.Hash = h
	f.start += n
	f.off += int64(n)
	return ch, nil
}
