package cas

import (
	"context"
	"fmt"
	"io"
)

// Keep adds every data chunk of x that the store lacks, reading it from r
// (the file x indexes; each chunk is checked against its ID by Put), then
// pins x as name and applies Options.MaxBytes (Trim). It returns the number
// of chunks it added. A sender calls it after a transfer so that the file
// coming back, or a similar one, crosses as its changed chunks only.
func (s *Store) Keep(ctx context.Context, name string, r io.ReaderAt, x *Index) (int, error) {
	if err := ValidName(name); err != nil {
		return 0, err
	}
	offs := x.Offsets()
	seen := make(map[ID]bool, len(x.Entries))
	var buf []byte
	added := 0
	for i, e := range x.Entries {
		if e.Hole || seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		if s.Has(e.ID) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return added, err
		}
		if cap(buf) < int(e.Length) {
			buf = make([]byte, e.Length)
		}
		b := buf[:e.Length]
		if n, err := r.ReadAt(b, offs[i]); n < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return added, fmt.Errorf("cas: keep %q: entry %d at %d: %w", name, i, offs[i], err)
		}
		ok, err := s.Put(e.ID, b)
		if err != nil {
			return added, fmt.Errorf("cas: keep %q: entry %d: %w", name, i, err)
		}
		if ok {
			added++
		}
	}
	if err := s.Pin(name, x); err != nil {
		return added, err
	}
	_, err := s.Trim(ctx)
	return added, err
}
