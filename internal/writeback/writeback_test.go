package writeback

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// Copy writes exactly what it reads across several steps: a given size,
// until the end (size < 0), and a source that ends early (io.EOF, with
// what arrived on disk).
func TestCopy(t *testing.T) {
	data := make([]byte, 2*Step+12345)
	rand.New(rand.NewSource(1)).Read(data)
	for _, c := range []struct {
		name    string
		size    int64
		want    int64
		wantErr error
	}{
		{"sized", int64(len(data)), int64(len(data)), nil},
		{"part", Step + 7, Step + 7, nil},
		{"to the end", -1, int64(len(data)), nil},
		{"source ends first", int64(len(data)) + 1, int64(len(data)), io.EOF},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			n, err := Copy(f, bytes.NewReader(data), c.size)
			if cerr := f.Close(); cerr != nil {
				t.Fatal(cerr)
			}
			if n != c.want || !errors.Is(err, c.wantErr) || err != nil && c.wantErr == nil {
				t.Fatalf("Copy = %d, %v; want %d, %v", n, err, c.want, c.wantErr)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[:c.want]) {
				t.Fatalf("file holds %d bytes, not the first %d copied", len(got), c.want)
			}
		})
	}
}
