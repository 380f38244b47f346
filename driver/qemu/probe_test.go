package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU points the probe cache at a fresh directory for the test and
// writes there a stand-in QEMU, a shell script running body, that counts
// its starts (count).
func fakeQEMU(t *testing.T, body string) (dir, fake string, count func() int) {
	dir = t.TempDir()
	old := probeCacheDir
	probeCacheDir = filepath.Join(dir, "cache")
	t.Cleanup(func() { probeCacheDir = old })
	runs := filepath.Join(dir, "runs")
	fake = filepath.Join(dir, "fake-qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho run >> "+runs+"\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, fake, func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run")
	}
}

// TestCachedProbeRunsOnce: a second probe with the same QEMU and kernel
// answers from the cache without starting QEMU, in this process and (with
// the in-process memo cleared) from the file; a changed kernel probes again.
func TestCachedProbeRunsOnce(t *testing.T) {
	// A stand-in QEMU that prints what a booted probe guest prints on the
	// serial file named by -serial file:PATH.
	dir, fake, count := fakeQEMU(t,
		"for a in \"$@\"; do case \"$a\" in file:*) echo 'ferry: running' > \"${a#file:}\";; esac; done\nexec sleep 30\n")
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, kvmErr := os.Stat("/dev/kvm")
	want, wantRuns := "tcg", 0
	if kvmErr == nil {
		want, wantRuns = "kvm", 1 // the stand-in "boots"
	}

	ctx := context.Background()
	for i := range 2 {
		if got := CachedProbe(ctx, fake, kernel, "", 10*time.Second); got != want {
			t.Fatalf("probe %d: %q, want %q", i, got, want)
		}
	}
	if n := count(); n != wantRuns {
		t.Fatalf("QEMU started %d times for two probes, want %d", n, wantRuns)
	}
	probeMemo.Clear()
	if got := CachedProbe(ctx, fake, kernel, "", 10*time.Second); got != want || count() != wantRuns {
		t.Fatalf("probe after clearing the memo: %q with %d starts, want %q from the file", got, count(), want)
	}
	if kvmErr != nil {
		return
	}
	if err := os.WriteFile(kernel, []byte("another kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	CachedProbe(ctx, fake, kernel, "", 10*time.Second)
	if n := count(); n != 2 {
		t.Fatalf("a changed kernel started QEMU %d times in all, want 2", n)
	}
}

// TestCachedVersionRunsOnce: the QEMU version is read with --version once
// per binary (then from the memo, or the file once the memo is cleared);
// a binary that prints no version is an error naming it.
func TestCachedVersionRunsOnce(t *testing.T) {
	dir, fake, count := fakeQEMU(t,
		"echo 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)'\necho 'Copyright (c) 2003-2025'\n")
	ctx := context.Background()
	for i := range 2 {
		v, err := CachedVersion(ctx, fake)
		if err != nil || v != (Version{10, 0, 2}) {
			t.Fatalf("version %d: %v, %v; want 10.0.2", i, v, err)
		}
	}
	probeMemo.Clear()
	if v, err := CachedVersion(ctx, fake); err != nil || v != (Version{10, 0, 2}) || count() != 1 {
		t.Fatalf("after clearing the memo: %v, %v with %d runs; want 10.0.2 from the file, 1 run", v, err, count())
	}
	bad := filepath.Join(dir, "not-qemu")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := CachedVersion(ctx, bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("a binary without a version: %v, want an error naming it", err)
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright": {7, 2, 22},
		"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)":       {10, 0, 2},
		"QEMU emulator version 9.0.0\n":                                             {9, 0, 0},
		"8.2.2":                                                                     {8, 2, 2},
	} {
		if v, err := ParseVersion(in); err != nil || v != want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", in, v, err, want)
		}
	}
	for _, in := range []string{"", "hello", "QEMU emulator version x.y.z", "QEMU emulator version 10.0", "Copyright\nQEMU emulator version 10.0.2", "10.0.2.1"} {
		if v, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", in, v)
		}
	}
	if !(Version{9, 0, 0}).AtLeast(9, 0) || (Version{8, 2, 9}).AtLeast(9, 0) || !(Version{10, 0, 0}).AtLeast(9, 0) {
		t.Error("AtLeast(9, 0) wrong")
	}
}
