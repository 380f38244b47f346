package transfer

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/chunker"
	"golang.org/x/sys/unix"
)

// A file of a tree that equals a file the store holds whole (a blob of the
// same size with the file's first chunk at the same offset: say the state
// file of a checkpoint that did not change since the task left this node)
// is not rebuilt: the receiver links that blob in place of the staging
// file and checks every piece against it as the pieces are announced (read
// and hashed, as chunks from the store always are). The first piece that
// differs undoes it: the checked prefix is copied into a new staging file
// (copy_file_range) and the rest is received as usual. So an unchanged
// gigabyte costs a read and a hash, not a copy and its writeback.
//
// Only a blob of the same pin is linked (the task's own earlier image,
// cas.Store.FileBlob): a checkpoint never shares an inode with another
// task's. The linked inode is still another file's too (that image, maybe
// linked into a restore dir), so the file's stamp (inode, size, times) is
// taken when it is linked and compared before the commit and before a
// checked prefix is copied: a write through another link after a piece
// was checked fails the transfer (its retry rebuilds the file) instead of
// committing bytes nobody checked.

// fileStamp is what shows a linked file unchanged since it was stamped:
// any write changes its mtime (and ctime), a truncate its size.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func stampOf(f *os.File) (fileStamp, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileStamp{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{}, fmt.Errorf("transfer: no stat of %s", f.Name())
	}
	return fileStamp{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// errLinkedChanged is a linked file written through another of its links
// after its pieces were checked.
var errLinkedChanged = errors.New("the file linked in place from the chunk store changed after it was checked (written through another link of its inode); a retry rebuilds it")

// checkStamp fails with errLinkedChanged unless f is as stamped.
func checkStamp(f *os.File, want fileStamp) error {
	got, err := stampOf(f)
	if err != nil {
		return err
	}
	if got != want {
		return errLinkedChanged
	}
	return nil
}

// linkSame replaces the staging file of e (under root) with a link to a
// blob of pin in the store that may hold the same bytes, judging by the
// first piece x; it returns the linked file, open read-only, and its
// stamp, or nil.
func (rc *Receiver) linkSame(root *os.Root, e TreeEntry, x *cas.Index, pin string) (*os.File, fileStamp) {
	if rc.Store == nil || pin == "" {
		return nil, fileStamp{}
	}
	var off int64
	k := 0
	for k < len(x.Entries) && x.Entries[k].Hole {
		off += int64(x.Entries[k].Length)
		k++
	}
	if k == len(x.Entries) {
		return nil, fileStamp{}
	}
	blob := rc.Store.FileBlob(x.Entries[k].ID, off, e.Size, pin)
	if blob == "" {
		return nil, fileStamp{}
	}
	// The link shares the blob's inode with the file it was kept from
	// (maybe another committed checkpoint here): finishTree's chmod must
	// not change that file's mode, so only a blob of the announced mode
	// is linked.
	if fi, err := os.Stat(blob); err != nil || fi.Mode().Perm() != fs.FileMode(e.Mode) {
		return nil, fileStamp{}
	}
	name := filepath.FromSlash(e.Path)
	dir, err := root.Open(filepath.Dir(name))
	if err != nil {
		return nil, fileStamp{}
	}
	defer dir.Close()
	if err := root.Remove(name); err != nil {
		return nil, fileStamp{}
	}
	if err := unix.Linkat(unix.AT_FDCWD, blob, int(dir.Fd()), filepath.Base(name), 0); err != nil {
		// Put the sparse staging file back.
		if f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
			f.Truncate(e.Size)
			f.Close()
		}
		return nil, fileStamp{}
	}
	f, err := root.Open(name)
	if err != nil {
		return nil, fileStamp{}
	}
	st, err := stampOf(f)
	if err != nil {
		f.Close()
		return nil, fileStamp{}
	}
	return f, st
}

// checkSame reads piece x of a linked file (at offs) and reports whether
// every chunk is there (and every hole zeros). buf is reused.
func checkSame(f *os.File, x *cas.Index, offs []int64, buf *[]byte) (bool, error) {
	if len(offs) == 0 {
		return true, nil
	}
	if int64(cap(*buf)) < x.Size {
		*buf = make([]byte, x.Size)
	}
	b := (*buf)[:x.Size]
	if n, err := f.ReadAt(b, offs[0]); int64(n) < x.Size {
		if err == io.EOF {
			return false, nil
		}
		return false, err
	}
	var at int64
	for _, e := range x.Entries {
		d := b[at : at+int64(e.Length)]
		at += int64(e.Length)
		if e.Hole && !chunker.IsZero(d) || !e.Hole && cas.Sum(d) != e.ID {
			return false, nil
		}
	}
	return true, nil
}

// unlinkSame undoes linkSame for e once a piece at off differs: a new
// staging file gets the checked prefix [0, off) of linked (still as
// stamped) and takes its place; it is returned open for writing.
func unlinkSame(root *os.Root, e TreeEntry, linked *os.File, stamp fileStamp, off int64) (*os.File, error) {
	name := filepath.FromSlash(e.Path)
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(name), unlinkTmpPrefix+hex.EncodeToString(rnd[:]))
	f, err := root.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("transfer: receive %s: %w", e.Path, err)
	}
	if off > 0 {
		// copy_file_range underneath (a LimitedReader of a file): the
		// kernel copies the pages.
		if _, err = linked.Seek(0, io.SeekStart); err == nil {
			_, err = io.Copy(f, &io.LimitedReader{R: linked, N: off})
		}
	}
	if err == nil {
		// The prefix was checked before it was copied: it must not have
		// changed in between.
		err = checkStamp(linked, stamp)
	}
	if err == nil {
		err = f.Truncate(e.Size)
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		f.Close()
		root.Remove(tmp)
		return nil, fmt.Errorf("transfer: receive %s: %w", e.Path, err)
	}
	return f, nil
}

// unlinkTmpPrefix starts the names of unlinkSame's temporaries.
const unlinkTmpPrefix = ".ferry-unlink-"

// removeUnlinkTemps removes from an earlier attempt's tree under root the
// temporaries of an unlinkSame cut by a crash (named so, not listed in t):
// the resumed transfer would commit them into the checkpoint.
func removeUnlinkTemps(root *os.Root, t *Tree) error {
	listed := map[string]bool{}
	dirs := []string{"."}
	for _, e := range t.Entries {
		listed[e.Path] = true
		if e.Type == treeDir {
			dirs = append(dirs, filepath.FromSlash(e.Path))
		}
	}
	for _, d := range dirs {
		f, err := root.Open(d)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, n := range names {
			if strings.HasPrefix(n, unlinkTmpPrefix) && !listed[path.Join(filepath.ToSlash(d), n)] {
				if err := root.Remove(filepath.Join(d, n)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// linkedElsewhere reports whether a staging file has other links (a blob
// linked in place by linkSame).
func linkedElsewhere(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink > 1
}
