package chunker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Chunk is one piece of the stream. Data is only valid until the next call
// to Next.
type Chunk struct {
	Offset int64
	Data   []byte
}

// Chunker yields the chunks of a stream in order; Next returns io.EOF after
// the last one.
type Chunker interface {
	Next() (Chunk, error)
}

// BlockSize is the fixed chunker's block size.
const BlockSize = 4096

var zeros = make([]byte, 64<<10)

// IsZero reports whether b is all zero bytes.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Fixed cuts a stream into blocks of a fixed size; the last may be shorter.
type Fixed struct {
	r    io.Reader
	buf  []byte
	off  int64
	done bool
}

// NewFixed returns a fixed-size chunker of size-byte blocks over r.
func NewFixed(r io.Reader, size int) *Fixed {
	if size <= 0 {
		size = BlockSize
	}
	return &Fixed{r: r, buf: make([]byte, size)}
}

// Next returns the next block.
func (f *Fixed) Next() (Chunk, error) {
	if f.done {
		return Chunk{}, io.EOF
	}
	n, err := io.ReadFull(f.r, f.buf)
	switch {
	case errors.Is(err, io.EOF):
		f.done = true
		return Chunk{}, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		f.done = true
	case err != nil:
		return Chunk{}, err
	}
	c := Chunk{Offset: f.off, Data: f.buf[:n]}
	f.off += int64(n)
	return c, nil
}

// Params are FastCDC's size parameters.
type Params struct {
	Min, Avg, Max int
	// Level is the normalization level, 0 to 3: how many bits harder the
	// mask is before Avg and easier after it.
	Level int
}

// DefaultParams: 4 KiB minimum, 16 KiB average, 64 KiB maximum, level 1.
func DefaultParams() Params { return Params{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10, Level: 1} }

// Validate checks the parameters against the algorithm's ranges.
func (p Params) Validate() error {
	switch {
	case p.Min < 64 || p.Min > 1<<20:
		return fmt.Errorf("chunker: min size %d outside [64, 1 MiB]", p.Min)
	case p.Avg < 256 || p.Avg > 4<<20:
		return fmt.Errorf("chunker: average size %d outside [256, 4 MiB]", p.Avg)
	case p.Max < 1024 || p.Max > 16<<20:
		return fmt.Errorf("chunker: max size %d outside [1 KiB, 16 MiB]", p.Max)
	case p.Min > p.Avg || p.Avg > p.Max:
		return fmt.Errorf("chunker: want min <= avg <= max, got %d, %d, %d", p.Min, p.Avg, p.Max)
	case p.Level < 0 || p.Level > 3:
		return fmt.Errorf("chunker: normalization level %d outside [0, 3]", p.Level)
	case p.Min%2 != 0 || p.Avg%2 != 0:
		// The cut loop steps two bytes at a time from min/2: an odd min
		// would allow a chunk one byte short of it, and an odd min or avg
		// would shift every test one byte from the paper's algorithm.
		return fmt.Errorf("chunker: min %d and avg %d sizes must be even", p.Min, p.Avg)
	}
	return nil
}
