package transfer

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A file linked in place would share its inode with the checkpoint it was
// kept from: a tree announcing another mode for the same bytes is rebuilt,
// so its chmod never changes the older checkpoint's file.
func TestTreeLinksOnlyABlobOfTheSameMode(t *testing.T) {
	ctx := context.Background()
	src := checkpointDir(t, 36)
	store := openStore(t)
	rc := newReceiver(t, store)
	rc.Keep = true
	rc.PinAs = func(Header) string { return "image-r" }
	addr, out := listen(t, rc)
	move := func(id, name string) {
		t.Helper()
		if _, err := SendDir(ctx, dial(t, addr), src, SendOptions{ID: id, Name: name}); err != nil {
			t.Fatal(err)
		}
		if r := <-out; r.err != nil {
			t.Fatal(r.err)
		}
	}
	move("r1", "ckpt1")
	os.Chmod(filepath.Join(src, "state.bin"), 0o644)
	move("r2", "ckpt2")
	one := filepath.Join(rc.DestDir, "ckpt1", "state.bin")
	two := filepath.Join(rc.DestDir, "ckpt2", "state.bin")
	a, _ := os.Stat(one)
	b, _ := os.Stat(two)
	if a.Mode().Perm() != 0o600 || b.Mode().Perm() != 0o644 || os.SameFile(a, b) {
		t.Fatalf("ckpt1 mode %v, ckpt2 mode %v, one inode %v", a.Mode(), b.Mode(), os.SameFile(a, b))
	}
}
