package transfer

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrycluster/ferry/cas"
)

// A receiver that keeps without a pin name writes no pin and no location
// table (it used to pin and unpin "transfer-ID", two fsynced files for
// nothing, and that pin, the newest, made the trim unpin the store's real
// pins to fit it), yet the next transfer finds the chunks in its store.
func TestKeepWithoutPinNameWritesNoPin(t *testing.T) {
	store, err := cas.Open(t.TempDir(), cas.Options{MaxBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	// A pin the store holds within MaxBytes.
	small := randBytes(32<<10, 4)
	x, _ := cas.BuildIndex(bytes.NewReader(small), cas.IndexOptions{Chunking: cas.Fixed})
	if _, err := store.Keep(context.Background(), "image-kept", bytes.NewReader(small), x); err != nil {
		t.Fatal(err)
	}
	rc := newReceiver(t, store)
	rc.Keep = true
	addr, out := listen(t, rc)
	src, _ := image(t, 64, 3) // 256 KiB, over MaxBytes
	if _, err := SendFile(context.Background(), dial(t, addr), src, SendOptions{ID: "a", Name: "a.raw"}); err != nil {
		t.Fatal(err)
	}
	if r := <-out; r.err != nil {
		t.Fatal(r.err)
	}
	for _, d := range []string{"pins", "locs"} {
		if ents, _ := os.ReadDir(filepath.Join(store.Dir(), d)); len(ents) != 1 || ents[0].Name() != "image-kept" {
			t.Fatalf("%s/ holds %v, want image-kept's only", d, ents)
		}
	}
	if pins := store.Pins(); len(pins) != 1 || pins[0] != "image-kept" {
		t.Fatalf("pins %v, want image-kept only (an unnamed keep trims nothing)", pins)
	}
	res, err := SendFile(context.Background(), dial(t, addr), src, SendOptions{ID: "b", Name: "b.raw"})
	if err != nil {
		t.Fatal(err)
	}
	r := <-out
	if r.err != nil {
		t.Fatal(r.err)
	}
	if res.ChunksSent != 0 || r.res.FromStore == 0 {
		t.Fatalf("second transfer sent %d chunks, %d from the store: want all from the store", res.ChunksSent, r.res.FromStore)
	}
}
