package transfer

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ferrycluster/ferry/cas"
)

// BenchmarkLoopback compares, in one run, a plain TCP copy of a file into a
// file on 127.0.0.1 with ferry transfers of the same file to an empty
// receiver (every chunk cold, so every byte crosses): goodput is file bytes
// per second, end to end (index, hashing both sides, write, whole-file
// verification, rename).
func BenchmarkLoopback(b *testing.B) {
	const size = 128 << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, randBytes(size, 99), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Run("plain-tcp-copy", func(b *testing.B) {
		b.SetBytes(size)
		defer cpuPerOp(b)()
		for b.Loop() {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			done := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				defer c.Close()
				f, _ := os.Create(filepath.Join(dir, "plain.out"))
				_, err = io.Copy(f, c)
				f.Close()
				done <- err
			}()
			c, _ := net.Dial("tcp", ln.Addr().String())
			f, _ := os.Open(src)
			io.Copy(c, f)
			f.Close()
			c.Close()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			ln.Close()
		}
	})
	for _, v := range []struct {
		name     string
		chunking cas.Chunking
		keep     bool
		index    bool // index outside the timed loop (a retry, or a file indexed when written)
	}{
		{"ferry-fixed", cas.Fixed, false, false},
		{"ferry-fixed-preindexed", cas.Fixed, false, true},
		{"ferry-cdc", cas.CDC, false, false},
		{"ferry-fixed-keep-in-store", cas.Fixed, true, false},
	} {
		b.Run(v.name, func(b *testing.B) {
			var x *cas.Index
			if v.index {
				x, _ = cas.IndexFile(src, cas.IndexOptions{Chunking: v.chunking})
			}
			b.SetBytes(size)
			defer cpuPerOp(b)()
			i := 0
			for b.Loop() {
				i++
				rdir := b.TempDir()
				rc := &Receiver{StagingDir: filepath.Join(rdir, "s"), DestDir: filepath.Join(rdir, "d")}
				if v.keep {
					st, err := cas.Open(filepath.Join(rdir, "store"), cas.Options{})
					if err != nil {
						b.Fatal(err)
					}
					rc.Store, rc.Keep = st, true
				}
				ln, _ := net.Listen("tcp", "127.0.0.1:0")
				done := make(chan error, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						done <- err
						return
					}
					defer c.Close()
					_, err = rc.Serve(context.Background(), c)
					done <- err
				}()
				c, _ := net.Dial("tcp", ln.Addr().String())
				_, err := SendFile(context.Background(), c, src, SendOptions{ID: fmt.Sprint("b", i), Name: "out", Chunking: v.chunking, Index: x})
				c.Close()
				if err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				ln.Close()
			}
		})
	}
}

// cpuPerOp reports the process's CPU time (user + system, both sides of the
// transfer) per operation, which the other engineers' load on the shared
// machine disturbs less than wall time.
func cpuPerOp(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/1e6/float64(b.N), "cpu-ms/op")
	}
}

func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
