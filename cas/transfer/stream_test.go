package transfer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The sender stops trying zstd on every chunk of incompressible data (one
// in 64 after 8 misses) and starts again as soon as a sample pays.
func TestZstdSampling(t *testing.T) {
	var z zsampler
	tries := 0
	for range 1000 {
		if z.try() {
			tries++
			z.record(false)
		}
	}
	if want := 8 + (1000-8)/64; tries != want {
		t.Fatalf("%d zstd attempts on 1000 incompressible chunks, want %d", tries, want)
	}
	for range 64 {
		if z.try() {
			z.record(true)
			break
		}
	}
	for i := range 20 {
		if !z.try() {
			t.Fatalf("chunk %d after a paying sample not tried", i)
		}
		z.record(true)
	}
}

// A file whose first part is random and the rest text goes across intact,
// with the text compressed although the sender had stopped trying on the
// random part.
func TestCompressionAfterIncompressibleStart(t *testing.T) {
	rc := newReceiver(t, nil)
	addr, out := listen(t, rc)
	var text bytes.Buffer
	for i := 0; text.Len() < 300*4096; i++ {
		fmt.Fprintf(&text, "line %d of a log that compresses well\n", i)
	}
	data := append(randBytes(500*4096, 7), text.Bytes()[:300*4096]...)
	src := filepath.Join(t.TempDir(), "mixed")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := SendFile(context.Background(), dial(t, addr), src, SendOptions{ID: "z", Name: "mixed", Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-out; r.err != nil {
		t.Fatal(r.err)
	}
	if got, _ := os.ReadFile(filepath.Join(rc.DestDir, "mixed")); !bytes.Equal(got, data) {
		t.Fatal("rebuilt file differs")
	}
	// The random part crosses raw, nearly all of the text compressed.
	if saved := res.BytesSent - res.PayloadBytes; saved < 250*4096*8/10 {
		t.Fatalf("compression saved %d bytes of %d sent", saved, res.BytesSent)
	}
}
