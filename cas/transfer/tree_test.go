package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/cas"
)

// checkpointDir makes a small checkpoint-like tree: a large state file, a
// script, an empty file in a nested directory, and a symlink.
func checkpointDir(t *testing.T, seed uint64) string {
	t.Helper()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub", "deep"), 0o750)
	os.WriteFile(filepath.Join(src, "state.bin"), randBytes(9<<20+123, seed), 0o600)
	os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "deep", "empty"), nil, 0o644)
	os.Symlink("sub/run.sh", filepath.Join(src, "link"))
	return src
}

// sameTree fails unless dst holds what src holds: files (bytes and
// modes), directories (modes) and symlinks.
func sameTree(t *testing.T, src, dst string) {
	t.Helper()
	want, err := walkTree(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := walkTree(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != len(want.Entries) {
		t.Fatalf("%d entries, want %d", len(got.Entries), len(want.Entries))
	}
	for i, e := range want.Entries {
		if got.Entries[i] != e {
			t.Fatalf("entry %d: %+v, want %+v", i, got.Entries[i], e)
		}
		if e.Type == treeFile {
			a, _ := os.ReadFile(filepath.Join(src, e.Path))
			b, _ := os.ReadFile(filepath.Join(dst, e.Path))
			if !bytes.Equal(a, b) {
				t.Fatalf("%s differs", e.Path)
			}
		}
	}
}

// A directory sent raw (the receiver expects none of its chunks) arrives
// whole, its chunks are kept after the commit, and the next version of it
// (the receiver now holds a pin) crosses as its changed chunks only.
func TestTreeRawThenIndexed(t *testing.T) {
	src := checkpointDir(t, 31)
	store := openStore(t)
	rc := newReceiver(t, store)
	rc.Keep = true
	rc.PinAs = func(Header) string { return "image-t" }
	rc.Fresh = func(Header) bool {
		pins := store.Pins()
		i := sort.SearchStrings(pins, "image-t")
		return i == len(pins) || pins[i] != "image-t"
	}
	kept := make(chan func(context.Context), 1)
	rc.Background = func(f func(context.Context)) { kept <- f }
	addr, out := listen(t, rc)
	res, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "t1", Name: "ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.Received != 0 || r.res.ReceivedBytes != res.BytesSent || res.Index.Size != 9<<20+123+18 {
		t.Fatalf("raw transfer: received %d chunks, %d bytes; sent %d bytes, size %d", r.res.Received, r.res.ReceivedBytes, res.BytesSent, res.Index.Size)
	}
	sameTree(t, src, filepath.Join(rc.DestDir, "ckpt"))
	if len(store.Pins()) != 0 {
		t.Fatal("pinned before the background keep ran")
	}
	(<-kept)(context.Background())
	x, err := store.Pinned("image-t")
	if err != nil || x.Size != res.Index.Size {
		t.Fatalf("pin after keep: %v, %v", x, err)
	}

	// The next checkpoint: a few bytes changed, a file added.
	f, _ := os.OpenFile(filepath.Join(src, "state.bin"), os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 5<<20)
	f.Close()
	os.WriteFile(filepath.Join(src, "sub", "new"), []byte("new file"), 0o640)
	res, err = SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "t2", Name: "ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	r = <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	(<-kept)(context.Background())
	if res.BytesSent > 200<<10 || r.res.FromStore == 0 {
		t.Fatalf("second checkpoint sent %d bytes of %d (%d chunks from the store)", res.BytesSent, res.Index.Size, r.res.FromStore)
	}
	sameTree(t, src, filepath.Join(rc.DestDir, "ckpt"))
}

// A raw transfer cut midway resumes with the index: the retry sends only
// what the partial files lack.
func TestTreeRawCutResumes(t *testing.T) {
	src := checkpointDir(t, 32)
	rc := newReceiver(t, nil)
	rc.Fresh = func(Header) bool { return true }
	addr, out := listen(t, rc)
	c := &cutConn{Conn: dial(t, addr), budget: 6 << 20}
	if _, err := SendDir(context.Background(), c, src, SendOptions{ID: "ck", Name: "ckpt"}); err == nil {
		t.Fatal("send through a cut connection succeeded")
	}
	first := <-out
	if first.err == nil || first.res.ReceivedBytes < 2<<20 {
		t.Fatalf("first attempt: %v, %d bytes", first.err, first.res.ReceivedBytes)
	}
	if _, err := os.Stat(filepath.Join(rc.DestDir, "ckpt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a partial tree was committed")
	}
	res, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "ck", Name: "ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	second := <-out
	if second.err != nil {
		t.Fatal(second.err)
	}
	if second.res.Resumed == 0 || res.BytesSent > res.Index.Size-first.res.ReceivedBytes+(1<<20) {
		t.Fatalf("resumed %d chunks, sent %d of %d bytes after %d arrived", second.res.Resumed, res.BytesSent, res.Index.Size, first.res.ReceivedBytes)
	}
	sameTree(t, src, filepath.Join(rc.DestDir, "ckpt"))
}

// A file cut into several pieces (the piece length grows with the offset)
// crosses whole, in both modes.
func TestTreeManyPieces(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a"), randBytes(3<<20, 40), 0o600)
	os.WriteFile(filepath.Join(src, "big"), append(randBytes(21<<20, 41), make([]byte, 3<<20)...), 0o600)
	os.WriteFile(filepath.Join(src, "z"), []byte("z"), 0o600)
	for _, raw := range []bool{false, true} {
		rc := newReceiver(t, nil)
		rc.Fresh = func(Header) bool { return raw }
		addr, out := listen(t, rc)
		res, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "p", Name: "ckpt"})
		if err != nil {
			t.Fatal(err)
		}
		if r := <-out; r.err != nil {
			t.Fatal(r.err)
		}
		if !raw && res.BytesSent >= res.Index.Size {
			t.Fatalf("indexed: sent %d of %d bytes (the zeros are holes)", res.BytesSent, res.Index.Size)
		}
		sameTree(t, src, filepath.Join(rc.DestDir, "ckpt"))
	}
	if segLen(0) != minSegBytes || segLen(8<<20) != 8<<20 || segLen(1<<30) != segBytes {
		t.Fatalf("piece lengths %d %d %d", segLen(0), segLen(8<<20), segLen(1<<30))
	}
}

func treeBytes(entries ...TreeEntry) []byte { return encodeTree(&Tree{Entries: entries}) }

func TestDecodeTreeRefusals(t *testing.T) {
	dir := TreeEntry{Path: "d", Type: treeDir, Mode: 0o755}
	file := TreeEntry{Path: "d/f", Type: treeFile, Mode: 0o644, Size: 10}
	if tr, err := DecodeTree(treeBytes(dir, file), 1<<20); err != nil || tr.Size != 10 {
		t.Fatalf("good tree: %v %v", tr, err)
	}
	good := treeBytes(dir, file)
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"magic", append([]byte("FRYTREE0"), good[8:]...), "bad magic"},
		{"short", good[:10], "too short"},
		{"truncated", good[:len(good)-1], "truncated"},
		{"trailing", append(append([]byte(nil), good...), 0), "trailing"},
		{"count", append(append([]byte(nil), good[:8]...), 0xff, 0xff, 0xff, 0xff), "over limit"},
		{"traversal", treeBytes(TreeEntry{Path: "../x", Type: treeFile}), "path traversal"},
		{"absolute", treeBytes(TreeEntry{Path: "/etc/x", Type: treeFile}), "absolute"},
		{"unclean", treeBytes(dir, TreeEntry{Path: "d/./f", Type: treeFile}), "not clean"},
		{"duplicate", treeBytes(dir, file, file), "listed twice"},
		{"orphan", treeBytes(file), "parent is not a directory"},
		{"parent file", treeBytes(TreeEntry{Path: "d", Type: treeFile}, file), "parent is not a directory"},
		{"mode", treeBytes(TreeEntry{Path: "f", Type: treeFile, Mode: 0o4755}), "beyond 0777"},
		{"size", treeBytes(TreeEntry{Path: "f", Type: treeFile, Size: 2 << 20}), "over the remaining limit"},
		{"sum", treeBytes(TreeEntry{Path: "f", Type: treeFile, Size: 1 << 20}, TreeEntry{Path: "g", Type: treeFile, Size: 1}), "over the remaining limit"},
		{"negative", treeBytes(TreeEntry{Path: "f", Type: treeFile, Size: -1}), "over the remaining limit"},
		{"dir size", treeBytes(TreeEntry{Path: "d", Type: treeDir, Size: 3}), "has size"},
		{"link out", treeBytes(TreeEntry{Path: "l", Type: treeSymlink, Target: "../../etc/passwd"}), "outside"},
		{"link abs", treeBytes(TreeEntry{Path: "l", Type: treeSymlink, Target: "/etc/passwd"}), "absolute"},
		{"link chain", treeBytes(TreeEntry{Path: "a", Type: treeDir, Mode: 0o755}, TreeEntry{Path: "a/up", Type: treeSymlink, Target: ".."},
			TreeEntry{Path: "x", Type: treeSymlink, Target: "a/up/../../etc/passwd"}), "goes through the symlink"},
		{"link chain listed first", treeBytes(TreeEntry{Path: "x", Type: treeSymlink, Target: "a/up/../y"}, TreeEntry{Path: "a", Type: treeDir, Mode: 0o755},
			TreeEntry{Path: "a/up", Type: treeSymlink, Target: ".."}), "goes through the symlink"},
		{"target on file", treeBytes(TreeEntry{Path: "f", Type: treeFile, Target: "x"}), "only a symlink"},
		{"device", treeBytes(TreeEntry{Path: "c", Type: 'c'}), "not accepted"},
	} {
		if _, err := DecodeTree(c.b, 1<<20); !errors.Is(err, cas.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalid with %q", c.name, err, c.want)
		}
	}
}

// treeStream builds what a tree sender writes: HELLO, TREE, then frames.
func treeStream(tree []byte, frames func(w *frameWriter)) []byte {
	var buf bytes.Buffer
	w := newFrameWriter(&buf, nil)
	w.frame(msgHello, encodeHello(Header{ID: "h", Name: "ckpt", Kind: KindTree}))
	w.frame(msgTree, tree)
	if frames != nil {
		frames(w)
	}
	w.Flush()
	return buf.Bytes()
}

func segFrame(w *frameWriter, file uint32, off int64, data []byte) {
	x, _ := cas.BuildIndex(bytes.NewReader(data), cas.IndexOptions{Chunking: cas.CDC})
	var b bytes.Buffer
	var hdr [segHdrLen]byte
	binary.BigEndian.PutUint32(hdr[:], file)
	binary.BigEndian.PutUint64(hdr[4:], uint64(off))
	b.Write(hdr[:])
	cas.EncodeIndex(&b, x)
	w.frame(msgSeg, b.Bytes())
}

func dataFrame(w *frameWriter, file uint32, off int64, data []byte) {
	var hdr [segHdrLen]byte
	binary.BigEndian.PutUint32(hdr[:], file)
	binary.BigEndian.PutUint64(hdr[4:], uint64(off))
	w.frame(msgData, hdr[:], data)
}

// A receiver refuses tree streams that do not follow the protocol, and
// commits nothing.
func TestReceiverRejectsHostileTrees(t *testing.T) {
	tree := treeBytes(TreeEntry{Path: "a", Type: treeFile, Mode: 0o600, Size: 100}, TreeEntry{Path: "b", Type: treeFile, Mode: 0o600, Size: 10})
	data := randBytes(100, 50)
	for _, c := range []struct {
		name   string
		raw    bool
		frames func(w *frameWriter)
		want   string
	}{
		{"bad tree", false, nil, ""},
		{"seg of the wrong file", false, func(w *frameWriter) { segFrame(w, 1, 0, data[:10]) }, "out of order"},
		{"seg at the wrong offset", false, func(w *frameWriter) { segFrame(w, 0, 50, data[:50]) }, "out of order"},
		{"seg past the file's end", false, func(w *frameWriter) { segFrame(w, 0, 0, append(data, 1)) }, "the file has 100"},
		{"seg of a directory entry", false, func(w *frameWriter) { segFrame(w, 7, 0, data) }, "out of order"},
		{"chunk before any seg", false, func(w *frameWriter) { w.frame(msgChunk, []byte{0, 0, 0, 0, 0, 1}) }, "no piece waiting"},
		{"done before the files", false, func(w *frameWriter) { w.frame(msgDone) }, "DONE before all of"},
		{"data of the wrong file", true, func(w *frameWriter) { dataFrame(w, 1, 0, data[:10]) }, "out of order"},
		{"data past the file's end", true, func(w *frameWriter) { dataFrame(w, 0, 0, append(data, 1)) }, "the file has 100"},
		{"data twice", true, func(w *frameWriter) { dataFrame(w, 0, 0, data[:60]); dataFrame(w, 0, 0, data[:40]) }, "out of order"},
		{"data cut", true, func(w *frameWriter) { dataFrame(w, 0, 0, data[:60]) }, "connection closed"},
		{"done early", true, func(w *frameWriter) { dataFrame(w, 0, 0, data); w.frame(msgDone) }, "DONE before all of \"b\""},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest"),
				Fresh: func(Header) bool { return c.raw }, Logger: slog.New(slog.DiscardHandler)}
			b := treeStream(tree, c.frames)
			if c.name == "bad tree" {
				b = treeStream(treeBytes(TreeEntry{Path: "../x", Type: treeFile}), nil)
				c.want = "path traversal"
			}
			_, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(b)})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v, want an error with %q", err, c.want)
			}
			if _, err := os.Stat(filepath.Join(root, "dest", "ckpt")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("something was committed")
			}
			onlyStaging(t, root)
		})
	}
}

func FuzzDecodeTree(f *testing.F) {
	f.Add(treeBytes(TreeEntry{Path: "d", Type: treeDir, Mode: 0o755}, TreeEntry{Path: "d/f", Type: treeFile, Mode: 0o644, Size: 10}, TreeEntry{Path: "l", Type: treeSymlink, Target: "d/f"}))
	f.Add(treeBytes(TreeEntry{Path: "../x", Type: treeFile}))
	f.Add([]byte("FRYTREE1\x00\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := DecodeTree(b, 1<<30)
		if err != nil {
			if !errors.Is(err, cas.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		var sum int64
		for _, e := range tr.Entries {
			if ValidRelPath(e.Path) != nil || e.Mode&^0o777 != 0 || e.Size < 0 {
				t.Fatalf("accepted %+v", e)
			}
			sum += e.Size
		}
		if sum != tr.Size || sum > 1<<30 {
			t.Fatalf("size %d, entries add to %d", tr.Size, sum)
		}
		// What decodes encodes back to the same bytes.
		if !bytes.Equal(encodeTree(tr), b) {
			t.Fatal("re-encoding differs")
		}
	})
}

// A tree stream through the receiver never commits outside its
// destination (the tree variant of FuzzReceiverStream).
func FuzzReceiverTreeStream(f *testing.F) {
	tree := treeBytes(TreeEntry{Path: "a", Type: treeFile, Mode: 0o600, Size: 100})
	data := randBytes(100, 51)
	f.Add(treeStream(tree, func(w *frameWriter) { dataFrame(w, 0, 0, data); w.frame(msgDone) }), true)
	f.Add(treeStream(tree, func(w *frameWriter) { segFrame(w, 0, 0, data) }), false)
	f.Fuzz(func(t *testing.T, b []byte, raw bool) {
		root := t.TempDir()
		rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest"),
			Limits: cas.DecodeLimits{MaxEntries: 1 << 12, MaxFileSize: 1 << 24},
			Fresh:  func(Header) bool { return raw }, Logger: slog.New(slog.DiscardHandler)}
		res, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(b)})
		if err == nil && !strings.HasPrefix(res.Path, filepath.Join(root, "dest")+string(filepath.Separator)) {
			t.Fatalf("committed outside the destination: %s", res.Path)
		}
	})
}

// A sender keeps the chunks it sent even when the directory goes as soon
// as the receiver has committed (the agent removes a moved task's image):
// it holds the files open.
func TestTreeSenderKeepsAfterTheDirectoryGoes(t *testing.T) {
	for _, raw := range []bool{false, true} {
		src := checkpointDir(t, 33)
		rc := newReceiver(t, nil)
		rc.Fresh = func(Header) bool { return raw }
		addr, out := listen(t, rc)
		store := openStore(t)
		res, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "k", Name: "ckpt", Keep: store, KeepAs: "image-k",
			Progress: func(p Progress) {
				if p.Phase == PhaseComplete {
					os.RemoveAll(src)
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		if r := <-out; r.err != nil {
			t.Fatal(r.err)
		}
		if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("the directory is still there")
		}
		x, err := store.Pinned("image-k")
		if err != nil || res.Kept == 0 || x.Size != res.Index.Size || x.Root() != res.Index.Root() {
			t.Fatalf("raw %v: kept %d chunks, pin %v (%v), sent index of %d bytes", raw, res.Kept, x, err, res.Index.Size)
		}
	}
}
