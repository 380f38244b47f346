package transfer

import (
	"os"
	"path/filepath"

	"github.com/ferrycluster/ferry/cas"
)

// linkInto hard-links the files r reads into st now (cas.Store.Link), in
// the stream's order, so that the keep that follows (KeepLinked, maybe
// much later on a background goroutine) references their bytes instead of
// copying them, even if the directory is removed meanwhile. A file that
// cannot be linked is copied by the keep. Nil without a store.
func (r *treeReader) linkInto(st *cas.Store) *cas.Linked {
	if st == nil {
		return nil
	}
	l := st.Link()
	for k, i := range r.idx {
		e := r.t.Entries[i]
		if r.files != nil {
			l.Add(r.files[k], e.Size) // by descriptor; a removed file is copied by the keep
			continue
		}
		var f *os.File
		if e.Size > 0 {
			f, _ = os.Open(filepath.Join(r.dir, filepath.FromSlash(e.Path)))
		}
		l.Add(f, e.Size)
		if f != nil {
			f.Close()
		}
	}
	return l
}
