package agent

import (
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
)

// moveDir sends dir from node from to node to on a real TCP connection with
// the agents' image settings (keepSent, keepReceivedCheckpoint) and returns
// what crossed and where it landed, once the chunks are kept at both ends.
func moveDir(t *testing.T, from, to *node, id, dir string) (transfer.SendResult, transfer.ReceiveResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dest := filepath.Join(t.TempDir(), "image")
	type out struct {
		res transfer.ReceiveResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- out{err: err}
			return
		}
		defer c.Close()
		rc := to.agent.keepReceivedCheckpoint(&transfer.Receiver{StagingDir: filepath.Join(to.dataDir, "run", "cas-staging"),
			Dest: func(transfer.Header, *cas.Index) (string, error) { return dest, nil }}, id)
		res, err := rc.Serve(ctx, c)
		done <- out{res, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	from.agent.waitKept(id) // as sendImageCAS does
	sent, err := transfer.SendDir(ctx, c, dir, from.agent.keepSent(transfer.SendOptions{ID: id + "-move", Name: "image"}, id))
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	// Both sides keep the chunks after the transfer, in the background.
	to.agent.waitKept(id)
	from.agent.waitKept(id)
	return sent, r.res
}

// A task's image goes A → B, runs there and changes a little, and comes
// back B → A: both agents kept the first image's chunks, so the return trip
// sends only the changed ones.
func TestSecondMoveOfSimilarImageSendsOnlyChanges(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), nil)

	img := t.TempDir()
	mem := make([]byte, 8<<20)
	rand.Read(mem)
	if err := os.WriteFile(filepath.Join(img, "memory"), mem, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "counter"), []byte("41"), 0o600); err != nil {
		t.Fatal(err)
	}
	first, atB := moveDir(t, a, b, "vm7", img)

	// At B the task dirties a few pages and is moved back.
	back := atB.Path
	for _, off := range []int{1 << 20, 3 << 20, 6 << 20} {
		rand.Read(mem[off : off+4096])
	}
	if err := os.WriteFile(filepath.Join(back, "memory"), mem, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(back, "counter"), []byte("42"), 0o600); err != nil {
		t.Fatal(err)
	}
	second, atA := moveDir(t, b, a, "vm7", back)

	if got, _ := os.ReadFile(filepath.Join(atA.Path, "memory")); string(got) != string(mem) {
		t.Fatal("image back at A differs")
	}
	t.Logf("first move: %d bytes in %d chunks; return trip: %d bytes in %d chunks, %d chunks from A's store",
		first.BytesSent, first.ChunksSent, second.BytesSent, second.ChunksSent, atA.FromStore)
	if first.BytesSent < 8<<20 || second.BytesSent*10 > first.BytesSent {
		t.Fatalf("return trip sent %d bytes, first move %d: want less than a tenth", second.BytesSent, first.BytesSent)
	}
	for _, n := range []*node{a, b} {
		st := n.agent.chunkStore()
		if x, err := st.Pinned(imagePin("vm7")); err != nil || x.Root() != second.Index.Root() {
			t.Fatalf("%s: pin of the last image: %v", n.name, err)
		}
		if st.Held() > chunkStoreMaxBytes {
			t.Fatalf("%s: store holds %d bytes", n.name, st.Held())
		}
	}
}

// A real move through the agents' API (suspend on A, resume on B from A's
// image) keeps the image's chunks at both ends.
func TestResumeFromPeerKeepsImageChunks(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), nil)
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: counterSpec("kept", nil)}); err != nil {
		t.Fatal(err)
	}
	a.waitCounter(ctx, "kept", 2)
	if _, err := a.c.Suspend(ctx, "kept", 1); err != nil {
		t.Fatal(err)
	}
	if err := a.c.Grant(ctx, "kept", api.GrantRequest{Epoch: 1, To: b.addr}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Resume(ctx, "kept", api.ResumeRequest{Epoch: 1, From: a.addr}); err != nil {
		t.Fatal(err)
	}
	// B received the image without an index (it had none of its chunks)
	// and keeps its chunks after the commit; A keeps them once B released
	// the image (before B's resume returned).
	b.agent.waitKept("kept")
	a.agent.waitKept("kept")
	for _, n := range []*node{a, b} {
		if _, err := n.agent.chunkStore().Pinned(imagePin("kept")); err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		// Kept by reference: the image's files were linked into the store
		// before the agent removed them, nothing was copied into a pack.
		ents, err := os.ReadDir(filepath.Join(n.agent.chunkStore().Dir(), "blobs"))
		if err != nil || len(ents) == 0 {
			t.Fatalf("%s: no blobs (%v)", n.name, err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "link-") {
				t.Fatalf("%s: blob %s, want only links", n.name, e.Name())
			}
		}
	}
	if err := b.c.Stop(ctx, "kept", 2); err != nil {
		t.Fatal(err)
	}
}

func TestImagePinNames(t *testing.T) {
	long := string(make([]byte, 0, 128))
	for len(long) < 128 {
		long += "x"
	}
	for _, id := range []string{"a", "job-1.b_c", long} {
		if err := cas.ValidName(imagePin(id)); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	if imagePin("a") == imagePin("b") || imagePin(long) == imagePin(long+"y") {
		t.Fatal("pin names collide")
	}
}

// Two keeps of one task never run at once: the later one (the newer
// image) cancels the earlier and starts when it has ended; waitKept waits
// for both.
func TestKeepsOfOneTaskDoNotOverlap(t *testing.T) {
	t.Parallel()
	a := startNode(t, newTestCA(t), "node-a", processDrivers(t), nil)
	first := make(chan struct{})
	firstEnd := make(chan error, 1)
	a.agent.background("t1")(func(ctx context.Context) {
		close(first)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // still running after its cancel
		firstEnd <- ctx.Err()
	})
	<-first
	second := make(chan bool, 1)
	a.agent.background("t1")(func(ctx context.Context) {
		select {
		case <-firstEnd:
			second <- ctx.Err() == nil
		default:
			second <- false // started while the first still ran
		}
	})
	a.agent.waitKept("t1")
	select {
	case ok := <-second:
		if !ok {
			t.Fatal("the second keep overlapped the first, or was cancelled")
		}
	default:
		t.Fatal("waitKept returned before the second keep ran")
	}
}

// A received checkpoint's chunks are hard links to its committed files
// when the store shares the staging dir's filesystem, so the receiver
// needs its size free once, not twice: a replica push claiming 64 MiB is
// taken by a node with 96 MiB free, and one claiming 128 MiB is refused.
func TestReplicaNeedsItsSizeOnceWhenChunksAreLinked(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), func(c *Config) {
		c.FreeSpace = func(string) (int64, error) { return 96 << 20, nil }
	})
	if n := b.agent.receiveCopies(); n != 1 {
		t.Fatalf("node-b's store and staging dir share a filesystem, yet it counts %d copies", n)
	}
	m := replicaMeta{Replica: api.Replica{Task: "once", Epoch: 1, Seq: 1, Holder: a.addr, Bytes: 64 << 20}, Driver: "process", Spec: counterSpec("once", nil)}
	if _, err := a.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "1")); err != nil {
		t.Fatalf("push of a 64 MiB replica to a node with 96 MiB free: %v", err)
	}
	waitReplica(ctx, t, b, "once", 1, 1)
	m.Seq, m.Bytes = 2, 128<<20
	_, err := a.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "2"))
	wantKind(t, "push of a 128 MiB replica to a node with 96 MiB free", err, driver.ErrInsufficient)
}
