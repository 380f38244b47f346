package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runRoot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs(args)
	defer root.SetArgs(nil)
	err := root.Execute()
	return out.String(), err
}

func TestCasIndexAndDiff(t *testing.T) {
	dir := t.TempDir()
	a := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB: 16 blocks, 1 distinct
	b := append(append([]byte(nil), a...), make([]byte, 8192)...)
	copy(b[4096:], bytes.Repeat([]byte{7}, 4096))
	pa, pb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(pa, a, 0o644)
	os.WriteFile(pb, b, 0o644)
	out, err := runRoot(t, "cas", "index", "--out", filepath.Join(dir, "a.idx"), pa)
	if err != nil || !strings.Contains(out, "chunks   16 (1 distinct, 4096 bytes)") {
		t.Fatalf("index: %v\n%s", err, out)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a.idx")); err != nil || fi.Size() == 0 {
		t.Fatalf("index file: %v", err)
	}
	out, err = runRoot(t, "cas", "diff", pa, pb)
	if err != nil || !strings.Contains(out, "hot 93.8% of 65536 non-zero bytes; holes 8192 bytes") {
		t.Fatalf("diff: %v\n%s", err, out)
	}
	if _, err := runRoot(t, "cas", "index", "--chunking", "bogus", pa); exitCode(err) != 2 {
		t.Fatalf("bad chunking: exit %d (%v)", exitCode(err), err)
	}
	out, err = runRoot(t, "cas", "gc", "--store", filepath.Join(dir, "store"))
	if err != nil || !strings.Contains(out, "removed 0") {
		t.Fatalf("gc: %v\n%s", err, out)
	}
}
