package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cas"
)

// openUnder lists this process's open files under dir.
func openUnder(t *testing.T, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fd := range fds {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(p, dir+string(filepath.Separator)) {
			out = append(out, p)
		}
	}
	return out
}

// A send that fails while its files are being indexed ahead of the stream
// leaves none of them open, and its indexing has stopped when it returns.
func TestTreeSendClosesFilesOnError(t *testing.T) {
	src := t.TempDir()
	for i := range 6 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), randBytes(2<<20, uint64(i+1)), 0o600)
	}
	for range 10 {
		a, b := net.Pipe()
		go func() {
			// The receiver answers MODE index, reads what comes, and hangs
			// up before any WANT.
			go io.Copy(io.Discard, b)
			w := newFrameWriter(b, nil)
			w.frame(msgMode, []byte{modeIndex})
			w.Flush()
			time.Sleep(20 * time.Millisecond)
			b.Close()
		}()
		if _, err := SendDir(context.Background(), a, src, SendOptions{ID: "x", Name: "ckpt"}); err == nil {
			t.Fatal("a send whose receiver hung up succeeded")
		}
		a.Close()
		if open := openUnder(t, src); len(open) != 0 {
			t.Fatalf("after a failed send, open: %v", open)
		}
	}
}

// TestMakeTreeReportsLocalFailuresAsLocal: a filesystem error while the
// receiver lays a tree out is this node's (no space, no permission, a
// leftover in the way), not the sender's fault, so it is not ErrInvalid.
func TestMakeTreeReportsLocalFailuresAsLocal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tree")
	if err := os.MkdirAll(filepath.Join(dir, "f"), 0o700); err != nil {
		t.Fatal(err)
	}
	tr := &Tree{Entries: []TreeEntry{{Path: "f", Type: treeFile, Mode: 0o600, Size: 1}}}
	err := makeTree(dir, tr, true)
	if err == nil || errors.Is(err, cas.ErrInvalid) || !errors.Is(err, syscall.EISDIR) {
		t.Fatalf("a directory left where a file goes: got %v, want a local EISDIR, not ErrInvalid", err)
	}
}
