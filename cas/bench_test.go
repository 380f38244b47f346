package cas

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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

// Keep of 64 MiB of new FastCDC chunks from a reader: one pack, written
// in order (the index is built outside the timed part).
func BenchmarkKeepPack(b *testing.B) {
	data, x := indexed64M(b, 7, CDC)
	benchKeep(b, int64(len(data)), func(s *Store) error {
		_, err := s.Keep(context.Background(), "image-b", bytes.NewReader(data), x)
		return err
	})
}

// KeepLinked of a 64 MiB committed file: a hard link and the location
// table, no byte copied.
func BenchmarkKeepLinked(b *testing.B) {
	benchKeepLinked(b, func(s *Store, f *os.File, l *Linked, x *Index) error {
		_, err := s.KeepLinked(context.Background(), "image-b", f, l, x)
		return err
	})
}

// KeepLinked without a pin name (a receiver without PinAs): no table, no
// pin, no fsync.
func BenchmarkKeepLinkedUnnamed(b *testing.B) {
	benchKeepLinked(b, func(s *Store, f *os.File, l *Linked, x *Index) error {
		_, err := s.KeepLinked(context.Background(), "", f, l, x)
		return err
	})
}

// benchKeepLinked times keep of a committed 64 MiB file linked into a new
// store each time.
func benchKeepLinked(b *testing.B, keep func(*Store, *os.File, *Linked, *Index) error) {
	data, x := indexed64M(b, 8, CDC)
	p := filepath.Join(b.TempDir(), "state.bin")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil { // committed files are durable
		b.Fatal(err)
	}
	benchKeep(b, int64(len(data)), func(s *Store) error {
		l := s.Link()
		if err := l.Add(f, int64(len(data))); err != nil {
			return err
		}
		return keep(s, f, l, x)
	})
}

// indexed64M returns 64 MiB of random data (seed) and its index.
func indexed64M(b *testing.B, seed uint64, c Chunking) ([]byte, *Index) {
	data := randBytes(64<<20, seed)
	x, err := BuildIndex(bytes.NewReader(data), IndexOptions{Chunking: c})
	if err != nil {
		b.Fatal(err)
	}
	return data, x
}

// benchKeep times keep on a new store each time (opened untimed). Its
// MB/cpu-s counts the CPU of the keeps only: a store's Open (256
// directories made) cost more CPU than a linked keep.
func benchKeep(b *testing.B, size int64, keep func(*Store) error) {
	b.SetBytes(size)
	dir := b.TempDir()
	var cpu int64
	b.ResetTimer() // the caller's setup (data, index, file) is not timed
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := Open(filepath.Join(dir, fmt.Sprint(i)), Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := cpuTime()
		if err := keep(s); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - start
	}
	if cpu > 0 {
		b.ReportMetric(float64(size)*float64(b.N)/1e6/(float64(cpu)/1e9), "MB/cpu-s")
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

// Compact of a 64 MiB pack a quarter live (16 MiB of 4 KiB chunks read,
// verified, written to a new pack and fsynced; one table rewritten).
// Bytes are the old pack's. No CPU metric: the untimed setup (a keep of
// 64 MiB) would dominate it.
func BenchmarkCompact(b *testing.B) {
	ctx := context.Background()
	data, x := indexed64M(b, 9, Fixed)
	quarter := &Index{Version: IndexV2, Chunking: Fixed, Entries: x.Entries[:len(x.Entries)/4]}
	for _, e := range quarter.Entries {
		quarter.Size += int64(e.Length)
	}
	quarter.Digest = quarter.Root()
	dir := b.TempDir()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := Open(filepath.Join(dir, fmt.Sprint(i)), Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Keep(ctx, "whole", bytes.NewReader(data), x); err != nil {
			b.Fatal(err)
		}
		if err := s.Pin("quarter", quarter); err != nil {
			b.Fatal(err)
		}
		if err := s.Unpin("whole"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if st, err := s.Compact(ctx, DefaultCompactBelow); err != nil || st.Packs != 1 {
			b.Fatalf("compact: %+v %v", st, err)
		}
	}
}

// Keep of a 64 MiB file the store already holds under that pin (a task's
// image kept again: every chunk found, none copied; the pin rewritten).
func BenchmarkKeepAgain(b *testing.B) {
	ctx := context.Background()
	data, x := indexed64M(b, 7, CDC)
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Keep(ctx, "image-b", bytes.NewReader(data), x); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	defer perCPU(b, int64(len(data)))()
	for b.Loop() {
		if n, err := s.Keep(ctx, "image-b", bytes.NewReader(data), x); err != nil || n != 0 {
			b.Fatalf("keep again: added %d, %v", n, err)
		}
	}
}
