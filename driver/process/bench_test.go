package process

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// BenchmarkCheckpoint measures checkpoint + move + restart of a job holding
// 10 MB, 100 MB and 1 GB of state between two driver instances (two data
// dirs: two nodes), the move over a loopback TCP connection
// (SendImage/ReceiveImage), against a plain copy of the same bytes over
// TCP in the same run. Run it with `make bench-checkpoint`.
//
// Reported metrics (seconds): ckpt = Suspend (the job writes its state,
// the driver fsyncs and commits), move = stream + fsync + commit on the
// destination, resume = Resume until the job has read its state back,
// total = the three; plain = file → TCP → file without fsync, plain+fsync
// = the same with an fsync at the end (the fastest of three each, measured
// just before); ratio = total / plain. Durability: the checkpoint path
// fsyncs on both nodes (the commit on the source, the move's commit on the
// destination); plain+fsync fsyncs the destination file only, the source
// being a cached file as the job's state is memory.
func BenchmarkCheckpoint(b *testing.B) {
	benchSizes(b, benchOnce)
}

// benchSizes runs one for 10 MB, 100 MB and 1 GB of state.
func benchSizes(b *testing.B, one func(b *testing.B, size int64)) {
	for _, size := range []int64{10 << 20, 100 << 20, 1 << 30} {
		b.Run(sizeName(size), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				one(b, size)
			}
		})
	}
}

func sizeName(n int64) string {
	if n >= 1<<30 {
		return strconv.FormatInt(n>>30, 10) + "GB"
	}
	return strconv.FormatInt(n>>20, 10) + "MB"
}

// benchRig is two driver instances (two data dirs: two nodes), a blob
// job of size bytes started and ready on A, and the plain-copy baselines.
type benchRig struct {
	ctx              context.Context
	root             string
	a, b             *Driver
	spec             driver.Spec
	plain, plainSync time.Duration
}

func newBenchRig(b *testing.B, size int64) *benchRig {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	r := &benchRig{ctx: ctx, root: b.TempDir()}
	var logger *slog.Logger
	if os.Getenv("FERRY_BENCH_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, n := range []struct {
		d    **Driver
		name string
	}{{&r.a, "a"}, {&r.b, "b"}} {
		d, err := New(Config{DataDir: filepath.Join(r.root, n.name), NoCgroups: true, Logger: logger})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		*n.d = d
	}
	r.spec = jobSpec("blob", "blob", map[string]string{"FERRY_TEST_BYTES": strconv.FormatInt(size, 10)})
	r.spec.Process.CheckpointTimeout = 5 * time.Minute
	if err := r.a.Start(ctx, r.spec); err != nil {
		b.Fatal(err)
	}
	waitLog(b, r.a, "blob", "ready ")
	r.plain, r.plainSync = baselines(b, r.root, size)
	return r
}

// resumeOnB resumes the job on B from dir at the next epoch and waits
// until it has its state back.
func (r *benchRig) resumeOnB(b *testing.B, dir string) {
	r.spec.Epoch++
	if err := r.b.Resume(r.ctx, r.spec, dir); err != nil {
		b.Fatal(err)
	}
	waitLog(b, r.b, "blob", "restored ")
}

func benchOnce(b *testing.B, size int64) {
	b.StopTimer()
	r := newBenchRig(b, size)
	ctx := r.ctx

	startBench(b, r.root, size)
	t0 := time.Now()
	cpu0 := cpuTime()
	img, err := r.a.Suspend(ctx, "blob", filepath.Join(r.root, "image"))
	if err != nil {
		b.Fatal(err)
	}
	t1 := time.Now()
	inbox := filepath.Join(r.root, "inbox")
	if err := moveOverTCP(ctx, img.Dir, inbox); err != nil {
		b.Fatal(err)
	}
	t2 := time.Now()
	r.resumeOnB(b, inbox)
	t3 := time.Now()
	stopBench(b, cpu0)
	_ = r.b.Stop(ctx, "blob")

	report(b, size, t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), r.plain, r.plainSync)
	reportWrite(b, r.a)
}

// startBench makes the timed part start as the baselines did, then starts
// the timer. The baselines (the fastest of three) write into memory the
// page cache has just freed; this VM reports free memory to its host
// (free page reporting, 8 MiB blocks), and writing into memory the host
// took back costs a host fault per page: the job's write of 1 GB took
// 0.3–4.7 s at the same load, 0.3–0.5 s just after 2 GB were written and
// deleted. So startBench waits until the data written so far is on disk
// (sync), so no writeback of the baselines or of the previous size slows
// the timed part, then writes and deletes 2 × size (the job's write here,
// the copy at the destination) in dir and starts the timer at once: the
// kernel reports freed memory to the host a few seconds after it is
// freed, so a sync after the delete could hand it back. (The deleted
// file's dirty pages are dropped, not written.) dirty-MB says what was
// waiting for writeback (Dirty + Writeback in /proc/meminfo) before it.
func startBench(b *testing.B, dir string, size int64) {
	b.ReportMetric(float64(dirtyBytes())/1e6, "dirty-MB")
	syscall.Sync()
	scratch := filepath.Join(dir, "bench-warm")
	f, err := os.Create(scratch)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 8<<20)
	for n := int64(0); n < 2*size; n += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Remove(scratch); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
}

// dirtyBytes is Dirty + Writeback of /proc/meminfo (0 where unreadable).
func dirtyBytes() int64 {
	body, _ := os.ReadFile("/proc/meminfo")
	var n int64
	for _, line := range strings.Split(string(body), "\n") {
		name, rest, _ := strings.Cut(line, ":")
		if name != "Dirty" && name != "Writeback" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 2 && f[1] == "kB" {
			kb, _ := strconv.ParseInt(f[0], 10, 64)
			n += kb << 10
		}
	}
	return n
}

// stopBench stops the timer and reports cpu-s: cpuTime since cpu0.
func stopBench(b *testing.B, cpu0 time.Duration) {
	b.StopTimer()
	b.ReportMetric((cpuTime() - cpu0).Seconds(), "cpu-s")
}

// cpuTime is the CPU time this process (drivers, agents, transfers; not
// the job) has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// baselines times a plain copy of size bytes over loopback TCP without
// and with a final fsync. The machine is shared and noisy: each is the
// fastest of three, which favours the baseline. The source is a cached
// file, as the job's state is in memory.
func baselines(b *testing.B, root string, size int64) (plain, plainSync time.Duration) {
	src := filepath.Join(root, "plain-src")
	if err := os.WriteFile(src, make([]byte, size), 0o644); err != nil {
		b.Fatal(err)
	}
	defer os.Remove(src)
	plain, plainSync = time.Duration(1<<62), time.Duration(1<<62)
	for i := 0; i < 3; i++ {
		plain = min(plain, plainCopy(b, src, filepath.Join(root, "plain-dst"), false))
		plainSync = min(plainSync, plainCopy(b, src, filepath.Join(root, "plain-dst-sync"), true))
	}
	return plain, plainSync
}

func report(b *testing.B, size int64, ckpt, move, resume, plain, plainSync time.Duration) {
	b.ReportMetric(ckpt.Seconds(), "ckpt-s")
	b.ReportMetric(move.Seconds(), "move-s")
	reportTotals(b, size, ckpt+move+resume, resume, plain, plainSync)
}

// reportTotals reports the resume, the total and the ratios.
func reportTotals(b *testing.B, size int64, total, resume, plain, plainSync time.Duration) {
	b.ReportMetric(resume.Seconds(), "resume-s")
	b.ReportMetric(total.Seconds(), "total-s")
	b.ReportMetric(plain.Seconds(), "plain-s")
	b.ReportMetric(plainSync.Seconds(), "plain+fsync-s")
	b.ReportMetric(total.Seconds()/plain.Seconds(), "ratio")
	b.ReportMetric(total.Seconds()/plainSync.Seconds(), "ratio-fsync")
	b.SetBytes(size)
}

func waitLog(b *testing.B, d *Driver, id, s string) {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		body, _ := os.ReadFile(d.LogPath(id))
		if strings.Contains(string(body), s) {
			return
		}
		if st, err := d.Inspect(context.Background(), id); err == nil && st.State == "failed" {
			b.Fatalf("%s failed: %s", id, st.Message)
		}
		if time.Now().After(deadline) {
			b.Fatalf("no %q in %s", s, d.LogPath(id))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// plainCopy copies src to dst over a loopback TCP connection (sendfile on
// the sending side, as SendImage does; splice on the receiving side).
func plainCopy(b *testing.B, src, dst string, sync bool) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	_, d := timedCopy(b, ln, func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }, src, dst, sync, io.Copy)
	return d
}

// timedCopy copies src to dst through a connection from dial to ln (which
// it closes), with copy on both ends, and fsyncs dst if sync. It returns
// the time until dial returned (a TLS handshake) and the total.
func timedCopy(b *testing.B, ln net.Listener, dial func(addr string) (net.Conn, error), src, dst string, sync bool, copy func(io.Writer, io.Reader) (int64, error)) (connected, total time.Duration) {
	defer ln.Close()
	t0 := time.Now()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		f, err := os.Create(dst)
		if err != nil {
			done <- err
			return
		}
		_, err = copy(f, c)
		if err == nil && sync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	c, err := dial(ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	connected = time.Since(t0)
	f, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := copy(c, f); err != nil {
		b.Fatal(err)
	}
	f.Close()
	c.Close()
	if err := <-done; err != nil {
		b.Fatal(fmt.Errorf("copy over %s: %w", ln.Addr(), err))
	}
	total = time.Since(t0)
	os.Remove(dst)
	return connected, total
}

// BenchmarkCheckpointStreamed is BenchmarkCheckpoint with the checkpoint
// streamed while the job writes it (SuspendStreaming → ReceiveStreaming
// over loopback TCP): ckpt+move is one span, from the request until B has
// committed its copy (A's suspend committed too); resume as before.
// Reported besides: early/late MB (sent while the job wrote / after the
// commit) and check-s (re-reading and checksumming the committed state,
// sending what differs).
func BenchmarkCheckpointStreamed(b *testing.B) {
	benchSizes(b, benchStreamedOnce)
}

func benchStreamedOnce(b *testing.B, size int64) {
	b.StopTimer()
	r := newBenchRig(b, size)
	ctx := r.ctx
	inbox := filepath.Join(r.root, "inbox")

	startBench(b, r.root, size)
	t0 := time.Now()
	cpu0 := cpuTime()
	var st StreamStats
	serr, rerr := loopback(func(c net.Conn) error {
		_, err := ReceiveStreaming(ctx, c, inbox, ReceiveOptions{})
		return err
	}, func(c net.Conn) error {
		_, err := r.a.SuspendStreaming(ctx, "blob", filepath.Join(r.root, "image"), c, &st)
		return err
	})
	if serr != nil || rerr != nil {
		b.Fatalf("send %v, receive %v", serr, rerr)
	}
	t1 := time.Now()
	r.resumeOnB(b, inbox)
	t2 := time.Now()
	stopBench(b, cpu0)
	_ = r.b.Stop(ctx, "blob")
	reportStreamed(b, size, t1.Sub(t0), t2.Sub(t1), r.plain, r.plainSync, st)
	reportWrite(b, r.a)
}

func reportStreamed(b *testing.B, size int64, ckptMove, resume, plain, plainSync time.Duration, st StreamStats) {
	b.ReportMetric(ckptMove.Seconds(), "ckpt+move-s")
	reportTotals(b, size, ckptMove+resume, resume, plain, plainSync)
	b.ReportMetric(float64(st.Early)/1e6, "early-MB")
	b.ReportMetric(float64(st.Late)/1e6, "late-MB")
	b.ReportMetric(st.Check.Seconds(), "check-s")
}

// reportWrite reports write-s: how long the job itself took to write its
// state (its "wrote N in D" line), the part no transfer can avoid.
func reportWrite(b *testing.B, d *Driver) {
	body, _ := os.ReadFile(d.LogPath("blob"))
	for _, line := range strings.Split(string(body), "\n") {
		if _, rest, ok := strings.Cut(line, " in "); ok && strings.HasPrefix(line, "wrote ") {
			if took, err := time.ParseDuration(rest); err == nil {
				b.ReportMetric(took.Seconds(), "write-s")
			}
		}
	}
}
