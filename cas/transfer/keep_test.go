package transfer

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// Two nodes with persistent stores: A sends an image to B (B keeps and
// pins what it received, A keeps what it sent). A changed copy then goes
// back B → A, and only its changed chunks cross.
func TestKeptChunksMakeTheReturnTripSmall(t *testing.T) {
	ctx := context.Background()
	storeA, storeB := openStore(t), openStore(t)
	pinAs := func(h Header) string { return "image-" + h.ID }
	rcB := &Receiver{StagingDir: filepath.Join(t.TempDir(), "s"), DestDir: t.TempDir(), Store: storeB, Keep: true, PinAs: pinAs}
	rcA := &Receiver{StagingDir: filepath.Join(t.TempDir(), "s"), DestDir: t.TempDir(), Store: storeA, Keep: true, PinAs: pinAs}
	addrB, outB := listen(t, rcB)
	addrA, outA := listen(t, rcA)

	src, data := image(t, 1000, 21)
	first, err := SendFile(ctx, dial(t, addrB), src, SendOptions{ID: "vm1", Name: "vm1.img", Keep: storeA, KeepAs: "image-vm1"})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-outB; r.err != nil {
		t.Fatal(r.err)
	}
	if first.Kept == 0 || len(storeA.Pins()) != 1 || len(storeB.Pins()) != 1 {
		t.Fatalf("after the first move: sender kept %d chunks; pins A %v, B %v", first.Kept, storeA.Pins(), storeB.Pins())
	}

	// B changes 10 blocks and sends the image back to A.
	changed := append([]byte(nil), data...)
	for i := 0; i < 10; i++ {
		copy(changed[(50+i*90)*4096:], randBytes(4096, uint64(100+i)))
	}
	back := filepath.Join(t.TempDir(), "vm1.img")
	if err := os.WriteFile(back, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	second, err := SendFile(ctx, dial(t, addrA), back, SendOptions{ID: "vm1", Name: "vm1.img", Keep: storeB, KeepAs: "image-vm1"})
	if err != nil {
		t.Fatal(err)
	}
	r := <-outA
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got, _ := os.ReadFile(r.res.Path); string(got) != string(changed) {
		t.Fatal("image rebuilt at A differs")
	}
	if second.ChunksSent > 10 || second.BytesSent*20 > first.BytesSent {
		t.Fatalf("return trip sent %d chunks (%d bytes), first move %d chunks (%d bytes)", second.ChunksSent, second.BytesSent, first.ChunksSent, first.BytesSent)
	}
	if r.res.FromStore == 0 {
		t.Fatal("A found nothing in its store")
	}
	t.Logf("first move %d bytes, return trip %d bytes", first.BytesSent, second.BytesSent)
	// Both stores hold exactly the pinned image's chunks (A re-pinned it).
	if x, err := storeA.Pinned("image-vm1"); err != nil || x.Root() != second.Index.Root() {
		t.Fatalf("A's pin: %v", err)
	}
}
