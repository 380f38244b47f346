package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/ferrycluster/ferry/cas"
)

func randBytes(n int, seed uint64) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

type received struct {
	res ReceiveResult
	err error
}

// listen runs rc on a real TCP listener on 127.0.0.1 and returns its
// address and the outcomes of the transfers it serves.
func listen(t *testing.T, rc *Receiver) (string, chan received) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan received, 64)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				res, err := rc.Serve(ctx, c)
				out <- received{res, err}
			}()
		}
	}()
	return ln.Addr().String(), out
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newReceiver(t *testing.T, store *cas.Store) *Receiver {
	dir := t.TempDir()
	return &Receiver{StagingDir: filepath.Join(dir, "staging"), DestDir: filepath.Join(dir, "dest"), Store: store}
}

func openStore(t *testing.T) *cas.Store {
	s, err := cas.Open(t.TempDir(), cas.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// image makes a disk-image-like file: random blocks, zero runs, repeats.
func image(t *testing.T, blocks int, seed uint64) (string, []byte) {
	data := randBytes(blocks*4096+777, seed)
	for b := 0; b < blocks; b += 7 {
		clear(data[b*4096 : min(len(data), (b+3)*4096)])
	}
	copy(data[4096:8192], data[20*4096:21*4096])
	p := filepath.Join(t.TempDir(), "image.raw")
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func TestSendFileOverTCP(t *testing.T) {
	rc := newReceiver(t, nil)
	addr, out := listen(t, rc)
	src, data := image(t, 200, 1)
	var reports []Progress
	res, err := SendFile(context.Background(), dial(t, addr), src, SendOptions{ID: "t1", Name: "images/a.raw", Compress: true,
		Progress: func(p Progress) { reports = append(reports, p) }})
	if err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	got, err := os.ReadFile(filepath.Join(rc.DestDir, "images", "a.raw"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("rebuilt file differs: %v", err)
	}
	st := res.Index.Stats()
	if res.ChunksSent != st.UniqueChunks || r.res.Received != st.UniqueChunks || res.BytesSent != st.UniqueBytes {
		t.Fatalf("sent %d chunks (%d bytes), index has %d unique (%d bytes)", res.ChunksSent, res.BytesSent, st.UniqueChunks, st.UniqueBytes)
	}
	if res.BytesSent >= int64(len(data)) || st.HoleBytes == 0 {
		t.Fatalf("holes were sent: %d of %d bytes", res.BytesSent, len(data))
	}
	fi, _ := os.Stat(r.res.Path)
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640", fi.Mode().Perm())
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks >= int64(len(data)) {
		t.Fatalf("rebuilt file is not sparse: %d bytes allocated for %d", blocks, len(data))
	}
	if len(reports) < 3 || reports[len(reports)-1].Phase != PhaseComplete || reports[len(reports)-1].Done != st.UniqueBytes {
		t.Fatalf("progress reports %+v", reports)
	}
	if left, _ := os.ReadDir(rc.StagingDir); len(left) != 0 {
		t.Fatalf("staging not cleaned: %v", left)
	}
}

// Only the chunks the receiver's store lacks cross the wire; a chunk that
// is corrupt in the store is detected, removed and fetched again.
func TestOnlyMissingChunksAndCorruptRefetched(t *testing.T) {
	store := openStore(t)
	rc := newReceiver(t, store)
	rc.Keep = true
	addr, out := listen(t, rc)
	srcA, dataA := image(t, 100, 2)
	if _, err := SendFile(context.Background(), dial(t, addr), srcA, SendOptions{ID: "a", Name: "a.raw"}); err != nil {
		t.Fatal(err)
	}
	rA := <-out
	if rA.err != nil {
		t.Fatal(rA.err)
	}
	// B = A with 5 blocks changed.
	dataB := append([]byte(nil), dataA...)
	for _, b := range []int{2, 10, 30, 50, 90} {
		copy(dataB[b*4096:(b+1)*4096], randBytes(4096, uint64(1000+b)))
	}
	srcB := filepath.Join(t.TempDir(), "b.raw")
	os.WriteFile(srcB, dataB, 0o600)
	// Corrupt one chunk B shares with A in the receiver's store: the store
	// holds A's chunks by a link to the received file, so in that file.
	shared := cas.Sum(dataB[60*4096 : 61*4096])
	f, err := os.OpenFile(rA.res.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{dataA[61*4096-1] ^ 1}, 61*4096-1)
	f.Close()

	res, err := SendFile(context.Background(), dial(t, addr), srcB, SendOptions{ID: "b", Name: "b.raw"})
	if err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	if res.ChunksSent != 6 || r.res.Refetched != 1 {
		t.Fatalf("sent %d chunks (want 5 changed + 1 corrupt), refetched %d", res.ChunksSent, r.res.Refetched)
	}
	if got, _ := os.ReadFile(r.res.Path); !bytes.Equal(got, dataB) {
		t.Fatal("rebuilt B differs")
	}
	if _, err := store.Get(shared, nil); err != nil {
		t.Fatalf("refetched chunk not back in the store: %v", err)
	}
}

// cutConn passes budget bytes of writes, then breaks the connection.
type cutConn struct {
	net.Conn
	budget int
}

func (c *cutConn) Write(p []byte) (int, error) {
	if len(p) > c.budget {
		n, _ := c.Conn.Write(p[:c.budget])
		c.budget = 0
		c.Conn.Close()
		return n, errors.New("connection cut by test")
	}
	c.budget -= len(p)
	return c.Conn.Write(p)
}

func TestInterruptedTransferResumes(t *testing.T) {
	rc := newReceiver(t, nil)
	addr, out := listen(t, rc)
	src, data := image(t, 600, 3)
	x, err := cas.IndexFile(src, cas.IndexOptions{Chunking: cas.Fixed})
	if err != nil {
		t.Fatal(err)
	}
	unique := x.Stats().UniqueChunks
	// Cut the connection after about half the chunk bytes.
	budget := int(x.EncodedLen()) + unique*(4096+10)/2
	_, err = SendFile(context.Background(), &cutConn{Conn: dial(t, addr), budget: budget}, src, SendOptions{ID: "resume-me", Name: "r.raw", Index: x})
	if err == nil {
		t.Fatal("send through a cut connection succeeded")
	}
	first := <-out
	if !errors.Is(first.err, ErrTruncated) {
		t.Fatalf("receiver error %v, want ErrTruncated", first.err)
	}
	got1 := first.res.Received
	if got1 == 0 || got1 >= unique {
		t.Fatalf("first attempt delivered %d of %d chunks", got1, unique)
	}
	if _, err := os.Stat(filepath.Join(rc.DestDir, "r.raw")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("partial file visible at the destination")
	}
	// Junk in a hole of the partial file (never written by a transfer) is
	// zeroed on resume: the v2 check does not re-read the rebuilt file.
	offs, junked := x.Offsets(), false
	for i, e := range x.Entries {
		if e.Hole {
			f, err := os.OpenFile(filepath.Join(rc.StagingDir, "resume-me.part"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("junk"), offs[i]+int64(e.Length)/2)
			f.Close()
			junked = true
			break
		}
	}
	if !junked {
		t.Fatal("test image has no hole")
	}
	res, err := SendFile(context.Background(), dial(t, addr), src, SendOptions{ID: "resume-me", Name: "r.raw", Index: x})
	if err != nil {
		t.Fatal(err)
	}
	second := <-out
	if second.err != nil {
		t.Fatal(second.err)
	}
	if res.ChunksSent != unique-got1 || second.res.Resumed != got1 {
		t.Fatalf("resume sent %d chunks, want %d (%d arrived before the cut; receiver found %d)", res.ChunksSent, unique-got1, got1, second.res.Resumed)
	}
	if got, _ := os.ReadFile(second.res.Path); !bytes.Equal(got, data) {
		t.Fatal("resumed file differs")
	}
}

func TestConcurrentTransfers(t *testing.T) {
	rc := newReceiver(t, openStore(t))
	rc.Keep = true
	addr, out := listen(t, rc)
	const n = 4
	var wg sync.WaitGroup
	datas := make([][]byte, n)
	for i := 0; i < n; i++ {
		src, data := image(t, 150, uint64(10+i))
		datas[i] = data
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if _, err := SendFile(context.Background(), c, src, SendOptions{ID: "c" + string(rune('0'+i)), Name: "c" + string(rune('0'+i))}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if r := <-out; r.err != nil {
			t.Fatal(r.err)
		}
		got, _ := os.ReadFile(filepath.Join(rc.DestDir, "c"+string(rune('0'+i))))
		if !bytes.Equal(got, datas[i]) {
			t.Fatalf("transfer %d differs", i)
		}
	}
}

func TestDirTransfer(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub", "deep"), 0o750)
	os.WriteFile(filepath.Join(src, "state.bin"), randBytes(300<<10, 20), 0o600)
	os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "deep", "empty"), nil, 0o644)
	os.Symlink("sub/run.sh", filepath.Join(src, "link"))
	rc := newReceiver(t, openStore(t))
	rc.Keep = true
	addr, out := listen(t, rc)
	// An older checkpoint at the destination is replaced whole.
	os.MkdirAll(filepath.Join(rc.DestDir, "ckpt", "old-only"), 0o755)
	if _, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "d1", Name: "ckpt"}); err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	dst := filepath.Join(rc.DestDir, "ckpt")
	for _, c := range []struct {
		rel  string
		mode os.FileMode
	}{{"state.bin", 0o600}, {"sub/run.sh", 0o755}, {"sub/deep/empty", 0o644}, {"sub", 0o750 | os.ModeDir}} {
		fi, err := os.Stat(filepath.Join(dst, c.rel))
		if err != nil || fi.Mode() != c.mode {
			t.Fatalf("%s: %v %v, want %v", c.rel, fi.Mode(), err, c.mode)
		}
	}
	a, _ := os.ReadFile(filepath.Join(src, "state.bin"))
	b, _ := os.ReadFile(filepath.Join(dst, "state.bin"))
	if !bytes.Equal(a, b) {
		t.Fatal("state.bin differs")
	}
	if l, _ := os.Readlink(filepath.Join(dst, "link")); l != "sub/run.sh" {
		t.Fatalf("link -> %q", l)
	}
	if _, err := os.Stat(filepath.Join(dst, "old-only")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("old checkpoint content survived")
	}
	// A second checkpoint that differs a little sends little (FastCDC).
	f, _ := os.OpenFile(filepath.Join(src, "state.bin"), os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 1000)
	f.Close()
	res, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "d2", Name: "ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-out; r.err != nil {
		t.Fatal(r.err)
	}
	if res.BytesSent > 100<<10 {
		t.Fatalf("second checkpoint sent %d bytes of %d", res.BytesSent, res.Index.Size)
	}
}
