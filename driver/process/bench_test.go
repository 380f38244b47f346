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
	"testing"
	"time"
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

func benchOnce(b *testing.B, size int64) {
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root := b.TempDir()
	var logger *slog.Logger
	if os.Getenv("FERRY_BENCH_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	nodeA, err := New(Config{DataDir: filepath.Join(root, "a"), NoCgroups: true, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	defer nodeA.Close()
	nodeB, err := New(Config{DataDir: filepath.Join(root, "b"), NoCgroups: true, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	defer nodeB.Close()
	spec := jobSpec("blob", "blob", map[string]string{"FERRY_TEST_BYTES": strconv.FormatInt(size, 10)})
	spec.Process.CheckpointTimeout = 5 * time.Minute
	if err := nodeA.Start(ctx, spec); err != nil {
		b.Fatal(err)
	}
	waitLog(b, nodeA, "blob", "ready ")

	plain, plainSync := baselines(b, root, size)

	b.StartTimer()
	t0 := time.Now()
	img, err := nodeA.Suspend(ctx, "blob", filepath.Join(root, "image"))
	if err != nil {
		b.Fatal(err)
	}
	t1 := time.Now()
	inbox := filepath.Join(root, "inbox")
	if err := moveOverTCP(ctx, img.Dir, inbox); err != nil {
		b.Fatal(err)
	}
	t2 := time.Now()
	spec.Epoch++
	if err := nodeB.Resume(ctx, spec, inbox); err != nil {
		b.Fatal(err)
	}
	tr := time.Now()
	waitLog(b, nodeB, "blob", "restored ")
	if os.Getenv("FERRY_BENCH_DEBUG") != "" {
		log, _ := os.ReadFile(nodeA.LogPath("blob"))
		b.Logf("Resume call %v, job ready after %v; job log:\n%s", tr.Sub(t2), time.Since(tr), log)
	}
	t3 := time.Now()
	b.StopTimer()
	_ = nodeB.Stop(ctx, "blob")

	report(b, size, t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), plain, plainSync)
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
	total := ckpt + move + resume
	b.ReportMetric(ckpt.Seconds(), "ckpt-s")
	b.ReportMetric(move.Seconds(), "move-s")
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
// the sending side, as SendImage does).
func plainCopy(b *testing.B, src, dst string, sync bool) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
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
		_, err = io.Copy(f, c)
		if err == nil && sync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(c, f); err != nil {
		b.Fatal(err)
	}
	f.Close()
	c.Close()
	if err := <-done; err != nil {
		b.Fatal(fmt.Errorf("plain copy: %w", err))
	}
	d := time.Since(t0)
	os.Remove(dst)
	return d
}
