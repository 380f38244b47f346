package transfer

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrycluster/ferry/cas"
)

// blobWith returns the store's blob that is path's inode, if any.
func blobWith(t *testing.T, st *cas.Store, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(st.Dir(), "blobs"))
	for _, e := range ents {
		if bi, err := os.Stat(filepath.Join(st.Dir(), "blobs", e.Name())); err == nil && os.SameFile(fi, bi) {
			return e.Name()
		}
	}
	return ""
}

// A tree comes back with its state file unchanged: the receiver links the
// file its store holds in place of rebuilding it (one inode, nothing
// written), checking every piece. Changed from its second piece on, the
// file is rebuilt (the checked prefix copied) and the store's blob keeps
// the old bytes.
func TestTreeUnchangedFileIsLinked(t *testing.T) {
	ctx := context.Background()
	src := checkpointDir(t, 34)
	store := openStore(t)
	rc := newReceiver(t, store)
	rc.Keep = true
	rc.PinAs = func(Header) string { return "image-u" }
	addr, out := listen(t, rc)
	move := func(id string) (SendResult, ReceiveResult) {
		t.Helper()
		res, err := SendDir(ctx, dial(t, addr), src, SendOptions{ID: id, Name: "ckpt"})
		if err != nil {
			t.Fatal(err)
		}
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		sameTree(t, src, filepath.Join(rc.DestDir, "ckpt"))
		return res, r.res
	}
	move("u1")
	state := filepath.Join(rc.DestDir, "ckpt", "state.bin")
	if blobWith(t, store, state) == "" {
		t.Fatal("the received state file is not linked into the store")
	}
	old, _ := os.ReadFile(state)
	first, _ := os.Stat(state)

	// Unchanged state, a changed script: the state file is the store's.
	os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\necho bye\n"), 0o755)
	res, r := move("u2")
	b := blobWith(t, store, state)
	second, _ := os.Stat(state)
	if !os.SameFile(first, second) || b == "" || res.BytesSent > 64<<10 || r.FromStore == 0 {
		t.Fatalf("unchanged state file: same inode %v, blob %q, %d bytes sent, %d chunks from the store", os.SameFile(first, second), b, res.BytesSent, r.FromStore)
	}

	// Changed past its first piece (4 MiB): rebuilt, the checked prefix
	// copied; the blob linked in place during the check keeps the old
	// bytes.
	f, _ := os.OpenFile(filepath.Join(src, "state.bin"), os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 6<<20)
	f.Close()
	res, _ = move("u3")
	if res.BytesSent > 200<<10 {
		t.Fatalf("a change of 7 bytes sent %d bytes", res.BytesSent)
	}
	third, _ := os.Stat(state)
	if os.SameFile(first, third) {
		t.Fatal("a changed file is still the store's blob")
	}
	if got, err := os.ReadFile(filepath.Join(store.Dir(), "blobs", b)); err != nil || string(got) != string(old) {
		t.Fatalf("the blob linked during the check changed: %v", err)
	}
}

// A partial tree of a cut transfer never writes into a blob linked in
// place: the retry's makeTree replaces such a file with a fresh one.
func TestResumedTreeDropsLinkedFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x.tree")
	tr := &Tree{Entries: []TreeEntry{{Path: "state.bin", Type: treeFile, Mode: 0o600, Size: 4096}}, Size: 4096}
	if err := makeTree(dir, tr, false); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(t.TempDir(), "blob")
	data := randBytes(4096, 35)
	os.WriteFile(blob, data, 0o600)
	os.Remove(filepath.Join(dir, "state.bin"))
	if err := os.Link(blob, filepath.Join(dir, "state.bin")); err != nil {
		t.Fatal(err)
	}
	if err := makeTree(dir, tr, true); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(blob)
	b, _ := os.Stat(filepath.Join(dir, "state.bin"))
	if os.SameFile(a, b) || b.Size() != 4096 {
		t.Fatal("the linked file was kept in the partial tree")
	}
	if got, _ := os.ReadFile(blob); string(got) != string(data) {
		t.Fatal("the blob changed")
	}
}
