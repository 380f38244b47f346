package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cas"
)

func TestSameTransferIDTwiceAtOnceIsBusy(t *testing.T) {
	data := randBytes(3*4096, 100)
	x, frames := indexOf(t, data)
	root := t.TempDir()
	rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest")}
	rc.lock("same")
	_, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(senderStream(Header{ID: "same", Name: "f", Kind: KindFile}, x, frames, true))})
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
	rc.unlock("same")
	if _, err := rc.Serve(context.Background(), &memConn{r: bytes.NewReader(senderStream(Header{ID: "same", Name: "f", Kind: KindFile}, x, frames, true))}); err != nil {
		t.Fatal(err)
	}
}

// A directory transfer whose tar tries to escape is refused after the
// digest check, and neither the destination nor anything outside appears.
func TestDirTransferWithTraversalIsRefused(t *testing.T) {
	evil := tarOf(tarEntry{tar.Header{Name: "ok.txt", Typeflag: tar.TypeReg}, "fine"}, tarEntry{tar.Header{Name: "../../evil", Typeflag: tar.TypeReg}, "evil"})
	x, err := cas.BuildIndex(bytes.NewReader(evil), cas.IndexOptions{Chunking: cas.CDC})
	if err != nil {
		t.Fatal(err)
	}
	var frames []chunkFrame
	offs := x.Offsets()
	for i, e := range x.Entries {
		if !e.Hole {
			frames = append(frames, chunkFrame{uint32(i), cas.Raw, evil[offs[i] : offs[i]+int64(e.Length)]})
		}
	}
	root := t.TempDir()
	rc := &Receiver{StagingDir: filepath.Join(root, "staging"), DestDir: filepath.Join(root, "dest")}
	_, err = rc.Serve(context.Background(), &memConn{r: bytes.NewReader(senderStream(Header{ID: "d", Name: "ckpt", Kind: KindDir}, x, frames, true))})
	if !errors.Is(err, cas.ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
	onlyStaging(t, root)
	if _, err := os.Stat(filepath.Join(root, "dest", "ckpt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("destination created")
	}
}

// Cancelling the context unblocks a receiver waiting on a silent peer.
func TestServeStopsOnCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial(t, ln.Addr().String()) // a peer that never speaks
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rc := newReceiver(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := rc.Serve(ctx, s); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// A checkpoint directory transfer cut mid-stream resumes: the tar is packed
// again identically, and the second attempt sends only what did not arrive.
func TestDirTransferResumes(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "state.bin"), randBytes(2<<20, 110), 0o600)
	os.WriteFile(filepath.Join(src, "meta.json"), []byte(`{"step": 42}`), 0o644)
	rc := newReceiver(t, nil)
	addr, out := listen(t, rc)
	c := &cutConn{Conn: dial(t, addr), budget: 1 << 20}
	if _, err := SendDir(context.Background(), c, src, SendOptions{ID: "ck", Name: "ckpt"}); err == nil {
		t.Fatal("send through a cut connection succeeded")
	}
	first := <-out
	if first.err == nil || first.res.Received == 0 {
		t.Fatalf("first attempt: %v, %d chunks", first.err, first.res.Received)
	}
	res, err := SendDir(context.Background(), dial(t, addr), src, SendOptions{ID: "ck", Name: "ckpt"})
	if err != nil {
		t.Fatal(err)
	}
	second := <-out
	if second.err != nil {
		t.Fatal(second.err)
	}
	total := res.Index.Stats().UniqueChunks
	if second.res.Resumed != first.res.Received || res.ChunksSent != total-first.res.Received {
		t.Fatalf("resumed %d (first got %d), sent %d of %d", second.res.Resumed, first.res.Received, res.ChunksSent, total)
	}
	a, _ := os.ReadFile(filepath.Join(src, "state.bin"))
	b, _ := os.ReadFile(filepath.Join(rc.DestDir, "ckpt", "state.bin"))
	if !bytes.Equal(a, b) {
		t.Fatal("state.bin differs")
	}
}

// A sender holding an IndexV1 index (whole-file SHA-256, made before
// IndexV2) still transfers: the receiver checks the whole-file digest by
// hashing the rebuilt file.
func TestIndexV1Transfer(t *testing.T) {
	rc := newReceiver(t, nil)
	addr, out := listen(t, rc)
	src, data := image(t, 100, 7)
	x, err := cas.IndexFile(src, cas.IndexOptions{Chunking: cas.Fixed})
	if err != nil {
		t.Fatal(err)
	}
	v1 := *x
	v1.Version, v1.Digest = cas.IndexV1, cas.Sum(data)
	if _, err := SendFile(context.Background(), dial(t, addr), src, SendOptions{ID: "v1", Name: "v1.raw", Index: &v1}); err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil || r.res.Index.Version != cas.IndexV1 {
		t.Fatalf("receiver: %v, index version %d", r.err, r.res.Index.Version)
	}
	if got, _ := os.ReadFile(r.res.Path); !bytes.Equal(got, data) {
		t.Fatal("rebuilt file differs")
	}
}
