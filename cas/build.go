package cas

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ferrycluster/ferry/cas/chunker"
)

// IndexOptions choose how BuildIndex cuts a stream.
type IndexOptions struct {
	Chunking Chunking
	// CDC are the FastCDC parameters when Chunking is CDC; zero means
	// chunker.DefaultParams().
	CDC chunker.Params
}

// BuildIndex reads r to the end and returns its IndexV2 index: one entry
// per chunk, with runs of all-zero chunks merged into holes (never hashed).
// Every byte is hashed once (its chunk's ID); the whole-file Digest is the
// root over the entries (Index.Root), not a second pass over the file.
func BuildIndex(r io.Reader, opts IndexOptions) (*Index, error) {
	var ch chunker.Chunker
	switch opts.Chunking {
	case Fixed:
		ch = chunker.NewFixed(bufio.NewReaderSize(r, 1<<20), chunker.BlockSize)
	case CDC:
		p := opts.CDC
		if p == (chunker.Params{}) {
			p = chunker.DefaultParams()
		}
		c, err := chunker.NewFastCDC(r, p)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		ch = c
	default:
		return nil, fmt.Errorf("%w: unknown chunking %d", ErrInvalid, uint8(opts.Chunking))
	}
	x := &Index{Version: IndexV2, Chunking: opts.Chunking}
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
	x.Digest = x.Root()
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
