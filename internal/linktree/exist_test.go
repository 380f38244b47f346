package linktree

import (
	"os"
	"path/filepath"
	"testing"
)

// Tree onto a dst that already holds a link to a source file (a retry
// into a half-made dst) fails and leaves the source whole (a copy onto the
// existing target, the source's own inode, would truncate it).
func TestTreeOntoAnExistingLinkLeavesTheSource(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "dst")
	p := filepath.Join(src, "state")
	os.WriteFile(p, []byte("committed checkpoint bytes"), 0o600)
	os.MkdirAll(dst, 0o755)
	os.Link(p, filepath.Join(dst, "state"))
	err := Tree(src, dst)
	b, _ := os.ReadFile(p)
	if err == nil || string(b) != "committed checkpoint bytes" {
		t.Fatalf("Tree onto an existing link: %v; the source holds %q", err, b)
	}
}
