package transfer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ferrycluster/ferry/cas"
)

// ExtractLimits bound what Extract accepts (zero: defaults).
type ExtractLimits struct {
	MaxEntries int   // default 1<<20
	MaxBytes   int64 // total file bytes, default 1 TiB
}

// Extract unpacks a tar stream into dest, which must not exist. It accepts
// only directories, regular files and symlinks; every name must be a clean
// relative path and every symlink must point inside dest. Anything else is
// refused with an error naming the entry, and all writes go through an
// os.Root confined to dest. Only permission bits are kept (no setuid).
func Extract(r io.Reader, dest string, lim ExtractLimits) error {
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = 1 << 20
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = cas.DefaultMaxFileSize
	}
	if err := os.Mkdir(dest, 0o700); err != nil {
		return fmt.Errorf("transfer: extract: %w", err)
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	dirModes := map[string]fs.FileMode{}
	var total int64
	for i := 0; ; i++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: tar entry %d: %v", cas.ErrInvalid, i, err)
		}
		if i >= lim.MaxEntries {
			return fmt.Errorf("%w: tar has more than %d entries", cas.ErrInvalid, lim.MaxEntries)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return fmt.Errorf("tar entry %d: %w", i, err)
		}
		mode := fs.FileMode(hdr.Mode) & 0o777
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("%w: tar entry %d %q: %v", cas.ErrInvalid, i, hdr.Name, err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: tar entry %d %q: %v", cas.ErrInvalid, i, hdr.Name, err)
			}
			dirModes[name] = mode
		case tar.TypeReg:
			if hdr.Size < 0 || hdr.Size > lim.MaxBytes-total {
				return fmt.Errorf("%w: tar entry %d %q: size %d over the remaining limit", cas.ErrInvalid, i, hdr.Name, hdr.Size)
			}
			total += hdr.Size
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return fmt.Errorf("%w: tar entry %d %q: %v", cas.ErrInvalid, i, hdr.Name, err)
			}
			_, err = io.CopyN(f, tr, hdr.Size)
			if err == nil {
				err = f.Chmod(mode)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%w: tar entry %d %q: %v", cas.ErrInvalid, i, hdr.Name, err)
			}
		case tar.TypeSymlink:
			if err := symlinkInside(name, hdr.Linkname); err != nil {
				return fmt.Errorf("tar entry %d: %w", i, err)
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fmt.Errorf("%w: tar entry %d %q: %v", cas.ErrInvalid, i, hdr.Name, err)
			}
		default:
			return fmt.Errorf("%w: tar entry %d %q: type %q not accepted (only files, directories, symlinks)", cas.ErrInvalid, i, hdr.Name, hdr.Typeflag)
		}
	}
	// Directory modes last, deepest first, so a read-only directory does
	// not block its own contents.
	names := make([]string, 0, len(dirModes))
	for n := range dirModes {
		names = append(names, n)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	for _, n := range names {
		if err := root.Chmod(n, dirModes[n]); err != nil {
			return err
		}
	}
	return nil
}

// entryName validates a tar entry name and returns it without a trailing
// slash.
func entryName(raw string) (string, error) {
	name := strings.TrimSuffix(raw, "/")
	if err := ValidRelPath(name); err != nil {
		return "", err
	}
	return name, nil
}

// symlinkInside checks that a symlink at name pointing to target resolves
// (lexically) inside the extraction root.
func symlinkInside(name, target string) error {
	switch {
	case target == "":
		return fmt.Errorf("%w: symlink %q has an empty target", cas.ErrInvalid, name)
	case strings.HasPrefix(target, "/"):
		return fmt.Errorf("%w: symlink %q -> %q is absolute (path traversal)", cas.ErrInvalid, name, target)
	case strings.ContainsRune(target, 0):
		return fmt.Errorf("%w: symlink %q target contains NUL", cas.ErrInvalid, name)
	}
	if resolved := path.Join(path.Dir(name), target); !filepath.IsLocal(resolved) {
		return fmt.Errorf("%w: symlink %q -> %q points outside the destination (path traversal)", cas.ErrInvalid, name, target)
	}
	return nil
}
