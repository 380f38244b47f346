package cas

import (
	"context"
	"io"
)

// Keep adds every data chunk of x that the store lacks, reading it from r
// (the file x indexes; each chunk is checked against its ID) into one new
// pack (a sequential write, not a file per chunk), then pins x as name and
// applies Options.MaxBytes (Trim). It returns the number of chunks it
// added. A sender calls it after a transfer so that the file coming back,
// or a similar one, crosses as its changed chunks only. KeepLinked
// references committed files instead of copying them.
func (s *Store) Keep(ctx context.Context, name string, r io.ReaderAt, x *Index) (int, error) {
	return s.KeepLinked(ctx, name, r, nil, x)
}
