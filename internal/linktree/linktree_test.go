package linktree

import (
	"os"
	"path/filepath"
	"testing"
)

// Files are linked (one inode), directories recreated, the copy survives
// the source's removal, and a symlink is refused by name.
func TestTree(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a", "b"), 0o700)
	os.WriteFile(filepath.Join(src, "a", "b", "state"), []byte("state"), 0o600)
	os.WriteFile(filepath.Join(src, "top"), nil, 0o644)
	dst := filepath.Join(t.TempDir(), "copy")
	if err := Tree(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(filepath.Join(src, "a", "b", "state"))
	b, err := os.Stat(filepath.Join(dst, "a", "b", "state"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("state not linked: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "top")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(src)
	if got, _ := os.ReadFile(filepath.Join(dst, "a", "b", "state")); string(got) != "state" {
		t.Fatal("the copy lost its bytes with the source")
	}

	src2 := t.TempDir()
	os.Symlink("elsewhere", filepath.Join(src2, "link"))
	if err := Tree(src2, filepath.Join(t.TempDir(), "copy")); err == nil {
		t.Fatal("symlink accepted")
	}
}

// CopyFile copies (what Tree does where a link is refused).
func TestCopyFile(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("bytes"), 0o600)
	dst := filepath.Join(t.TempDir(), "g")
	if err := CopyFile(src, dst, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "bytes" {
		t.Fatalf("copy holds %q", got)
	}
}
