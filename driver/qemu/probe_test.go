package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCachedProbeRunsOnce: a second probe with the same QEMU and kernel
// answers from the cache without starting QEMU, in this process and (with
// the in-process memo cleared) from the file; a changed kernel probes again.
func TestCachedProbeRunsOnce(t *testing.T) {
	dir := t.TempDir()
	old := probeCacheDir
	probeCacheDir = filepath.Join(dir, "cache")
	t.Cleanup(func() { probeCacheDir = old })

	// A stand-in QEMU that counts its starts and prints what a booted
	// probe guest prints on the serial file named by -serial file:PATH.
	runs := filepath.Join(dir, "runs")
	fake := filepath.Join(dir, "fake-qemu")
	script := "#!/bin/sh\necho run >> " + runs + "\n" +
		"for a in \"$@\"; do case \"$a\" in file:*) echo 'ferry: running' > \"${a#file:}\";; esac; done\nexec sleep 30\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run")
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
