package chunker

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
)

func benchData() []byte {
	data := make([]byte, 64<<20)
	fillRandom(data, 3)
	return data
}

// Fixed 4 KiB blocks, each hashed with SHA-256 (one core).
func BenchmarkFixedSHA256(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		f := NewFixed(bytes.NewReader(data), BlockSize)
		for {
			c, err := f.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			sha256.Sum256(c.Data)
		}
	}
}

// FastCDC cut points only (one core).
func BenchmarkFastCDC(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		f, _ := NewFastCDC(bytes.NewReader(data), DefaultParams())
		for {
			if _, err := f.Next(); errors.Is(err, io.EOF) {
				break
			}
		}
	}
}

// FastCDC with each chunk hashed with SHA-256 (one core).
func BenchmarkFastCDCSHA256(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		f, _ := NewFastCDC(bytes.NewReader(data), DefaultParams())
		for {
			c, err := f.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			sha256.Sum256(c.Data)
		}
	}
}
