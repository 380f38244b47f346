package cas

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/ferrycluster/ferry/cas/chunker"
)

// IndexOptions choose how BuildIndex cuts a stream.
type IndexOptions struct {
	Chunking Chunking
	// CDC are the FastCDC parameters when Chunking is CDC; zero means
	// chunker.DefaultParams().
	CDC chunker.Params
}

// BuildIndex reads r to the end and returns its index: one entry per chunk,
// with runs of all-zero chunks merged into holes (never hashed). The
// whole-file digest is computed on a second goroutine so both cores work.
func BuildIndex(r io.Reader, opts IndexOptions) (*Index, error) {
	dr := newDigestReader(r)
	defer dr.close()
	var ch chunker.Chunker
	switch opts.Chunking {
	case Fixed:
		ch = chunker.NewFixed(bufio.NewReaderSize(dr, digestBlock), chunker.BlockSize)
	case CDC:
		p := opts.CDC
		if p == (chunker.Params{}) {
			p = chunker.DefaultParams()
		}
		c, err := chunker.NewFastCDC(dr, p)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		ch = c
	default:
		return nil, fmt.Errorf("%w: unknown chunking %d", ErrInvalid, uint8(opts.Chunking))
	}
	x := &Index{Chunking: opts.Chunking}
	for {
		c, err := ch.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		n := uint32(len(c.Data))
		x.Size += int64(n)
		if chunker.IsZero(c.Data) {
			if k := len(x.Entries) - 1; k >= 0 && x.Entries[k].Hole && x.Entries[k].Length+n <= MaxHoleLen {
				x.Entries[k].Length += n
			} else {
				x.Entries = append(x.Entries, Entry{Hole: true, Length: n})
			}
			continue
		}
		x.Entries = append(x.Entries, Entry{ID: Sum(c.Data), Length: n})
	}
	if x.Size > DefaultMaxFileSize {
		return nil, fmt.Errorf("%w: file of %d bytes over limit %d", ErrInvalid, x.Size, int64(DefaultMaxFileSize))
	}
	d, err := dr.sum()
	if err != nil {
		return nil, err
	}
	x.Digest = d
	return x, nil
}

// IndexFile opens path and indexes it.
func IndexFile(path string, opts IndexOptions) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return BuildIndex(f, opts)
}

// digestReader passes reads through in large blocks and hashes a copy of
// each block on another goroutine.
type digestReader struct {
	r      io.Reader
	blocks chan []byte
	free   chan []byte
	done   chan ID
	once   sync.Once
}

const digestBlock = 1 << 20

func newDigestReader(r io.Reader) *digestReader {
	d := &digestReader{r: r, blocks: make(chan []byte, 4), free: make(chan []byte, 6), done: make(chan ID, 1)}
	for range 6 {
		d.free <- make([]byte, digestBlock)
	}
	go func() {
		h := sha256.New()
		for b := range d.blocks {
			h.Write(b)
			d.free <- b[:cap(b)]
		}
		d.done <- ID(h.Sum(nil))
	}()
	return d
}

// Read reads at most one block from the source.
func (d *digestReader) Read(p []byte) (int, error) {
	if len(p) > digestBlock {
		p = p[:digestBlock]
	}
	n, err := d.r.Read(p)
	if n > 0 {
		b := <-d.free
		copy(b, p[:n])
		d.blocks <- b[:n]
	}
	return n, err
}

func (d *digestReader) close() { d.once.Do(func() { close(d.blocks) }) }

func (d *digestReader) sum() (ID, error) {
	d.close()
	return <-d.done, nil
}
