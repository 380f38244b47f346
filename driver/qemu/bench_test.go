package qemu

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// BenchmarkGuest measures, for a 128 MiB counter guest under the node's
// accelerator: boot (Start until the first counter on the console),
// suspend (time stopped, image size), resume on a second node (Resume until
// the next counter), and a live migration over a unix socket (QEMU's total
// time, downtime and bytes).
//
//	go test -run '^$' -bench Guest -benchtime 1x ./driver/qemu
func BenchmarkGuest(b *testing.B) {
	for _, mem := range []int64{128} {
		b.Run(fmt.Sprintf("%dMiB", mem), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchGuestOnce(b, mem<<20)
			}
		})
	}
}

// benchDriver returns a driver over a fresh data dir (logging to log, or
// nowhere) that stops its guests when the benchmark ends.
func benchDriver(ctx context.Context, b *testing.B, log *slog.Logger) *Driver {
	im := guestImageB(b)
	d, err := New(ctx, Config{DataDir: b.TempDir(), Kernel: im.Kernel, Initrd: im.Initrd, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		list, _ := d.List(context.Background())
		for _, s := range list {
			d.Stop(context.Background(), s.ID)
		}
	})
	return d
}

func benchGuestOnce(b *testing.B, mem int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, c := benchDriver(ctx, b, nil), benchDriver(ctx, b, nil)
	s := driver.Spec{ID: "bench", Epoch: 1, CPUs: 1, MemoryBytes: mem, VM: &driver.VMSpec{Workload: "counter"}}
	waitFor := func(d *Driver, off, min int64) {
		for lastCounter(d, s.ID, off) <= min {
			if ctx.Err() != nil {
				log, _ := os.ReadFile(d.LogPath(s.ID))
				b.Fatalf("no counter above %d in %s from offset %d; log ends %q", min, d.LogPath(s.ID), off, log[max(0, len(log)-400):])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t0 := time.Now()
	if err := a.Start(ctx, s); err != nil {
		b.Fatal(err)
	}
	waitFor(a, 0, 0)
	boot := time.Since(t0)
	waitFor(a, 0, 20)

	img, err := a.Suspend(ctx, s.ID, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	before := lastCounter(a, s.ID, 0)
	t0 = time.Now()
	if err := c.Resume(ctx, s, img.Dir); err != nil {
		b.Fatal(err)
	}
	resumeCall := time.Since(t0)
	waitFor(c, 0, before)
	resume := time.Since(t0)
	waitFor(c, 0, before+10)

	off := logSize(a, s.ID)
	sock, err := a.PrepareIncoming(ctx, s)
	if err != nil {
		b.Fatal(err)
	}
	p, err := c.MigrateOut(ctx, s.ID, sock, driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := a.FinishIncoming(ctx, s.ID); err != nil {
		b.Fatal(err)
	}
	if err := c.ConfirmOut(ctx, s.ID); err != nil {
		b.Fatal(err)
	}
	waitFor(a, off, 0)
	b.ReportMetric(boot.Seconds(), "boot-s")
	b.ReportMetric(img.Took.Seconds(), "suspend-s")
	b.ReportMetric(float64(img.Bytes)/(1<<20), "image-MiB")
	b.ReportMetric(resumeCall.Seconds(), "resume-call-s")
	b.ReportMetric(resume.Seconds(), "resume-to-counter-s")
	b.ReportMetric(p.TotalTime.Seconds(), "migrate-total-s")
	b.ReportMetric(float64(p.Downtime.Milliseconds()), "migrate-downtime-ms")
	b.ReportMetric(float64(p.TransferredBytes)/(1<<20), "migrate-MiB")
	b.Logf("accel %s: boot %v, suspend %v (%d B), resume call %v, resume to counter %v, migrate total %v downtime %v transferred %d B",
		a.Accel(), boot, img.Took, img.Bytes, resumeCall, resume, p.TotalTime, p.Downtime, p.TransferredBytes)
}

// BenchmarkMigrateHops boots one guest and live-migrates it back and forth
// directly between two QEMUs (unix socket, no agent) FERRY_BENCH_HOPS times
// (default 4), logging QEMU's own figures for each hop. FERRY_BENCH_MEM
// (MiB, default 128) and FERRY_BENCH_WORKLOAD (default "counter") pick the
// guest. It separates what QEMU costs from what the agents' tunnel adds.
//
//	FERRY_BENCH_MEM=256 go test -run '^$' -bench MigrateHops -benchtime 1x ./driver/qemu
func BenchmarkMigrateHops(b *testing.B) {
	mem, hops, workload := int64(128), 4, "counter"
	if v := os.Getenv("FERRY_BENCH_MEM"); v != "" {
		fmt.Sscan(v, &mem)
	}
	if v := os.Getenv("FERRY_BENCH_HOPS"); v != "" {
		fmt.Sscan(v, &hops)
	}
	if v := os.Getenv("FERRY_BENCH_WORKLOAD"); v != "" {
		workload = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ds := []*Driver{benchDriver(ctx, b, log), benchDriver(ctx, b, log)}
	s := driver.Spec{ID: "hops", Epoch: 1, CPUs: 1, MemoryBytes: mem << 20, VM: &driver.VMSpec{Workload: workload}}
	if err := ds[0].Start(ctx, s); err != nil {
		b.Fatal(err)
	}
	for lastCounter(ds[0], s.ID, 0) < 20 {
		if ctx.Err() != nil {
			b.Fatal("guest did not count to 20")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < b.N; i++ {
		for h := 0; h < hops; h++ {
			src, dst := ds[h%2], ds[(h+1)%2]
			if os.Getenv("FERRY_BENCH_SINK") != "" {
				sink, n := discardSink(b)
				p, err := src.MigrateOut(ctx, s.ID, sink, driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := src.AbortOut(ctx, s.ID); err != nil {
					b.Fatal(err)
				}
				b.Logf("hop %d: into a discarding socket: total %v downtime %v sent %.1f MB (socket got %.1f MB)", h+1, p.TotalTime, p.Downtime, float64(p.TransferredBytes)/1e6, float64(n.Load())/1e6)
				time.Sleep(time.Second)
			}
			sock, err := dst.PrepareIncoming(ctx, s)
			if err != nil {
				b.Fatal(err)
			}
			cpu0 := cpuOf(ctx, b, src, dst, s.ID)
			p, err := src.MigrateOut(ctx, s.ID, sock, driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}, nil)
			if err != nil {
				b.Fatal(err)
			}
			cpu1 := cpuOf(ctx, b, src, dst, s.ID)
			if err := dst.FinishIncoming(ctx, s.ID); err != nil {
				b.Fatal(err)
			}
			if err := src.ConfirmOut(ctx, s.ID); err != nil {
				b.Fatal(err)
			}
			b.Logf("hop %d: %d MiB %s: total %v downtime %v sent %.1f MB; CPU during the hop: source QEMU %v, destination QEMU %v",
				h+1, mem, workload, p.TotalTime, p.Downtime, float64(p.TransferredBytes)/1e6, cpu1[0]-cpu0[0], cpu1[1]-cpu0[1])
			off := logSize(dst, s.ID)
			for lastCounter(dst, s.ID, off) < 0 {
				if ctx.Err() != nil {
					b.Fatal("guest silent after the move")
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

// cpuOf returns the CPU time used so far by the task's QEMU on src and dst.
func cpuOf(ctx context.Context, b *testing.B, src, dst *Driver, id string) [2]time.Duration {
	var out [2]time.Duration
	for i, d := range []*Driver{src, dst} {
		st, err := d.Stats(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		out[i] = st.CPUTime
	}
	return out
}

// discardSink listens on a unix socket and discards what one connection
// sends: the fastest possible receiver.
func discardSink(b *testing.B) (string, *atomic.Int64) {
	sock := filepath.Join(b.TempDir(), "sink.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		defer l.Close()
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		k, _ := io.Copy(io.Discard, c)
		n.Store(k)
	}()
	return sock, &n
}
