package cas

import (
	"bytes"
	"testing"
)

func TestCompare(t *testing.T) {
	a := randBytes(10*4096, 30)
	b := append([]byte(nil), a...)
	copy(b[3*4096:], randBytes(2*4096, 31))  // 2 cold blocks
	copy(b[6*4096:7*4096], b[3*4096:4*4096]) // a repeat of a cold block: sent once
	clear(b[8*4096:])                        // 2 zero blocks: a hole
	xa, _ := BuildIndex(bytes.NewReader(a), IndexOptions{Chunking: Fixed})
	xb, _ := BuildIndex(bytes.NewReader(b), IndexOptions{Chunking: Fixed})
	o := Compare(xa, xb)
	if o.NonZero != 8*4096 || o.Hot != 5*4096 || o.Cold != 2*4096 || o.Holes != 2*4096 {
		t.Fatalf("%+v", o)
	}
	if o.Sent() != 2*4096+xb.EncodedLen() || o.HotFraction() != 5.0/8 {
		t.Fatalf("sent %d, hot %f", o.Sent(), o.HotFraction())
	}
}
