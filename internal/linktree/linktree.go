// Package linktree copies a directory tree by hard links: a checkpoint
// restored, or kept as a replica, costs no bytes when source and copy are
// on one filesystem (the agent's and its drivers' data directories, as
// `ferry agent` sets them up), and the source may be removed meanwhile.
// Shared by the process driver (restore directories) and the agent
// (replica snapshots); CopyFile also by the image builder.
package linktree

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Tree makes dst (which must not exist) a copy of the tree at src:
// directories are created (0o755), regular files hard-linked, or copied
// where the filesystem refuses the link (another filesystem, say); any
// other entry (a symlink, a device) is an error naming it.
func Tree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", rel)
		}
		err = os.Link(p, target)
		if err == nil || errors.Is(err, fs.ErrExist) {
			// An existing target may be a link to p itself (or to another
			// committed file): copying onto it would truncate that inode.
			return err
		}
		return CopyFile(p, target, false)
	})
}

// CopyFile copies the regular file src to dst (created, 0o644; an
// existing dst is an error: it may share its inode with another file),
// fsyncing it with sync.
func CopyFile(src, dst string, sync bool) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil && sync {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
