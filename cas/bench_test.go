package cas

import (
	"bytes"
	"syscall"
	"testing"
)

// BuildIndex end to end: 4 KiB blocks hashed, zero check, and the
// whole-file digest on a second goroutine.
func BenchmarkBuildIndexFixed(b *testing.B) {
	data := randBytes(64<<20, 5)
	b.SetBytes(int64(len(data)))
	defer perCPU(b, int64(len(data)))()
	for b.Loop() {
		if _, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: Fixed}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildIndexCDC(b *testing.B) {
	data := randBytes(64<<20, 5)
	b.SetBytes(int64(len(data)))
	defer perCPU(b, int64(len(data)))()
	for b.Loop() {
		if _, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: CDC}); err != nil {
			b.Fatal(err)
		}
	}
}

// Store.Put of new 4 KiB chunks (one file each, no fsync).
func BenchmarkStorePut4K(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	data := randBytes(4096, 6)
	b.SetBytes(4096)
	defer perCPU(b, 4096)()
	i := 0
	for b.Loop() {
		i++
		data[0], data[1], data[2], data[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
		if _, err := s.Put(Sum(data), data); err != nil {
			b.Fatal(err)
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
