package transfer

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cas"
)

// BenchmarkLoopback compares, in one run, a plain TCP copy of a file into a
// file on 127.0.0.1 with ferry transfers of the same file to an empty
// receiver (every chunk cold, so every byte crosses): goodput is file bytes
// per second, end to end (sender index when not pre-built, hashing on the
// receiver, write, fsync unless -nosync, rename).
//
// The baselines are io.Copy from the file to the socket and from the socket
// to a new file (sendfile and splice: no copy through user space, no
// hashing); "plain-tcp-copy-fsync" then fsyncs the file and its directory
// as the ferry receiver does. Compare ferry with the baseline of the same
// durability: "ferry-*" with "plain-tcp-copy-fsync", "ferry-*-nosync" with
// "plain-tcp-copy". Every variant writes a new file each time and removes
// it untimed afterwards (writing over pages the kernel still caches for an
// older file is faster than allocating fresh ones, which would favour
// whoever rewrites one path).
func BenchmarkLoopback(b *testing.B) {
	const size = 128 << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, randBytes(size, 99), 0o644); err != nil {
		b.Fatal(err)
	}
	// The same bytes as a checkpoint directory (a hard link: same pages).
	srcDir := filepath.Join(dir, "ckpt")
	os.Mkdir(srcDir, 0o755)
	if err := os.Link(src, filepath.Join(srcDir, "state")); err != nil {
		b.Fatal(err)
	}
	for _, sync := range []bool{false, true} {
		name := "plain-tcp-copy"
		if sync {
			name += "-fsync"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			cpu := cpuPerOp(b)
			i := 0
			for b.Loop() {
				i++
				out := filepath.Join(dir, fmt.Sprint("plain", i))
				if err := plainCopy(src, out, sync); err != nil {
					b.Fatal(err)
				}
				untimed(b, cpu, func() { os.Remove(out) })
			}
			cpu.report()
		})
	}
	for _, v := range []struct {
		name     string
		chunking cas.Chunking
		keep     bool
		index    bool // index outside the timed loop (a retry, or a file indexed when written)
		nosync   bool
	}{
		{"ferry-fixed", cas.Fixed, false, false, false},
		{"ferry-fixed-preindexed", cas.Fixed, false, true, false},
		{"ferry-fixed-preindexed-nosync", cas.Fixed, false, true, true},
		{"ferry-cdc", cas.CDC, false, false, false},
		{"ferry-cdc-preindexed", cas.CDC, false, true, false},
		{"ferry-fixed-keep-in-store", cas.Fixed, true, false, false},
		{"ferry-dir", cas.CDC, false, false, false},
		{"ferry-dir-keep-in-store", cas.CDC, true, false, false},
	} {
		isDir := strings.HasPrefix(v.name, "ferry-dir")
		b.Run(v.name, func(b *testing.B) {
			var x *cas.Index
			if v.index {
				x, _ = cas.IndexFile(src, cas.IndexOptions{Chunking: v.chunking})
			}
			b.SetBytes(size)
			cpu := cpuPerOp(b)
			i := 0
			var untilWant time.Duration // HELLO, INDEX, the receiver's scan and WANT
			for b.Loop() {
				i++
				rdir := filepath.Join(dir, fmt.Sprint("r", i))
				rc := &Receiver{StagingDir: filepath.Join(rdir, "s"), DestDir: filepath.Join(rdir, "d"), NoSync: v.nosync}
				if v.keep {
					st, err := cas.Open(filepath.Join(rdir, "store"), cas.Options{})
					if err != nil {
						b.Fatal(err)
					}
					rc.Store, rc.Keep = st, true
				}
				err := loopback(func(c net.Conn) error {
					_, err := rc.Serve(context.Background(), c)
					return err
				}, func(c net.Conn) error {
					start := time.Now()
					if isDir {
						_, err := SendDir(context.Background(), c, srcDir, SendOptions{ID: fmt.Sprint("b", i), Name: "out"})
						return err
					}
					_, err := SendFile(context.Background(), c, src, SendOptions{ID: fmt.Sprint("b", i), Name: "out", Chunking: v.chunking, Index: x,
						Progress: func(p Progress) {
							if p.Phase == PhaseStream && p.Done == 0 {
								untilWant += time.Since(start)
							}
						}})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				untimed(b, cpu, func() { os.RemoveAll(rdir) })
			}
			cpu.report()
			b.ReportMetric(float64(untilWant.Microseconds())/1e3/float64(b.N), "until-want-ms/op")
		})
	}
}

// plainCopy copies src to dst through a TCP connection on 127.0.0.1 with
// io.Copy at both ends; with sync it fsyncs dst and its directory.
func plainCopy(src, dst string, sync bool) error {
	return loopback(func(c net.Conn) error {
		f, err := os.Create(dst)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, c)
		if err == nil && sync {
			err = f.Sync()
			syncDir(filepath.Dir(dst))
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}, func(c net.Conn) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(c, f)
		return err
	})
}

// loopback runs receive on the accepted end and send on the dialled end
// of a new TCP connection on 127.0.0.1, and returns the first error.
func loopback(receive, send func(net.Conn) error) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- receive(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	err = send(c)
	c.Close()
	if rerr := <-done; err == nil {
		err = rerr
	}
	return err
}

// untimed runs fn with the benchmark timer and the CPU count stopped.
func untimed(b *testing.B, cpu *cpuCounter, fn func()) {
	b.StopTimer()
	cpu.pause()
	fn()
	cpu.resume()
	b.StartTimer()
}

// cpuPerOp counts the process's CPU time (user + system, both sides of the
// transfer) per operation, which the other engineers' load on the shared
// machine disturbs less than wall time.
func cpuPerOp(b *testing.B) *cpuCounter { return &cpuCounter{b: b, start: cpuTime()} }

type cpuCounter struct {
	b            *testing.B
	start, spent int64
}

func (c *cpuCounter) pause()  { c.spent += cpuTime() - c.start }
func (c *cpuCounter) resume() { c.start = cpuTime() }

func (c *cpuCounter) report() {
	c.pause()
	c.b.ReportMetric(float64(c.spent)/1e6/float64(c.b.N), "cpu-ms/op")
}

func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
