// Package image builds guest images for the qemu driver: Debian's cloud
// kernel plus an initramfs made here (a newc cpio, gzip-compressed) holding
// a static busybox with its applet links, an /init that mounts proc, sys and
// dev and runs the workload, the built-in workloads (counter, dirty), and
// the static binaries and files a Spec lists.
//
// An image is named by the SHA-256 of its normalized spec and the digests of
// every input file (kernel, busybox, listed files) and of the builder's own
// version, so building the same spec twice reuses the cached image (the
// seed's OS Farm names images by their configuration checksum). The cache is
// a directory:
//
//	<dir>/<id>/vmlinuz     the kernel
//	<dir>/<id>/initrd.gz   the initramfs
//	<dir>/<id>/image.json  Image: id, name, normalized spec, sizes, time
//
// An image appears by an atomic rename of a fully written temporary
// directory, so readers never see a partial one and concurrent builds of
// the same spec are harmless.
package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ferrycluster/ferry/internal/linktree"
)

// BuilderVersion is part of every image's identity: bump it when the
// layout of the initramfs changes.
const BuilderVersion = "ferry-image-1"

// ErrNotFound: no such image in the store.
var ErrNotFound = errors.New("image not found")

//go:embed workloads/init
var initScript []byte

//go:embed workloads/counter
var counterScript []byte

//go:embed workloads/dirty
var dirtyScript []byte

// Image is a built guest image.
type Image struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Dir     string    `json:"-"`
	Kernel  string    `json:"-"`
	Initrd  string    `json:"-"`
	Cmdline string    `json:"cmdline,omitempty"`
	Spec    Spec      `json:"spec"`
	Bytes   int64     `json:"bytes"`
	BuiltAt time.Time `json:"built_at"`
	// Cached is true when Build found the image already built.
	Cached bool `json:"-"`
}

// Store is a directory of built images.
type Store struct {
	Dir string
	// DefaultKernel is used when a spec names no kernel.
	DefaultKernel string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

type input struct {
	dst    string // guest path ("" for kernel)
	mode   uint32
	src    string
	digest string
}

func fileDigest(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func resolve(base, p string) string {
	if filepath.IsAbs(p) || base == "" {
		return p
	}
	return filepath.Join(base, p)
}

// normalize fills defaults and resolves host paths against base.
func (s *Store) normalize(spec Spec, base string) (Spec, error) {
	if err := spec.Validate(); err != nil {
		return Spec{}, err
	}
	n := spec
	n.Kernel = resolve(base, n.Kernel)
	if spec.Kernel == "" {
		n.Kernel = s.DefaultKernel // relative to the working directory
	}
	if n.Kernel == "" {
		return Spec{}, fmt.Errorf("%w: kernel: none given and the builder has no default", ErrInvalidSpec)
	}
	if n.Busybox == "" {
		n.Busybox = "/bin/busybox"
	}
	n.Busybox = resolve(base, n.Busybox)
	n.Init = strings.TrimSpace(n.Init)
	n.Cmdline = strings.Join(strings.Fields(n.Cmdline), " ")
	n.Files = append([]File(nil), spec.Files...)
	for i := range n.Files {
		n.Files[i].Src = resolve(base, n.Files[i].Src)
		if n.Files[i].Mode == 0 {
			n.Files[i].Mode = 0o644
			if d := path.Base(path.Dir(n.Files[i].Dst)); d == "bin" || d == "sbin" {
				n.Files[i].Mode = 0o755
			}
		}
	}
	sort.Slice(n.Files, func(i, j int) bool { return n.Files[i].Dst < n.Files[j].Dst })
	return n, nil
}

// identity returns the image id of a normalized spec: the SHA-256 of the
// builder version, the spec without host paths or name, and the digest of
// every input file.
func identity(n Spec) (string, []input, error) {
	inputs := []input{{src: n.Kernel}, {dst: "/bin/busybox", mode: 0o755, src: n.Busybox}}
	for _, f := range n.Files {
		inputs = append(inputs, input{dst: f.Dst, mode: f.Mode, src: f.Src})
	}
	for i := range inputs {
		d, err := fileDigest(inputs[i].src)
		if err != nil {
			what := inputs[i].dst
			if what == "" {
				what = "kernel"
			}
			return "", nil, fmt.Errorf("%w: %s: %v", ErrInvalidSpec, what, err)
		}
		inputs[i].digest = d
	}
	type idFile struct {
		Dst    string `json:"dst"`
		Mode   uint32 `json:"mode"`
		Digest string `json:"sha256"`
	}
	doc := struct {
		Builder string   `json:"builder"`
		Init    string   `json:"init"`
		Cmdline string   `json:"cmdline"`
		Kernel  string   `json:"kernel_sha256"`
		Files   []idFile `json:"files"`
	}{BuilderVersion, n.Init, n.Cmdline, inputs[0].digest, nil}
	for _, in := range inputs[1:] {
		doc.Files = append(doc.Files, idFile{in.dst, in.mode, in.digest})
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), inputs, nil
}

// Build builds spec (host paths relative to base) unless an image with the
// same identity exists, and returns it.
func (s *Store) Build(ctx context.Context, spec Spec, base string) (Image, error) {
	n, err := s.normalize(spec, base)
	if err != nil {
		return Image{}, err
	}
	id, inputs, err := identity(n)
	if err != nil {
		return Image{}, err
	}
	if img, err := s.Get(id); err == nil {
		img.Cached = true
		return img, nil
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return Image{}, err
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(s.Dir, ".build-"+id[:12]+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(tmp)

	if err := linktree.CopyFile(n.Kernel, filepath.Join(tmp, "vmlinuz"), true); err != nil {
		return Image{}, fmt.Errorf("image: copy kernel: %w", err)
	}
	initrd, err := buildInitramfs(ctx, n, inputs[1:])
	if err != nil {
		return Image{}, err
	}
	if err := writeSync(filepath.Join(tmp, "initrd.gz"), initrd); err != nil {
		return Image{}, err
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	kfi, _ := os.Stat(filepath.Join(tmp, "vmlinuz"))
	img := Image{ID: id, Name: spec.Name, Cmdline: n.Cmdline, Spec: n, Bytes: int64(len(initrd)) + kfi.Size(), BuiltAt: now().UTC()}
	meta, _ := json.MarshalIndent(img, "", "  ")
	if err := writeSync(filepath.Join(tmp, "image.json"), append(meta, '\n')); err != nil {
		return Image{}, err
	}
	final := filepath.Join(s.Dir, id)
	if err := os.Rename(tmp, final); err != nil {
		// Someone else built the same image meanwhile: use theirs.
		if existing, gerr := s.Get(id); gerr == nil {
			existing.Cached = true
			return existing, nil
		}
		return Image{}, fmt.Errorf("image: commit %s: %w", id, err)
	}
	syncDir(s.Dir)
	return s.Get(id)
}

func buildInitramfs(ctx context.Context, n Spec, files []input) ([]byte, error) {
	applets, err := busyboxApplets(ctx, n.Busybox)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	cw := NewCPIOWriter(zw)
	dirs := map[string]bool{}
	var mkdirs func(p string) error
	mkdirs = func(p string) error {
		if p == "/" || p == "." || dirs[p] {
			return nil
		}
		if err := mkdirs(path.Dir(p)); err != nil {
			return err
		}
		dirs[p] = true
		return cw.Dir(p, 0o755)
	}
	for _, d := range []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/etc/ferry", "/proc", "/sys", "/dev", "/tmp", "/run", "/root"} {
		if err := mkdirs(d); err != nil {
			return nil, err
		}
	}
	if err := cw.CharDev("/dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := cw.CharDev("/dev/null", 0o666, 1, 3); err != nil {
		return nil, err
	}
	add := func(dst string, mode uint32, data []byte) error {
		if err := mkdirs(path.Dir(dst)); err != nil {
			return err
		}
		return cw.File(dst, mode, data)
	}
	for _, f := range files {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, fmt.Errorf("image: read %s: %w", f.src, err)
		}
		if err := add(f.dst, f.mode, data); err != nil {
			return nil, err
		}
	}
	taken := map[string]bool{"/init": true}
	for _, f := range files {
		taken[f.dst] = true
	}
	for _, w := range []struct {
		dst  string
		data []byte
	}{{"/init", initScript}, {"/bin/counter", counterScript}, {"/bin/dirty", dirtyScript}} {
		if w.dst != "/init" && taken[w.dst] {
			continue // the spec brings its own
		}
		taken[w.dst] = true
		if err := add(w.dst, 0o755, w.data); err != nil {
			return nil, err
		}
	}
	if err := add("/etc/ferry/init", 0o644, []byte(n.Init+"\n")); err != nil {
		return nil, err
	}
	for _, a := range applets {
		p := "/" + a
		if taken[p] || p == "/bin/busybox" {
			continue
		}
		taken[p] = true
		if err := mkdirs(path.Dir(p)); err != nil {
			return nil, err
		}
		if err := cw.Symlink(p, "/bin/busybox"); err != nil {
			return nil, err
		}
	}
	if err := cw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// busyboxApplets lists the applets of a busybox binary as relative paths
// ("bin/sh", "usr/bin/awk").
func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%w: busybox %s --list-full: %v", ErrInvalidSpec, bin, err)
	}
	var applets []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.Contains(l, "..") || strings.HasPrefix(l, "/") {
			continue
		}
		applets = append(applets, l)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%w: busybox %s lists no applets", ErrInvalidSpec, bin)
	}
	sort.Strings(applets)
	return applets, nil
}

func writeSync(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

func validID(id string) bool {
	if len(id) != 64 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// Get returns the image with exactly this id.
func (s *Store) Get(id string) (Image, error) {
	if !validID(id) {
		return Image{}, fmt.Errorf("%w: %q is not an image id", ErrNotFound, id)
	}
	dir := filepath.Join(s.Dir, id)
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return Image{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil || img.ID != id {
		return Image{}, fmt.Errorf("image %s: corrupt image.json", id)
	}
	img.Dir = dir
	img.Kernel = filepath.Join(dir, "vmlinuz")
	img.Initrd = filepath.Join(dir, "initrd.gz")
	return img, nil
}

// List returns every image, newest first.
func (s *Store) List() ([]Image, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Image
	for _, e := range ents {
		if img, err := s.Get(e.Name()); err == nil {
			out = append(out, img)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BuiltAt.After(out[j].BuiltAt) })
	return out, nil
}

// Find resolves a reference: a full id, a unique id prefix of at least 6
// hex digits, or a unique name.
func (s *Store) Find(ref string) (Image, error) {
	if img, err := s.Get(ref); err == nil {
		return img, nil
	}
	all, err := s.List()
	if err != nil {
		return Image{}, err
	}
	var match []Image
	for _, img := range all {
		if (len(ref) >= 6 && strings.HasPrefix(img.ID, ref)) || (ref != "" && img.Name == ref) {
			match = append(match, img)
		}
	}
	switch len(match) {
	case 0:
		return Image{}, fmt.Errorf("%w: %q", ErrNotFound, ref)
	case 1:
		return match[0], nil
	default:
		return Image{}, fmt.Errorf("image %q is ambiguous: %d images match", ref, len(match))
	}
}

// Remove deletes the image ref names (see Find).
func (s *Store) Remove(ref string) (Image, error) {
	img, err := s.Find(ref)
	if err != nil {
		return Image{}, err
	}
	// Rename first so a reader never sees a half-deleted image.
	var rnd [6]byte
	rand.Read(rnd[:])
	gone := filepath.Join(s.Dir, ".rm-"+img.ID[:12]+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Rename(img.Dir, gone); err != nil {
		return Image{}, err
	}
	return img, os.RemoveAll(gone)
}
