package qemu

import (
	"context"
	"fmt"
	"os"
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

func benchGuestOnce(b *testing.B, mem int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	im := guestImageB(b)
	mk := func() *Driver {
		d, err := New(ctx, Config{DataDir: b.TempDir(), Kernel: im.Kernel, Initrd: im.Initrd})
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
	a, c := mk(), mk()
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
