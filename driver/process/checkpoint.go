package process

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/linktree"
)

// ManifestName is the file the driver adds to every committed checkpoint.
// Its presence marks the directory as complete; jobs ignore it.
const ManifestName = ".ferry-checkpoint.json"

// ManifestFormat names the version of the manifest layout.
const ManifestFormat = "ferry-checkpoint/1"

// Checkpoint modes recorded in the manifest.
const (
	ModeStop     = "stop"     // Suspend: the job ended after the checkpoint
	ModeContinue = "continue" // Checkpoint / periodic: the job kept running
)

// Manifest describes a committed checkpoint directory.
type Manifest struct {
	Format    string         `json:"format"`
	TaskID    string         `json:"task_id"`
	Epoch     uint64         `json:"epoch"`
	Mode      string         `json:"mode"`
	CreatedAt time.Time      `json:"created_at"`
	Took      time.Duration  `json:"took"`
	Bytes     int64          `json:"bytes"`
	Files     []ManifestFile `json:"files"`
}

// ManifestFile is one regular file of a checkpoint, path relative to it.
type ManifestFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// ErrBadImage marks a directory that is not a complete committed checkpoint.
var ErrBadImage = errors.New("not a committed checkpoint")

// ParseManifest parses and checks a manifest.
func ParseManifest(b []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: manifest: %v", ErrBadImage, err)
	}
	if dec.More() {
		return Manifest{}, fmt.Errorf("%w: manifest: trailing data", ErrBadImage)
	}
	if m.Format != ManifestFormat {
		return Manifest{}, fmt.Errorf("%w: manifest format %q, want %q", ErrBadImage, m.Format, ManifestFormat)
	}
	if m.Mode != ModeStop && m.Mode != ModeContinue {
		return Manifest{}, fmt.Errorf("%w: manifest mode %q, want %q or %q", ErrBadImage, m.Mode, ModeStop, ModeContinue)
	}
	var sum int64
	for i, f := range m.Files {
		if err := checkRelPath(f.Path); err != nil {
			return Manifest{}, fmt.Errorf("%w: manifest files[%d]: %v", ErrBadImage, i, err)
		}
		if f.Size < 0 || sum+f.Size < sum {
			return Manifest{}, fmt.Errorf("%w: manifest files[%d] %s: bad size %d", ErrBadImage, i, f.Path, f.Size)
		}
		sum += f.Size
	}
	if sum != m.Bytes {
		return Manifest{}, fmt.Errorf("%w: manifest bytes %d, files add up to %d", ErrBadImage, m.Bytes, sum)
	}
	return m, nil
}

// checkRelPath accepts clean relative slash paths inside the image.
func checkRelPath(p string) error {
	if p == "" || len(p) > 4096 || strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("path %q: empty, too long or NUL", p)
	}
	if strings.HasPrefix(p, "/") || filepath.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("path %q: want a clean relative path inside the image", p)
	}
	if p == ManifestName {
		return fmt.Errorf("path %q is reserved", p)
	}
	return nil
}

// VerifyImage checks that dir holds a complete committed checkpoint: a
// valid manifest, and every file it lists present with its size.
func VerifyImage(dir string) (Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %v", ErrBadImage, dir, err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", dir, err)
	}
	for _, f := range m.Files {
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			return Manifest{}, fmt.Errorf("%w: %s: %v", ErrBadImage, dir, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() != f.Size {
			return Manifest{}, fmt.Errorf("%w: %s: %s is %d bytes (%v), manifest says %d", ErrBadImage, dir, f.Path, fi.Size(), fi.Mode().Type(), f.Size)
		}
	}
	return m, nil
}

// sealStaging makes a staging directory durable and self-describing: it
// drops the done marker, fsyncs every file and directory, and writes the
// manifest. Only regular files and directories are accepted.
func sealStaging(staging string, m Manifest) (Manifest, error) {
	_ = os.Remove(filepath.Join(staging, DoneMarker))
	_ = os.Remove(filepath.Join(staging, ContinueRequest))
	_ = os.Remove(filepath.Join(staging, ManifestName))
	var dirs []string
	m.Files, m.Bytes = nil, 0
	err := filepath.WalkDir(staging, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		rel, _ := filepath.Rel(staging, p)
		if !d.Type().IsRegular() {
			return fmt.Errorf("checkpoint file %s is a %v, only regular files and directories are kept", rel, d.Type())
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		fi, serr := f.Stat()
		f.Close()
		if err != nil {
			return fmt.Errorf("fsync %s: %w", rel, err)
		}
		if serr != nil {
			return serr
		}
		m.Files = append(m.Files, ManifestFile{Path: filepath.ToSlash(rel), Size: fi.Size()})
		m.Bytes += fi.Size()
		return nil
	})
	if err != nil {
		return Manifest{}, err
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
	m.Format = ManifestFormat
	if err := writeJSONDurable(filepath.Join(staging, ManifestName), m); err != nil {
		return Manifest{}, err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syncDir(dirs[i]); err != nil {
			return Manifest{}, err
		}
	}
	return m, nil
}

// commitDir moves a sealed staging directory to dst atomically: dst must
// not exist or be an empty directory (rename(2) replaces an empty one in a
// single step). Across filesystems the tree is first copied next to dst and
// then renamed. Either dst holds the complete checkpoint, or it is as before.
func commitDir(staging, dst string) error {
	if err := checkEmptyDir(dst); err != nil {
		return err
	}
	// syscall.Rename, not os.Rename: os.Rename refuses an existing
	// directory as the target, rename(2) replaces an empty one atomically.
	err := syscall.Rename(staging, dst)
	if errors.Is(err, syscall.EXDEV) {
		tmp, terr := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".partial-")
		if terr != nil {
			return terr
		}
		if err = copyTree(staging, tmp, true); err == nil {
			err = syscall.Rename(tmp, dst)
		}
		if err != nil {
			os.RemoveAll(tmp)
			return err
		}
		os.RemoveAll(staging)
	}
	if err != nil {
		return fmt.Errorf("commit %s to %s: %w", staging, dst, err)
	}
	return syncDir(filepath.Dir(dst))
}

// checkEmptyDir accepts a missing path or an empty directory.
func checkEmptyDir(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("checkpoint directory %s: %w", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("checkpoint directory %s is not empty (holds %s): %w", dir, names[0], fs.ErrExist)
	}
	return nil
}

// copyTree copies regular files and directories from src into dst
// (created), fsyncing them when sync is set.
func copyTree(src, dst string, sync bool) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", rel)
		}
		return linktree.CopyFile(p, target, sync)
	})
}

// FreeSpace returns the bytes available to an unprivileged writer on the
// filesystem holding path (statfs f_bavail * f_bsize).
func FreeSpace(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// SpaceFunc reports the free bytes at a path; FreeSpace is the real one,
// tests inject others.
type SpaceFunc func(path string) (int64, error)

// CheckFreeSpace refuses (driver.ErrInsufficient) to place an image of need
// bytes under path when the filesystem has less free space than need plus
// a reserve of 1% (at least 1 MiB) for metadata. An agent calls it on the
// destination before moving a checkpoint; space nil means FreeSpace.
func CheckFreeSpace(path string, need int64, space SpaceFunc) error {
	if space == nil {
		space = FreeSpace
	}
	free, err := space(path)
	if err != nil {
		return err
	}
	reserve := max(need/100, 1<<20)
	if need < 0 || free < need+reserve {
		return fmt.Errorf("%w: checkpoint of %d bytes needs %d bytes free at %s, %d available", driver.ErrInsufficient, need, need+reserve, path, free)
	}
	return nil
}

// ImageBytes returns the size of a committed checkpoint from its manifest.
func ImageBytes(dir string) (int64, error) {
	m, err := VerifyImage(dir)
	if err != nil {
		return 0, err
	}
	return m.Bytes, nil
}
