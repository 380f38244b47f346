package qemu

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrycluster/ferry/driver"
)

// FuzzReadImage feeds arbitrary task.json records to the suspend-image
// reader: it refuses them with ErrInvalidSpec or ErrInsufficient, or
// returns a machine QEMU can be started with; it never panics.
func FuzzReadImage(f *testing.F) {
	for _, s := range []string{
		`{"spec":{"id":"x"},"machine":{"memory_mib":128,"cpus":1,"append":"console=ttyS0"}}`,
		`{"machine":{"memory_mib":-1,"cpus":0}}`,
		`{"machine":{"memory_mib":99999999,"cpus":1}}`,
		`{"machine":{"memory_mib":128,"cpus":1000}}`,
		`{"machine":{"memory_mib":128,"cpus":1,"append":"a\nb"}}`,
		`{"machine":{"memory_mib":128,"tail_kib":8,"cpus":1}}`,
		`{"machine":{"memory_mib":128,"tail_kib":-8,"cpus":1}}`,
		`{"machine":{"memory_mib":128,"tail_kib":12,"cpus":1}}`,
		`{"machine":{"type":"pc-i440fx-7.2","memory_mib":128,"cpus":1}}`,
		`{"machine":{"type":"pc","memory_mib":128,"tail_kib":8,"cpus":1}}`,
		`not json`, `{}`, `null`,
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("k"), 0o644)
	os.WriteFile(filepath.Join(dir, stateFile), []byte("state"), 0o644)
	d := &Driver{cfg: Config{DataDir: dir, Kernel: kernel, DefaultMemoryBytes: 128 * mib, MaxMemoryBytes: 1 << 30, MaxCPUs: 16, Logger: slog.Default()}, accel: "tcg"}
	s := driver.Spec{ID: "fuzz", VM: &driver.VMSpec{}}
	m0, err := d.shape(s)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, imageMeta), b, 0o644); err != nil {
			t.Fatal(err)
		}
		m, _, err := d.readImage(s, m0, dir)
		if err != nil {
			if !errors.Is(err, driver.ErrInvalidSpec) && !errors.Is(err, driver.ErrInsufficient) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		if m.MemoryMiB < 48 || m.MemoryMiB*mib > d.cfg.MaxMemoryBytes || m.CPUs < 1 || m.CPUs > d.cfg.MaxCPUs || !cmdlineRE.MatchString(m.Append) ||
			m.TailKiB < 0 || m.TailKiB >= 1024 || m.TailKiB%8 != 0 || m.Type != machineType {
			t.Fatalf("accepted an impossible machine %+v", m)
		}
	})
}

// FuzzParseVersion: any --version output parses to a version that prints
// back as it was read, or is an error; never a panic.
func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n", "10.0.2", "", "QEMU emulator version 99999.1.1", "1.2.3 (x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseVersion(s)
		if err != nil {
			return
		}
		if v2, err := ParseVersion(v.String()); err != nil || v2 != v {
			t.Fatalf("%q parsed as %v, which reads back as %v, %v", s, v, v2, err)
		}
	})
}
