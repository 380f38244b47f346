package transfer

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		if _, err := SendDir(context.Background(), a, src, "", SendOptions{ID: "x", Name: "ckpt"}); err == nil {
			t.Fatal("a send whose receiver hung up succeeded")
		}
		a.Close()
		if open := openUnder(t, src); len(open) != 0 {
			t.Fatalf("after a failed send, open: %v", open)
		}
	}
}
