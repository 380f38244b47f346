package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// migrateWith live-migrates s from a to b with opts and checks the counter
// continues.
func migrateWith(t *testing.T, a, b *Driver, s driver.Spec, opts driver.MigrationOptions) driver.Progress {
	t.Helper()
	sock, err := b.PrepareIncoming(ctxT(t, time.Minute), s)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.MigrateOut(ctxT(t, 4*time.Minute), s.ID, sock, opts, nil)
	if err != nil {
		t.Fatalf("MigrateOut %+v: %v", opts, err)
	}
	before := lastCounter(a, s.ID, 0)
	if err := b.FinishIncoming(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.ConfirmOut(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, b, s.ID, 0, before)
	if after := counters(b, s.ID, 0); after[0] <= before {
		t.Fatalf("counter reset: %d after, %d before", after[0], before)
	}
	return p
}

// TestDirtyWorkloadMigrates runs the "dirty" workload (rewriting guest
// memory) and live-migrates it with auto-converge.
func TestDirtyWorkloadMigrates(t *testing.T) {
	t.Parallel()
	a, b := newDriver(t), newDriver(t)
	s := spec("dirty")
	s.VM.Workload = "dirty 5 8"
	if err := a.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a, s.ID, 0, 10)
	s.Epoch++
	p := migrateWith(t, a, b, s, driver.MigrationOptions{MaxDowntime: 100 * time.Millisecond, AutoConverge: true})
	t.Logf("dirty 5 MB/s, auto-converge: total %v, downtime %v, transferred %d B", p.TotalTime, p.Downtime, p.TransferredBytes)
	// And back with post-copy, bandwidth-limited so that pre-copy alone
	// would take a while. The destination stays paused until the move is
	// complete (FinishIncoming), post-copy or not.
	s.Epoch++
	sawPostcopy := false
	opts := driver.MigrationOptions{PostCopy: true, Bandwidth: 32 << 20}
	sock, err := a.PrepareIncoming(ctxT(t, time.Minute), s)
	if err != nil {
		t.Fatal(err)
	}
	before := lastCounter(b, s.ID, 0)
	off := logSize(a, s.ID)
	p, err = b.MigrateOut(ctxT(t, 4*time.Minute), s.ID, sock, opts, func(p driver.Progress) {
		sawPostcopy = sawPostcopy || p.Status == "postcopy-active"
	})
	if err != nil {
		log, _ := os.ReadFile(b.LogPath(s.ID))
		st, _ := b.Inspect(ctxT(t, time.Minute), s.ID)
		t.Fatalf("post-copy MigrateOut: %v (source %+v; its console ends %q)", err, st, log[max(0, len(log)-1500):])
	}
	if err := a.FinishIncoming(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.ConfirmOut(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, a, s.ID, off, before)
	if after := counters(a, s.ID, off); after[0] <= before {
		t.Fatalf("counter reset after post-copy: %d after, %d before", after[0], before)
	}
	t.Logf("post-copy (entered post-copy phase: %v): total %v, downtime %v, transferred %d B", sawPostcopy, p.TotalTime, p.Downtime, p.TransferredBytes)
}

// TestResumeGarbageState: an image whose record is fine but whose state is
// garbage fails to load, and leaves nothing behind.
func TestResumeGarbageState(t *testing.T) {
	t.Parallel()
	d := newDriver(t)
	s := spec("garbage")
	m, err := d.shape(s)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := writeJSON(filepath.Join(dir, imageMeta), record{Spec: s, Machine: m}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte("QEVM but not really\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctxT(t, time.Minute), s, dir); err == nil {
		t.Fatal("Resume from garbage state succeeded")
	}
	if _, err := d.Inspect(ctxT(t, time.Minute), s.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("failed Resume left a task: %v", err)
	}
	if _, err := os.Stat(d.taskDir(s.ID)); !os.IsNotExist(err) {
		t.Errorf("failed Resume left its task dir: %v", err)
	}
	// A spec that does not fit the image is refused before QEMU starts.
	s.MemoryBytes = 256 << 20
	if err := d.Resume(ctxT(t, time.Minute), s, dir); !errors.Is(err, driver.ErrInvalidSpec) {
		t.Errorf("Resume with other memory: %v, want ErrInvalidSpec", err)
	}
}

// TestReattachMidMigration: the source's driver goes away while an
// outgoing migration is in flight; a new driver over the same data dir
// finds the migration and CancelOut leaves the source running.
func TestReattachMidMigration(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := newDriverAt(t, dir), newDriver(t)
	s, done := slowMigration(t, a, b, "midflight")
	a.mu.Lock()
	for _, tk := range a.tasks {
		tk.qmp.Close()
	}
	a.tasks = map[string]*task{}
	a.mu.Unlock()
	<-done // the old driver's MigrateOut ends with its connection

	a2 := newDriverAt(t, dir)
	st, err := a2.Inspect(ctxT(t, time.Minute), s.ID)
	if err != nil || st.State != driver.StateMigrating {
		t.Fatalf("re-attached source: %+v, %v; want migrating", st, err)
	}
	if err := a2.CancelOut(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatalf("CancelOut after re-attach: %v", err)
	}
	st, err = a2.Inspect(ctxT(t, time.Minute), s.ID)
	if err != nil || st.State != driver.StateRunning {
		t.Fatalf("source after CancelOut: %+v, %v; want running", st, err)
	}
	c := lastCounter(a2, s.ID, 0)
	waitCounter(t, a2, s.ID, 0, c)
	if err := b.AbortIncoming(ctxT(t, time.Minute), s.ID); err != nil {
		t.Errorf("AbortIncoming: %v", err)
	}
}

// TestGuestExit: a workload that ends powers the guest off; the task is
// then exited (not failed), and Stop forgets it.
func TestGuestExit(t *testing.T) {
	t.Parallel()
	d := newDriver(t)
	s := spec("exits")
	s.VM.Workload = "echo bye"
	if err := d.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st, err := d.Inspect(ctxT(t, time.Minute), s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == driver.StateExited {
			break
		}
		if st.State == driver.StateFailed || time.Now().After(deadline) {
			t.Fatalf("state %+v, want exited", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(d.LogPath(s.ID))
	if !strings.Contains(string(log), "bye") {
		t.Errorf("console log lacks the workload's output: %q", log)
	}
	if err := d.Stop(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Inspect(ctxT(t, time.Minute), s.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("after Stop: %v", err)
	}
}

// TestCheckpoint: a checkpoint leaves the guest running; resuming it on
// another node continues from the checkpoint, not from scratch.
func TestCheckpoint(t *testing.T) {
	t.Parallel()
	a, b := newDriver(t), newDriver(t)
	s := spec("ckpt")
	if err := a.Start(ctxT(t, time.Minute), s); err != nil {
		t.Fatal(err)
	}
	c := waitCounter(t, a, s.ID, 0, 5)
	dir := t.TempDir()
	img, err := a.Checkpoint(ctxT(t, 3*time.Minute), s.ID, dir)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bytes <= 0 || img.Dir != dir {
		t.Errorf("image %+v", img)
	}
	if st, err := a.Inspect(ctxT(t, time.Minute), s.ID); err != nil || st.State != driver.StateRunning {
		t.Fatalf("after Checkpoint: %+v, %v; want running", st, err)
	}
	after := lastCounter(a, s.ID, 0)
	waitCounter(t, a, s.ID, 0, after)
	if err := a.Stop(ctxT(t, time.Minute), s.ID); err != nil {
		t.Fatal(err)
	}
	s.Epoch++
	if err := b.Resume(ctxT(t, 3*time.Minute), s, dir); err != nil {
		t.Fatal(err)
	}
	first := waitCounter(t, b, s.ID, 0, c)
	if got := counters(b, s.ID, 0)[0]; got <= c {
		t.Fatalf("resumed checkpoint restarted: first counter %d, before checkpoint %d", got, c)
	}
	t.Logf("checkpoint: %d B, paused %v; counter %d before, %d after resume", img.Bytes, img.Took, c, first)
}
