package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// moveTo sends src to rc (listening at addr) as transfer id into name and
// returns the receiver's error.
func moveTo(ctx context.Context, t *testing.T, addr string, out chan received, src, id, name string) error {
	t.Helper()
	_, serr := SendDir(ctx, dial(t, addr), src, SendOptions{ID: id, Name: name})
	r := <-out
	if r.err == nil && serr != nil {
		t.Fatalf("send %s: %v, the receiver committed", id, serr)
	}
	return r.err
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(x, y)
}

// A file is linked in place only from the task's own earlier image (its
// pin), never from another task's checkpoint with the same bytes: task b's
// checkpoint gets its own inode, task a's second one shares a's first.
func TestTreeLinksOnlyTheSameTasksBlob(t *testing.T) {
	ctx := context.Background()
	src := checkpointDir(t, 37)
	rc := newReceiver(t, openStore(t))
	rc.Keep = true
	rc.PinAs = func(h Header) string { return "image-" + h.ID[:1] }
	addr, out := listen(t, rc)
	for _, m := range [][2]string{{"a1", "ckpt-a1"}, {"b1", "ckpt-b1"}, {"a2", "ckpt-a2"}} {
		if err := moveTo(ctx, t, addr, out, src, m[0], m[1]); err != nil {
			t.Fatal(err)
		}
		sameTree(t, src, filepath.Join(rc.DestDir, m[1]))
	}
	state := func(name string) string { return filepath.Join(rc.DestDir, name, "state.bin") }
	if sameInode(t, state("ckpt-a1"), state("ckpt-b1")) {
		t.Fatal("task b's checkpoint is a link to task a's")
	}
	if !sameInode(t, state("ckpt-a1"), state("ckpt-a2")) {
		t.Fatal("task a's second checkpoint was rebuilt, not linked to its first")
	}
}

// A file linked in place and written through another of its links after
// its pieces were checked (here: into the earlier checkpoint, just before
// the commit) is not committed: the transfer fails, and its retry rebuilds
// the file from what the sender sent.
func TestTreeLinkedFileWrittenBeforeTheCommitIsRefused(t *testing.T) {
	ctx := context.Background()
	src := checkpointDir(t, 38)
	rc := newReceiver(t, openStore(t))
	rc.Keep = true
	rc.PinAs = func(Header) string { return "image-w" }
	one := filepath.Join(rc.DestDir, "ckpt1", "state.bin")
	var wrote bool
	rc.Progress = func(p Progress) {
		if p.ID != "w2" || p.Phase != PhaseVerify || wrote {
			return
		}
		wrote = true
		f, err := os.OpenFile(one, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("changed"), 5<<20); err != nil {
			t.Error(err)
		}
	}
	addr, out := listen(t, rc)
	if err := moveTo(ctx, t, addr, out, src, "w1", "ckpt1"); err != nil {
		t.Fatal(err)
	}
	err := moveTo(ctx, t, addr, out, src, "w2", "ckpt2")
	if !wrote {
		t.Fatal("the second transfer linked nothing in place")
	}
	if !errors.Is(err, errLinkedChanged) || !strings.Contains(err.Error(), "state.bin") {
		t.Fatalf("transfer with its linked file written before the commit: %v", err)
	}
	if _, err := os.Stat(filepath.Join(rc.DestDir, "ckpt2")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ckpt2 committed: %v", err)
	}
	if err := moveTo(ctx, t, addr, out, src, "w2", "ckpt2"); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, filepath.Join(rc.DestDir, "ckpt2"))
	if sameInode(t, one, filepath.Join(rc.DestDir, "ckpt2", "state.bin")) {
		t.Fatal("the retry linked the changed file again")
	}
}

// A temporary of unlinkSame left in the staging tree by a crash is not
// committed by the resumed transfer; a file of the tree with such a name
// is.
func TestResumedTreeDropsUnlinkTemporaries(t *testing.T) {
	src := checkpointDir(t, 39)
	if err := os.WriteFile(filepath.Join(src, "sub", unlinkTmpPrefix+"listed"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := newReceiver(t, nil)
	addr, out := listen(t, rc)
	c := &cutConn{Conn: dial(t, addr), budget: 4 << 20}
	if _, err := SendDir(context.Background(), c, src, SendOptions{ID: "ut", Name: "ckpt"}); err == nil {
		t.Fatal("send through a cut connection succeeded")
	}
	if first := <-out; first.err == nil {
		t.Fatal("the cut transfer committed")
	}
	staging := filepath.Join(rc.StagingDir, "ut.tree")
	for _, p := range []string{unlinkTmpPrefix + "0123456789abcdef", filepath.Join("sub", unlinkTmpPrefix+"fedcba9876543210")} {
		if err := os.WriteFile(filepath.Join(staging, p), []byte("left by a crash"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := moveTo(context.Background(), t, addr, out, src, "ut", "ckpt"); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(rc.DestDir, "ckpt")
	sameTree(t, src, dest)
	var extra []string
	filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), unlinkTmpPrefix) && d.Name() != unlinkTmpPrefix+"listed" {
			extra = append(extra, p)
		}
		return nil
	})
	if len(extra) > 0 {
		t.Fatalf("the resumed transfer committed %v", extra)
	}
}
