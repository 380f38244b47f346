package process

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// makeImage commits a checkpoint with the given files at dir.
func makeImage(t *testing.T, dir string, files map[string][]byte) Manifest {
	t.Helper()
	staging := t.TempDir()
	for name, b := range files {
		p := filepath.Join(staging, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := sealStaging(staging, Manifest{TaskID: "img", Epoch: 1, Mode: ModeStop, CreatedAt: time.Unix(0, 0).UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if err := commitDir(staging, dir); err != nil {
		t.Fatal(err)
	}
	return m
}

// move runs SendImage and ReceiveImage over a loopback TCP connection.
func move(t *testing.T, src, dst string, opts ReceiveOptions) (sendErr, recvErr error) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	return loopback(func(c net.Conn) error {
		_, err := ReceiveImage(ctx, c, dst, opts)
		return err
	}, func(c net.Conn) error { return SendImage(ctx, c, src) })
}

// loopback runs recv on the accepted end and send on the dialled end of a
// loopback TCP connection and returns their errors once both are done
// (a listen or dial error is the sender's).
func loopback(recv, send func(net.Conn) error) (sendErr, recvErr error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err, nil
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- recv(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		return err, <-done
	}
	sendErr = send(c)
	c.Close()
	return sendErr, <-done
}

func TestImageStreamMovesAnImage(t *testing.T) {
	src := filepath.Join(t.TempDir(), "img")
	big := bytes.Repeat([]byte("ferry"), 300000)
	makeImage(t, src, map[string][]byte{"state": []byte("42\n"), "sub/big": big, "empty": nil})
	dst := filepath.Join(t.TempDir(), "moved")
	if err := os.Mkdir(dst, 0o755); err != nil { // an existing empty dir is fine
		t.Fatal(err)
	}
	if se, re := move(t, src, dst, ReceiveOptions{}); se != nil || re != nil {
		t.Fatalf("move: send %v, receive %v", se, re)
	}
	m, err := VerifyImage(dst)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "sub/big"))
	if !bytes.Equal(got, big) || m.Bytes != int64(len(big)+3) {
		t.Errorf("moved image differs: %d bytes, manifest %+v", len(got), m)
	}
	// Nothing but the image next to dst (no partial directory left).
	ents, _ := os.ReadDir(filepath.Dir(dst))
	if len(ents) != 1 {
		t.Errorf("leftovers next to the destination: %v", ents)
	}
}

// A checkpoint larger than the destination's free space is refused before
// any file byte travels. Space is injected here (a statfs answer of 1 MiB);
// TestImageStreamRefusedOnSmallTmpfs uses a real small filesystem.
func TestImageStreamRefusesWithoutSpace(t *testing.T) {
	src := filepath.Join(t.TempDir(), "img")
	makeImage(t, src, map[string][]byte{"state": make([]byte, 4<<20)})
	dst := filepath.Join(t.TempDir(), "moved")
	var asked string
	space := func(path string) (int64, error) { asked = path; return 1 << 20, nil }
	se, re := move(t, src, dst, ReceiveOptions{Space: space})
	// The refusal names its kind, as the live stream's does.
	if !errors.Is(se, ErrRefused) || !errors.Is(se, driver.ErrInsufficient) {
		t.Errorf("sender: err = %v, want ErrRefused and ErrInsufficient", se)
	}
	if !errors.Is(re, driver.ErrInsufficient) {
		t.Errorf("receiver: err = %v, want ErrInsufficient", re)
	}
	if asked != filepath.Dir(dst) {
		t.Errorf("space asked for %q, want %q", asked, filepath.Dir(dst))
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused image created %s", dst)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 0 {
		t.Errorf("refused image left files: %v", ents)
	}
	// The check an agent makes before a move.
	if err := CheckFreeSpace("/", 1<<62, nil); !errors.Is(err, driver.ErrInsufficient) {
		t.Errorf("CheckFreeSpace(1 EiB) = %v", err)
	}
	if err := CheckFreeSpace(t.TempDir(), 1024, nil); err != nil {
		t.Errorf("CheckFreeSpace(1 KiB) = %v", err)
	}
}

func TestImageStreamRefusedOnSmallTmpfs(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s); TestImageStreamRefusesWithoutSpace covers the check with injected space", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	src := filepath.Join(t.TempDir(), "img")
	makeImage(t, src, map[string][]byte{"state": make([]byte, 3<<20)})
	dst := filepath.Join(mnt, "moved")
	se, re := move(t, src, dst, ReceiveOptions{})
	if !errors.Is(se, ErrRefused) || !errors.Is(se, driver.ErrInsufficient) || !errors.Is(re, driver.ErrInsufficient) {
		t.Fatalf("3 MiB into a 2 MiB tmpfs: send %v, receive %v", se, re)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Errorf("refused image left files on the tmpfs: %v", ents)
	}
	// A small one fits.
	small := filepath.Join(t.TempDir(), "small")
	makeImage(t, small, map[string][]byte{"state": make([]byte, 64<<10)})
	if se, re := move(t, small, dst, ReceiveOptions{}); se != nil || re != nil {
		t.Fatalf("64 KiB into a 2 MiB tmpfs: send %v, receive %v", se, re)
	}
}

func TestResumeRefusesIncompleteImage(t *testing.T) {
	d := newTestDriver(t, Config{})
	ctx := ctxT(t, time.Minute)
	img := filepath.Join(t.TempDir(), "img")
	makeImage(t, img, map[string][]byte{"counter": []byte("5\n")})
	// Truncated file: a partial copy.
	if err := os.WriteFile(filepath.Join(img, "counter"), []byte("5"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := d.Resume(ctx, jobSpec("img", "counter", nil), img)
	if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "manifest says 2") {
		t.Errorf("resume from a truncated image: %v", err)
	}
	// Another task's checkpoint.
	other := filepath.Join(t.TempDir(), "other")
	makeImage(t, other, map[string][]byte{"counter": []byte("5\n")})
	if err := d.Resume(ctx, jobSpec("someone-else", "counter", nil), other); !errors.Is(err, ErrBadImage) {
		t.Errorf("resume from another task's image: %v", err)
	}
	if list, _ := d.List(ctx); len(list) != 0 {
		t.Errorf("failed resumes left tasks: %+v", list)
	}
}

func TestImageStreamRejectsGarbage(t *testing.T) {
	for name, in := range map[string]string{
		"short":      "FERRY",
		"bad magic":  "NOTANIMG\x00\x00\x00\x02{}",
		"huge":       "FERRYIMG\xff\xff\xff\xff",
		"bad json":   "FERRYIMG\x00\x00\x00\x03{x}",
		"bad format": "FERRYIMG\x00\x00\x00\x0d{\"format\":1}",
	} {
		if _, err := readStreamHeader(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	h := `{"format":"ferry-image-stream/1","manifest":{"format":"ferry-checkpoint/1","task_id":"a","epoch":1,"mode":"stop","created_at":"2026-01-01T00:00:00Z","took":0,"bytes":2,"files":[{"path":"../x","size":2}]}}`
	if _, err := parseStreamHeader([]byte(h)); err == nil || !strings.Contains(err.Error(), "../x") {
		t.Errorf("path escape accepted: %v", err)
	}
	h = strings.Replace(h, `"../x","size":2}`, `"a","size":1},{"path":"a/b","size":1}`, 1)
	if _, err := parseStreamHeader([]byte(h)); err == nil || !strings.Contains(err.Error(), "both a file and a directory") {
		t.Errorf("file/dir clash accepted: %v", err)
	}
}

func TestCommitIsAtomicAcrossFailure(t *testing.T) {
	good := filepath.Join(t.TempDir(), "good")
	makeImage(t, good, map[string][]byte{"state": []byte("1")})
	// A staging dir with something that is not a regular file cannot be
	// sealed; the destination is not created.
	staging := t.TempDir()
	if err := os.Symlink("/etc/passwd", filepath.Join(staging, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := sealStaging(staging, Manifest{TaskID: "img", Mode: ModeStop}); err == nil {
		t.Error("symlink sealed into a checkpoint")
	}
	// Committing over a non-empty directory (the last good checkpoint) is
	// refused and leaves it intact.
	s2 := t.TempDir()
	os.WriteFile(filepath.Join(s2, "state"), []byte("2"), 0o644)
	if _, err := sealStaging(s2, Manifest{TaskID: "img", Mode: ModeStop}); err != nil {
		t.Fatal(err)
	}
	if err := commitDir(s2, good); err == nil {
		t.Error("commit replaced a non-empty checkpoint")
	}
	if b, _ := os.ReadFile(filepath.Join(good, "state")); string(b) != "1" {
		t.Errorf("good checkpoint changed: %q", b)
	}
}

// A receiver that refuses while the files travel (its disk filled, a
// write failed) answers its refusal and closes: the sender's next write
// fails, and it reports the refusal with its kind, not "broken pipe".
func TestImageStreamRefusedMidTransfer(t *testing.T) {
	src := filepath.Join(t.TempDir(), "img")
	// Far more than the loopback socket buffers hold, so the sender is
	// still writing when the receiver closes.
	makeImage(t, src, map[string][]byte{"state": make([]byte, 32<<20)})
	for _, c := range []struct {
		err          error
		insufficient bool
	}{
		{fmt.Errorf("receive state: %w", &fs.PathError{Op: "write", Path: "/d/state", Err: syscall.ENOSPC}), true},
		{errors.New("receive state: the disk went read-only"), false},
	} {
		ctx := ctxT(t, time.Minute)
		se, re := loopback(func(conn net.Conn) error {
			if _, err := readStreamHeader(conn); err != nil {
				return err
			}
			if _, err := io.WriteString(conn, "OK\n"); err != nil {
				return err
			}
			if _, err := io.ReadFull(conn, make([]byte, 64<<10)); err != nil {
				return err
			}
			_, err := refuser(conn)(c.err)
			return err
		}, func(conn net.Conn) error { return SendImage(ctx, conn, src) })
		if re != c.err {
			t.Fatalf("receiver: %v", re)
		}
		if !errors.Is(se, ErrRefused) || errors.Is(se, driver.ErrInsufficient) != c.insufficient {
			t.Errorf("%v: sender got %v, want ErrRefused (insufficient %v)", c.err, se, c.insufficient)
		}
		if se == nil || !strings.Contains(se.Error(), strings.TrimPrefix(c.err.Error(), "receive state: ")) {
			t.Errorf("%v: sender's error does not name the receiver's reason: %v", c.err, se)
		}
	}
}
