package qemu

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/drivertest"
	"github.com/ferrycluster/ferry/image"
	"github.com/ferrycluster/ferry/image/imagetest"
)

func guestImage(t *testing.T) image.Image { return imagetest.Counter(t) }

func guestImageB(t testing.TB) image.Image { return imagetest.Counter(t) }

func TestMain(m *testing.M) {
	code := m.Run()
	imagetest.Cleanup()
	os.Exit(code)
}

// newDriver returns a driver over a fresh data dir that stops its guests
// at cleanup.
func newDriver(t *testing.T) *Driver {
	t.Helper()
	return newDriverAt(t, t.TempDir())
}

func newDriverAt(t *testing.T, dir string) *Driver {
	t.Helper()
	im := guestImage(t)
	d, err := New(context.Background(), Config{DataDir: dir, Kernel: im.Kernel, Initrd: im.Initrd, MaxMemoryBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		list, _ := d.List(ctx)
		for _, s := range list {
			d.Stop(ctx, s.ID)
		}
	})
	return d
}

func spec(id string) driver.Spec {
	return driver.Spec{ID: id, Epoch: 1, CPUs: 1, MemoryBytes: 128 << 20, VM: &driver.VMSpec{Workload: "counter"}}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		NewDriver: func(t *testing.T) driver.Driver { return newDriver(t) },
		Spec:      spec,
		InvalidSpecs: func() []driver.Spec {
			s1 := spec("bad-workload")
			s1.VM.Workload = "counter; rm -rf /"
			s2 := spec("bad-kernel")
			s2.VM.Kernel = "/no/such/kernel"
			s3 := spec("tiny")
			s3.MemoryBytes = 1 << 20
			return []driver.Spec{s1, s2, s3}
		},
		Parallel: true,
	})
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func lastCounter(d *Driver, id string, off int64) int64 {
	b, _ := os.ReadFile(d.LogPath(id))
	if off > int64(len(b)) {
		return -1
	}
	c := drivertest.ParseCounters(b[off:])
	if len(c) == 0 {
		return -1
	}
	return c[len(c)-1]
}

func counters(d *Driver, id string, off int64) []int64 {
	b, _ := os.ReadFile(d.LogPath(id))
	if off > int64(len(b)) {
		return nil
	}
	return drivertest.ParseCounters(b[off:])
}

// waitCounter waits until the task's log from off shows a counter > min.
func waitCounter(t *testing.T, d *Driver, id string, off, min int64) int64 {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if c := lastCounter(d, id, off); c > min {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(d.LogPath(id))
	st, err := d.Inspect(ctxT(t, time.Minute), id)
	t.Fatalf("task %s: no counter above %d in %s (status %+v, %v); console ends %q", id, min, d.LogPath(id), st, err, log[max(0, len(log)-1500):])
	return 0
}

func logSize(d *Driver, id string) int64 {
	fi, err := os.Stat(d.LogPath(id))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// bridge accepts one connection on a fresh unix socket and copies bytes
// both ways to dst: a stand-in for the agent's tunnel. It returns the
// socket path and a counter of bytes carried towards dst.
func bridge(t *testing.T, dst string) (string, *atomic.Int64) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bridge.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		in, err := l.Accept()
		if err != nil {
			return
		}
		defer in.Close()
		out, err := net.Dial("unix", dst)
		if err != nil {
			return
		}
		defer out.Close()
		done := make(chan struct{})
		go func() {
			io.Copy(in, out)
			close(done)
		}()
		c, _ := io.Copy(out, in)
		n.Add(c)
		out.(*net.UnixConn).CloseWrite()
		<-done
	}()
	return sock, &n
}

func TestLiveMigrateBridged(t *testing.T) {
	t.Parallel()
	a, b := newDriver(t), newDriver(t)
	s := spec("bridged")
	if err := a.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a, s.ID, 0, 5)
	for i, hop := range []struct{ src, dst *Driver }{{a, b}, {b, a}} {
		s.Epoch++
		off := logSize(hop.dst, s.ID)
		sock, err := hop.dst.PrepareIncoming(ctxT(t, time.Minute), s)
		if err != nil {
			t.Fatal(err)
		}
		via, carried := bridge(t, sock)
		updates := 0
		final, err := hop.src.MigrateOut(ctxT(t, 3*time.Minute), s.ID, via, driver.MigrationOptions{MaxDowntime: 50 * time.Millisecond}, func(driver.Progress) { updates++ })
		if err != nil {
			t.Fatalf("hop %d: MigrateOut: %v", i, err)
		}
		before := lastCounter(hop.src, s.ID, 0)
		if err := hop.dst.FinishIncoming(ctxT(t, time.Minute), s.ID); err != nil {
			t.Fatalf("hop %d: FinishIncoming: %v", i, err)
		}
		if err := hop.src.ConfirmOut(ctxT(t, time.Minute), s.ID); err != nil {
			t.Fatalf("hop %d: ConfirmOut: %v", i, err)
		}
		waitCounter(t, hop.dst, s.ID, off, before)
		after := counters(hop.dst, s.ID, off)
		if after[0] <= before {
			t.Fatalf("hop %d: counter reset: first after %d, last before %d", i, after[0], before)
		}
		if final.Status != "completed" || final.TotalBytes <= 0 || final.TotalTime <= 0 || updates == 0 {
			t.Errorf("hop %d: final progress %+v after %d updates", i, final, updates)
		}
		t.Logf("hop %d: total %v, downtime %v, transferred %d B (bridge carried %d B), counter %d -> %d",
			i, final.TotalTime, final.Downtime, final.TransferredBytes, carried.Load(), before, after[0])
	}
}

// slowMigration starts a bandwidth-limited migration of a fresh task from a
// to b in the background and waits until it is under way.
func slowMigration(t *testing.T, a, b *Driver, id string) (driver.Spec, chan error) {
	t.Helper()
	s := spec(id)
	if err := a.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a, s.ID, 0, 2)
	ds := s
	ds.Epoch++
	sock, err := b.PrepareIncoming(ctxT(t, time.Minute), ds)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	started := make(chan struct{})
	var once sync.Once
	go func() {
		_, err := a.MigrateOut(ctxT(t, 3*time.Minute), s.ID, sock, driver.MigrationOptions{Bandwidth: 1 << 20},
			func(p driver.Progress) {
				if p.Status == "active" && p.TransferredBytes > 0 {
					once.Do(func() { close(started) })
				}
			})
		done <- err
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("migration ended before it was under way: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("migration never got under way")
	}
	return s, done
}

func TestCancelMidFlight(t *testing.T) {
	t.Parallel()
	a, b := newDriver(t), newDriver(t)
	s, done := slowMigration(t, a, b, "cancel")

	// While it is in flight, the task refuses other changes.
	if err := a.Start(ctxT(t, time.Minute), s); !errors.Is(err, driver.ErrExists) {
		t.Errorf("Start while migrating: %v, want ErrExists", err)
	}
	if _, err := a.Suspend(ctxT(t, time.Minute), s.ID, t.TempDir()); !errors.Is(err, driver.ErrBusy) {
		t.Errorf("Suspend while migrating: %v, want ErrBusy", err)
	}
	if _, err := a.MigrateOut(ctxT(t, time.Minute), s.ID, "/nonexistent.sock", driver.MigrationOptions{}, nil); !errors.Is(err, driver.ErrBusy) {
		t.Errorf("second MigrateOut: %v, want ErrBusy", err)
	}
	if err := a.Pause(ctxT(t, time.Minute), s.ID); !errors.Is(err, driver.ErrBusy) {
		t.Errorf("Pause while migrating: %v, want ErrBusy", err)
	}
	if st, _ := a.Inspect(ctxT(t, time.Minute), s.ID); st.State != driver.StateMigrating {
		t.Errorf("state while migrating: %+v", st)
	}

	if err := a.CancelOut(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatalf("CancelOut: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("MigrateOut succeeded after CancelOut")
	}
	before := lastCounter(a, s.ID, 0)
	waitCounter(t, a, s.ID, 0, before)
	if st, err := a.Inspect(ctxT(t, time.Minute), s.ID); err != nil || st.State != driver.StateRunning {
		t.Fatalf("source after cancel: %+v, %v", st, err)
	}
	if err := b.AbortIncoming(ctxT(t, time.Minute), s.ID); err != nil {
		t.Errorf("AbortIncoming: %v", err)
	}
	if _, err := b.Inspect(ctxT(t, time.Minute), s.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("destination after AbortIncoming: %v", err)
	}
}

func TestDestinationKilledMidFlight(t *testing.T) {
	t.Parallel()
	a, b := newDriver(t), newDriver(t)
	s, done := slowMigration(t, a, b, "killdst")
	st, err := b.Inspect(ctxT(t, time.Minute), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("MigrateOut succeeded with its destination killed")
	}
	if err := a.AbortOut(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatalf("AbortOut: %v", err)
	}
	before := lastCounter(a, s.ID, 0)
	waitCounter(t, a, s.ID, 0, before)
	// Exactly one live copy: the source runs, the destination is failed.
	if st, err := a.Inspect(ctxT(t, time.Minute), s.ID); err != nil || st.State != driver.StateRunning {
		t.Fatalf("source: %+v, %v", st, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := b.Inspect(ctxT(t, time.Minute), s.ID)
		if err == nil && st.State == driver.StateFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination after kill: %+v, %v; want failed", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := b.Stop(ctxT(t, time.Minute), s.ID); err != nil {
		t.Errorf("Stop of the dead destination: %v", err)
	}
}

func TestReattachAfterRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := newDriverAt(t, dir)
	s := spec("reattach")
	if err := a.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	c := waitCounter(t, a, s.ID, 0, 2)
	st1, _ := a.Inspect(ctxT(t, time.Minute), s.ID)
	// The "agent" goes away: drop its QMP connections without stopping
	// anything, as a process exit would.
	a.mu.Lock()
	for _, tk := range a.tasks {
		tk.qmp.Close()
	}
	a.tasks = map[string]*task{}
	a.mu.Unlock()

	a2 := newDriverAt(t, dir)
	list, err := a2.List(ctxT(t, time.Minute))
	if err != nil || len(list) != 1 || list[0].ID != s.ID || list[0].State != driver.StateRunning || list[0].PID != st1.PID {
		t.Fatalf("List after restart = %+v, %v; want %s running as pid %d", list, err, s.ID, st1.PID)
	}
	waitCounter(t, a2, s.ID, 0, c)
	if _, err := a2.Stats(ctxT(t, time.Minute), s.ID); err != nil {
		t.Errorf("Stats after restart: %v", err)
	}
	if err := a2.Stop(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	if alive(st1.PID, qmpSock(a2.taskDir(s.ID))) {
		t.Error("QEMU still alive after Stop")
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	d := newDriver(t)
	if _, err := os.Stat("/dev/kvm"); err != nil && d.Accel() != "tcg" {
		t.Errorf("no /dev/kvm but accelerator %q", d.Accel())
	}
	if a := d.Accel(); a != "tcg" && a != "kvm" {
		t.Errorf("accelerator %q", a)
	}
	if _, err := New(context.Background(), Config{DataDir: t.TempDir(), Accel: "hvf"}); err == nil {
		t.Error("New accepted accelerator hvf")
	}
	big := spec("big")
	big.MemoryBytes = 64 << 30
	if err := d.Start(ctxT(t, time.Minute), big); !errors.Is(err, driver.ErrInsufficient) {
		t.Errorf("Start with 64 GiB: %v, want ErrInsufficient", err)
	}
	if _, err := d.PrepareIncoming(ctxT(t, time.Minute), big); !errors.Is(err, driver.ErrInsufficient) {
		t.Errorf("PrepareIncoming with 64 GiB: %v, want ErrInsufficient", err)
	}
	if err := d.FinishIncoming(ctxT(t, time.Minute), "ghost"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("FinishIncoming unknown: %v", err)
	}
	s := spec("idle")
	if err := d.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	if err := d.ConfirmOut(ctxT(t, time.Minute), s.ID); !errors.Is(err, driver.ErrBusy) {
		t.Errorf("ConfirmOut without a migration: %v, want ErrBusy", err)
	}
	if err := d.FinishIncoming(ctxT(t, time.Minute), s.ID); !errors.Is(err, driver.ErrBusy) {
		t.Errorf("FinishIncoming on a running task: %v, want ErrBusy", err)
	}
	if _, err := d.MigrateOut(ctxT(t, time.Minute), s.ID, "a,b", driver.MigrationOptions{}, nil); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("MigrateOut to a bad socket path: %v", err)
	}
	if _, err := d.MigrateOut(ctxT(t, time.Minute), s.ID, "/s", driver.MigrationOptions{Bandwidth: -1}, nil); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("MigrateOut with negative bandwidth: %v", err)
	}
	// None of it changed the running task.
	c := waitCounter(t, d, s.ID, 0, 2)
	waitCounter(t, d, s.ID, 0, c)
	if st, err := d.Inspect(ctxT(t, time.Minute), s.ID); err != nil || st.State != driver.StateRunning {
		t.Errorf("task after bad requests: %+v, %v", st, err)
	}
	// A migration to a socket nobody listens on fails and the task runs on.
	if _, err := d.MigrateOut(ctxT(t, time.Minute), s.ID, filepath.Join(t.TempDir(), "nobody.sock"), driver.MigrationOptions{}, nil); err == nil {
		t.Error("MigrateOut to a dead socket succeeded")
	}
	c = waitCounter(t, d, s.ID, 0, 0)
	waitCounter(t, d, s.ID, 0, c)
	if st, err := d.Inspect(ctxT(t, time.Minute), s.ID); err != nil || st.State != driver.StateRunning {
		t.Errorf("task after a failed migration: %+v, %v", st, err)
	}
	// A paused task stays paused when a migration fails.
	if err := d.Pause(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.MigrateOut(ctxT(t, time.Minute), s.ID, filepath.Join(t.TempDir(), "nobody.sock"), driver.MigrationOptions{}, nil); err == nil {
		t.Error("MigrateOut to a dead socket succeeded")
	}
	if st, err := d.Inspect(ctxT(t, time.Minute), s.ID); err != nil || st.State != driver.StatePaused {
		t.Errorf("paused task after a failed migration: %+v, %v; want paused", st, err)
	}
	if err := d.Unpause(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
}
