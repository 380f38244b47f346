package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

type entry struct {
	name         string
	mode         uint32
	data         []byte
	major, minor uint32
}

// readCPIO is an independent newc reader for the tests.
func readCPIO(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		dataOff := align(off + 110 + namesize)
		e := entry{name: name, mode: mode, data: b[dataOff : dataOff+size], major: field(9), minor: field(10)}
		off = align(dataOff + size)
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, e)
	}
}

func TestCPIOWriter(t *testing.T) {
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("/bin", 0o755))
	must(w.File("/bin/hello", 0o755, []byte("hi\n")))
	must(w.Symlink("/bin/sh", "/bin/busybox"))
	must(w.CharDev("/dev/console", 0o600, 5, 1))
	must(w.File("/../../etc/x", 0o644, nil))
	must(w.Close())
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", buf.Len())
	}
	es := readCPIO(t, buf.Bytes())
	want := []string{"bin", "bin/hello", "bin/sh", "dev/console", "etc/x"}
	if len(es) != len(want) {
		t.Fatalf("entries %v", es)
	}
	for i, e := range es {
		if e.name != want[i] {
			t.Errorf("entry %d = %q, want %q", i, e.name, want[i])
		}
	}
	if string(es[1].data) != "hi\n" || es[1].mode != 0o100755 {
		t.Errorf("file %+v", es[1])
	}
	if string(es[2].data) != "/bin/busybox" || es[2].mode&0o170000 != modeSymlink {
		t.Errorf("symlink %+v", es[2])
	}
	if es[3].major != 5 || es[3].minor != 1 {
		t.Errorf("console %+v", es[3])
	}
	// The system's cpio agrees, when present.
	if cpio, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command(cpio, "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("cpio -t = %v", got)
		}
	}
}

func fakeKernel(t *testing.T, dir string) string {
	p := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(p, []byte("not really a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildCachesAndNames(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox (scripts/setup.sh installs busybox-static)")
	}
	dir := t.TempDir()
	s := &Store{Dir: filepath.Join(dir, "images"), DefaultKernel: fakeKernel(t, dir)}
	if err := os.WriteFile(filepath.Join(dir, "job"), []byte("#!/bin/sh\necho job\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := ParseSpec([]byte("name: demo\ninit: job\nfiles:\n  - src: job\n    dst: /usr/bin/job\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := s.Build(ctx, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.Cached || len(a.ID) != 64 || a.Name != "demo" {
		t.Fatalf("first build %+v", a)
	}
	b, err := s.Build(ctx, spec, dir)
	if err != nil || !b.Cached || b.ID != a.ID {
		t.Fatalf("second build %+v, %v; want the cached %s", b, err, a.ID)
	}
	// A changed input file changes the identity.
	os.WriteFile(filepath.Join(dir, "job"), []byte("#!/bin/sh\necho job 2\n"), 0o644)
	c, err := s.Build(ctx, spec, dir)
	if err != nil || c.Cached || c.ID == a.ID {
		t.Fatalf("build after input change %+v, %v", c, err)
	}
	// The initramfs holds init, busybox, applets, workloads and the file.
	raw, _ := os.ReadFile(c.Initrd)
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(zr)
	got := map[string]entry{}
	for _, e := range readCPIO(t, plain) {
		got[e.name] = e
	}
	for _, n := range []string{"init", "bin/busybox", "bin/sh", "bin/counter", "bin/dirty", "etc/ferry/init", "usr/bin/job", "dev/console"} {
		if _, ok := got[n]; !ok {
			t.Errorf("initramfs lacks %s", n)
		}
	}
	if e := got["usr/bin/job"]; e.mode != 0o100755 || string(e.data) != "#!/bin/sh\necho job 2\n" {
		t.Errorf("job entry %+v", e)
	}
	if string(got["etc/ferry/init"].data) != "job\n" {
		t.Errorf("init command %q", got["etc/ferry/init"].data)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %v, %v", list, err)
	}
	if _, err := s.Remove(a.ID[:10]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(a.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Remove: %v", err)
	}
	if _, err := s.Remove("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove unknown: %v", err)
	}
	// A missing input is a spec error naming the file.
	bad := spec
	bad.Files = []File{{Src: "missing", Dst: "/bin/x"}}
	if _, err := s.Build(ctx, bad, dir); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "/bin/x") {
		t.Errorf("missing input: %v", err)
	}
}

func TestParseSpecErrors(t *testing.T) {
	for name, y := range map[string]string{
		"unknown field":   "init: x\ncolour: red\n",
		"no init":         "name: x\n",
		"relative dst":    "init: x\nfiles: [{src: a, dst: bin/a}]\n",
		"unclean dst":     "init: x\nfiles: [{src: a, dst: /bin/../a}]\n",
		"reserved dst":    "init: x\nfiles: [{src: a, dst: /init}]\n",
		"duplicate dst":   "init: x\nfiles: [{src: a, dst: /a}, {src: b, dst: /a}]\n",
		"bad mode":        "init: x\nfiles: [{src: a, dst: /a, mode: 0170000}]\n",
		"bad name":        "name: ../x\ninit: x\n",
		"not yaml":        "init: [\n",
		"two documents":   "init: x\n---\ninit: y\n",
		"cmdline control": "init: x\ncmdline: \"a\\tb\"\n",
	} {
		_, err := ParseSpec([]byte(y))
		if !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: err = %v, want ErrInvalidSpec", name, err)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"name: counter\ninit: counter\n",
		"init: dirty 50\ncmdline: quiet\nfiles:\n  - src: a\n    dst: /usr/bin/a\n    mode: 0755\n",
		"init: x\ncolour: red\n",
		"{}", "", "init: [", "files: [{dst: /init}]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSpec(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("parsed spec fails Validate: %v", err)
		}
	})
}

// TestCPIORoundTrip: any set of files, directories and links written by
// CPIOWriter reads back the same with an independent reader.
func TestCPIORoundTrip(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		type item struct {
			kind int
			name string
			data []byte
		}
		items := rapid.SliceOfN(rapid.Custom(func(rt *rapid.T) item {
			return item{
				kind: rapid.IntRange(0, 2).Draw(rt, "kind"),
				name: rapid.StringMatching(`[a-z]{1,8}(/[a-z0-9_-][a-z0-9._-]{0,11}){0,3}`).Draw(rt, "name"),
				data: rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(rt, "data"),
			}
		}), 0, 20).Draw(rt, "items")
		var buf bytes.Buffer
		w := NewCPIOWriter(&buf)
		for _, it := range items {
			var err error
			switch it.kind {
			case 0:
				err = w.File(it.name, 0o644, it.data)
			case 1:
				err = w.Dir(it.name, 0o755)
			case 2:
				err = w.Symlink(it.name, "/"+it.name)
			}
			if err != nil {
				rt.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			rt.Fatal(err)
		}
		got := readCPIO(t, buf.Bytes())
		if len(got) != len(items) {
			rt.Fatalf("%d entries back, wrote %d", len(got), len(items))
		}
		for i, it := range items {
			if got[i].name != it.name {
				rt.Fatalf("entry %d name %q, want %q", i, got[i].name, it.name)
			}
			switch it.kind {
			case 0:
				if !bytes.Equal(got[i].data, it.data) || got[i].mode != modeFile|0o644 {
					rt.Fatalf("file %q mode %o data differs", it.name, got[i].mode)
				}
			case 1:
				if got[i].mode != modeDir|0o755 || len(got[i].data) != 0 {
					rt.Fatalf("dir %q mode %o", it.name, got[i].mode)
				}
			case 2:
				if string(got[i].data) != "/"+it.name || got[i].mode&0o170000 != modeSymlink {
					rt.Fatalf("symlink %q -> %q", it.name, got[i].data)
				}
			}
		}
	})
}
