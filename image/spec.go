package image

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrInvalidSpec marks a spec the builder refuses.
var ErrInvalidSpec = errors.New("invalid image spec")

// Spec is what an image is built from (the YAML of `ferry image build`):
//
//	name: counter            # a label; not part of the image's identity
//	kernel: build/guest/vmlinuz  # default: the builder's default kernel
//	busybox: /bin/busybox    # a static busybox; default /bin/busybox
//	init: counter            # shell command the guest's init runs
//	cmdline: quiet           # extra kernel parameters
//	files:                   # static binaries and files to add
//	  - src: bin/myjob       # host path (relative to the spec's directory)
//	    dst: /usr/bin/myjob  # path in the guest
//	    mode: 0755           # default 0644, or 0755 for dst under a bin dir
//
// Relative host paths are resolved against the spec file's directory.
type Spec struct {
	Name    string `yaml:"name" json:"name,omitempty"`
	Kernel  string `yaml:"kernel" json:"kernel,omitempty"`
	Busybox string `yaml:"busybox" json:"busybox,omitempty"`
	Init    string `yaml:"init" json:"init"`
	Cmdline string `yaml:"cmdline" json:"cmdline,omitempty"`
	Files   []File `yaml:"files" json:"files,omitempty"`
}

// File is one host file copied into the image.
type File struct {
	Src  string `yaml:"src" json:"src"`
	Dst  string `yaml:"dst" json:"dst"`
	Mode uint32 `yaml:"mode" json:"mode"`
}

// MaxSpecBytes bounds a spec file.
const MaxSpecBytes = 1 << 20

// MaxFiles bounds the files list.
const MaxFiles = 4096

var (
	nameRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	cmdlineRE = regexp.MustCompile(`^[ -~]*$`)
)

// ParseSpec parses and validates a YAML spec. Unknown fields are errors.
func ParseSpec(b []byte) (Spec, error) {
	if len(b) > MaxSpecBytes {
		return Spec{}, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidSpec, len(b), MaxSpecBytes)
	}
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return Spec{}, fmt.Errorf("%w: more than one YAML document", ErrInvalidSpec)
	}
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// Validate checks a spec and names the first problem.
func (s *Spec) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if s.Name != "" && !nameRE.MatchString(s.Name) {
		return bad("name %q: want letters, digits, '.', '_', '-' (at most 64)", s.Name)
	}
	if strings.TrimSpace(s.Init) == "" {
		return bad("init: the command the guest runs is missing")
	}
	if strings.ContainsRune(s.Init, 0) || len(s.Init) > 64<<10 {
		return bad("init: NUL byte or longer than 64 KiB")
	}
	if !cmdlineRE.MatchString(s.Cmdline) || len(s.Cmdline) > 1024 {
		return bad("cmdline %q: printable ASCII only, at most 1024 bytes", s.Cmdline)
	}
	for _, p := range []struct{ field, v string }{{"kernel", s.Kernel}, {"busybox", s.Busybox}} {
		if strings.ContainsRune(p.v, 0) {
			return bad("%s: NUL byte in path", p.field)
		}
	}
	if len(s.Files) > MaxFiles {
		return bad("files: %d entries, at most %d", len(s.Files), MaxFiles)
	}
	seen := map[string]bool{}
	for i, f := range s.Files {
		if f.Src == "" || strings.ContainsRune(f.Src, 0) {
			return bad("files[%d].src: empty or NUL byte", i)
		}
		if !strings.HasPrefix(f.Dst, "/") || strings.ContainsRune(f.Dst, 0) {
			return bad("files[%d].dst %q: want an absolute guest path", i, f.Dst)
		}
		clean := path.Clean(f.Dst)
		if clean != f.Dst || clean == "/" {
			return bad("files[%d].dst %q: not a clean path (want %q)", i, f.Dst, clean)
		}
		if reserved(clean) {
			return bad("files[%d].dst %q: reserved for the builder", i, f.Dst)
		}
		if seen[clean] {
			return bad("files[%d].dst %q: listed twice", i, f.Dst)
		}
		seen[clean] = true
		if f.Mode&^0o7777 != 0 {
			return bad("files[%d].mode %o: only permission bits", i, f.Mode)
		}
	}
	return nil
}

// reserved paths are written by the builder itself.
func reserved(p string) bool {
	for _, r := range []string{"/init", "/etc/ferry", "/bin/busybox", "/dev", "/proc", "/sys"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// DefaultSpec is the node's default guest: busybox and the built-in
// workloads, running "counter" unless the kernel command line (ferry_run)
// names another workload.
func DefaultSpec() Spec { return Spec{Name: "default", Init: "counter"} }
