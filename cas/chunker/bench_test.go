package chunker

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"syscall"
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
	defer perCPU(b, int64(len(data)))()
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
	defer perCPU(b, int64(len(data)))()
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
	defer perCPU(b, int64(len(data)))()
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

// perCPU reports throughput per CPU-second of the process (user + system),
// i.e. per core, which the load of other work on a shared machine disturbs
// far less than wall-clock MB/s.
func perCPU(b *testing.B, bytesPerOp int64) func() {
	start := cpuTime()
	return func() {
		if cpu := cpuTime() - start; cpu > 0 {
			b.ReportMetric(float64(bytesPerOp)*float64(b.N)/1e6/(float64(cpu)/1e9), "MB/cpu-s")
		}
	}
}

func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
