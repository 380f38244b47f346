// Package drivertest is the conformance suite every driver.Driver passes.
//
// A driver's test calls Run with a Harness: a constructor for fresh driver
// instances (each one is a separate "node" with its own state directory) and
// a constructor for valid specs. The suite checks observable behaviour only:
// the life cycle (start, inspect, list, stats, stop), the error kinds of the
// driver package (ErrNotFound, ErrExists, ErrInvalidSpec), suspend on one
// node and resume on another with the workload continuing, and the optional
// capabilities (driver.Pauser, driver.LiveMigrator) when the driver has them.
//
// Workload continuity is checked through the task's log: Harness.Progress
// extracts the workload's progress counters from a piece of log, in order
// (ParseCounters reads lines "counter N"). After a suspend/resume or a
// migration, the first counter the resumed copy prints must be greater than
// the last one printed before the move: no reset, no restart from scratch.
package drivertest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// Harness tells the suite how to make drivers and specs.
type Harness struct {
	// NewDriver returns a fresh driver over its own state directory (a
	// "node"). The suite calls it more than once per test to get a second
	// node. It registers its own cleanup with t.
	NewDriver func(t *testing.T) driver.Driver
	// Spec returns a valid spec for a task with the given id whose
	// workload prints progress counters (see Progress).
	Spec func(id string) driver.Spec
	// InvalidSpecs, if set, returns extra specs the driver must refuse with
	// ErrInvalidSpec (the suite always adds its generic ones).
	InvalidSpecs func() []driver.Spec
	// Progress extracts the workload's progress counters from a log
	// excerpt, in the order printed. Nil means ParseCounters.
	Progress func(log []byte) []int64
	// Timeout bounds every wait for progress or a state (default 3 min:
	// emulated guests on a loaded machine are slow; a fast driver never
	// waits that long).
	Timeout time.Duration
	// Parallel runs the subtests in parallel.
	Parallel bool
}

// ParseCounters returns the values of the lines "counter N" in log, in
// order. Partial or garbled lines are skipped.
func ParseCounters(log []byte) []int64 {
	var out []int64
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(strings.TrimRight(sc.Text(), "\r"))
		i := strings.LastIndex(line, "counter ")
		if i < 0 {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(line[i+len("counter "):]), 10, 64)
		if err != nil {
			continue
		}
		out = append(out, n)
	}
	return out
}

func (h *Harness) defaults() {
	if h.Progress == nil {
		h.Progress = ParseCounters
	}
	if h.Timeout == 0 {
		h.Timeout = 3 * time.Minute
	}
}

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	t.Helper()
	h.defaults()
	tests := []struct {
		name string
		fn   func(t *testing.T, h *Harness)
	}{
		{"Lifecycle", testLifecycle},
		{"UnknownTask", testUnknownTask},
		{"DuplicateStart", testDuplicateStart},
		{"InvalidSpec", testInvalidSpec},
		{"SuspendResumeOtherNode", testSuspendResume},
		{"ResumeBadImage", testResumeBadImage},
		{"Pause", testPause},
		{"LiveMigrate", testLiveMigrate},
		{"LiveMigrateAbort", testLiveMigrateAbort},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if h.Parallel {
				t.Parallel()
			}
			tc.fn(t, &h)
		})
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// start starts spec on d and registers a best-effort Stop at cleanup.
func start(t *testing.T, h *Harness, d driver.Driver, spec driver.Spec) {
	t.Helper()
	if err := d.Start(ctxFor(t, h.Timeout), spec); err != nil {
		t.Fatalf("Start(%s): %v", spec.ID, err)
	}
	stopAtCleanup(t, d, spec.ID)
}

func stopAtCleanup(t *testing.T, d driver.Driver, id string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = d.Stop(ctx, id)
	})
}

// readLog returns the task's log from offset on (nil when missing).
func readLog(d driver.Driver, id string, offset int64) []byte {
	f, err := os.Open(d.LogPath(id))
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	b, _ := io.ReadAll(f)
	return b
}

func logSize(d driver.Driver, id string) int64 {
	fi, err := os.Stat(d.LogPath(id))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// waitProgress waits until the log (from offset) shows a counter greater
// than min and returns all counters seen from offset.
func waitProgress(t *testing.T, h *Harness, d driver.Driver, id string, offset, min int64) []int64 {
	t.Helper()
	deadline := time.Now().Add(h.Timeout)
	for {
		c := h.Progress(readLog(d, id, offset))
		if len(c) > 0 && c[len(c)-1] > min {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: no progress above %d in its log %s within %v (counters seen: %v)",
				id, min, d.LogPath(id), h.Timeout, tail(c))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(c []int64) []int64 {
	if len(c) > 5 {
		return c[len(c)-5:]
	}
	return c
}

func last(c []int64) int64 {
	if len(c) == 0 {
		return -1
	}
	return c[len(c)-1]
}

// waitState polls Inspect until the task is in want.
func waitState(t *testing.T, h *Harness, d driver.Driver, id string, want driver.State) driver.Status {
	t.Helper()
	deadline := time.Now().Add(h.Timeout)
	for {
		st, err := d.Inspect(ctxFor(t, 30*time.Second), id)
		if err == nil && st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: state %q (err %v), want %q within %v", id, st.State, err, want, h.Timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("%s: err = %v, want ErrNotFound", what, err)
	}
}

// checkContinues asserts the counters printed after a move continue the
// ones printed before it: the first one after is greater than the last one
// before.
func checkContinues(t *testing.T, id string, before int64, after []int64) {
	t.Helper()
	if len(after) == 0 {
		t.Fatalf("task %s: no counter after the move", id)
	}
	if after[0] <= before {
		t.Fatalf("task %s: workload restarted: first counter after the move %d <= last before %d", id, after[0], before)
	}
}

func testLifecycle(t *testing.T, h *Harness) {
	d := h.NewDriver(t)
	if d.Kind() == "" {
		t.Error("Kind() is empty")
	}
	spec := h.Spec("life")
	start(t, h, d, spec)
	if d.LogPath(spec.ID) == "" {
		t.Fatal("LogPath is empty")
	}
	c := waitProgress(t, h, d, spec.ID, 0, 0)
	st := waitState(t, h, d, spec.ID, driver.StateRunning)
	if st.ID != spec.ID || st.Epoch != spec.Epoch || st.Kind != d.Kind() {
		t.Errorf("Inspect = %+v, want id %s epoch %d kind %s", st, spec.ID, spec.Epoch, d.Kind())
	}
	if st.StartedAt.IsZero() {
		t.Error("Inspect: StartedAt is zero")
	}
	list, err := d.List(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	found := false
	for _, s := range list {
		found = found || s.ID == spec.ID
	}
	if !found {
		t.Errorf("List = %+v, missing %s", list, spec.ID)
	}
	// Progress keeps coming: the workload runs.
	waitProgress(t, h, d, spec.ID, 0, last(c))
	stats, err := d.Stats(ctxFor(t, 30*time.Second), spec.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if stats.MemoryBytes <= 0 || stats.CPUTime < 0 || stats.Age <= 0 {
		t.Errorf("Stats = %+v, want memory > 0, cpu >= 0, age > 0", stats)
	}
	if err := d.Stop(ctxFor(t, h.Timeout), spec.ID); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	_, err = d.Inspect(ctxFor(t, 30*time.Second), spec.ID)
	wantNotFound(t, "Inspect after Stop", err)
	list, err = d.List(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for _, s := range list {
		if s.ID == spec.ID {
			t.Errorf("List after Stop still has %s: %+v", spec.ID, s)
		}
	}
	if _, err := os.Stat(d.LogPath(spec.ID)); err != nil {
		t.Errorf("log gone after Stop: %v", err)
	}
}

func testUnknownTask(t *testing.T, h *Harness) {
	d := h.NewDriver(t)
	ctx := ctxFor(t, time.Minute)
	const id = "no-such-task"
	wantNotFound(t, "Stop", d.Stop(ctx, id))
	_, err := d.Inspect(ctx, id)
	wantNotFound(t, "Inspect", err)
	_, err = d.Stats(ctx, id)
	wantNotFound(t, "Stats", err)
	_, err = d.Suspend(ctx, id, t.TempDir())
	wantNotFound(t, "Suspend", err)
	if p, ok := d.(driver.Pauser); ok {
		wantNotFound(t, "Pause", p.Pause(ctx, id))
		wantNotFound(t, "Unpause", p.Unpause(ctx, id))
	}
	if m, ok := d.(driver.LiveMigrator); ok {
		_, err := m.MigrateOut(ctx, id, filepath.Join(t.TempDir(), "sock"), driver.MigrationOptions{}, nil)
		wantNotFound(t, "MigrateOut", err)
		wantNotFound(t, "FinishIncoming", m.FinishIncoming(ctx, id))
		wantNotFound(t, "AbortIncoming", m.AbortIncoming(ctx, id))
		wantNotFound(t, "ConfirmOut", m.ConfirmOut(ctx, id))
		wantNotFound(t, "AbortOut", m.AbortOut(ctx, id))
		wantNotFound(t, "CancelOut", m.CancelOut(ctx, id))
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("List on a fresh driver = %v, %v; want empty", list, err)
	}
}

func testDuplicateStart(t *testing.T, h *Harness) {
	d := h.NewDriver(t)
	spec := h.Spec("dup")
	start(t, h, d, spec)
	err := d.Start(ctxFor(t, h.Timeout), spec)
	if !errors.Is(err, driver.ErrExists) {
		t.Fatalf("second Start: err = %v, want ErrExists", err)
	}
	err = d.Resume(ctxFor(t, h.Timeout), spec, t.TempDir())
	if !errors.Is(err, driver.ErrExists) {
		t.Errorf("Resume over a running task: err = %v, want ErrExists", err)
	}
	// The first copy is untouched.
	c := waitProgress(t, h, d, spec.ID, 0, 0)
	waitProgress(t, h, d, spec.ID, 0, last(c))
	waitState(t, h, d, spec.ID, driver.StateRunning)
}

func testInvalidSpec(t *testing.T, h *Harness) {
	d := h.NewDriver(t)
	valid := h.Spec("valid")
	var bad []struct {
		what string
		spec driver.Spec
	}
	add := func(what string, mod func(s *driver.Spec)) {
		s := h.Spec("bad")
		mod(&s)
		bad = append(bad, struct {
			what string
			spec driver.Spec
		}{what, s})
	}
	add("empty id", func(s *driver.Spec) { s.ID = "" })
	add("id with a slash", func(s *driver.Spec) { s.ID = "../escape" })
	add("id with a space", func(s *driver.Spec) { s.ID = "a b" })
	add("negative memory", func(s *driver.Spec) { s.MemoryBytes = -1 })
	add("negative cpus", func(s *driver.Spec) { s.CPUs = -1 })
	add("neither vm nor process", func(s *driver.Spec) { s.VM, s.Process = nil, nil })
	add("both vm and process", func(s *driver.Spec) {
		s.VM, s.Process = &driver.VMSpec{}, &driver.ProcessSpec{Command: []string{"true"}}
	})
	if h.InvalidSpecs != nil {
		for i, s := range h.InvalidSpecs() {
			bad = append(bad, struct {
				what string
				spec driver.Spec
			}{"harness invalid spec " + strconv.Itoa(i), s})
		}
	}
	for _, b := range bad {
		err := d.Start(ctxFor(t, h.Timeout), b.spec)
		if err == nil {
			stopAtCleanup(t, d, b.spec.ID)
		}
		if !errors.Is(err, driver.ErrInvalidSpec) {
			t.Errorf("Start with %s: err = %v, want ErrInvalidSpec", b.what, err)
		}
		err = d.Resume(ctxFor(t, h.Timeout), b.spec, t.TempDir())
		if err == nil {
			stopAtCleanup(t, d, b.spec.ID)
		}
		if !errors.Is(err, driver.ErrInvalidSpec) {
			t.Errorf("Resume with %s: err = %v, want ErrInvalidSpec", b.what, err)
		}
	}
	// Nothing was started.
	list, err := d.List(ctxFor(t, 30*time.Second))
	if err != nil || len(list) != 0 {
		t.Errorf("List after refused specs = %+v, %v; want empty", list, err)
	}
	if errors.Is(validate(valid), driver.ErrInvalidSpec) {
		t.Errorf("harness Spec is not valid")
	}
}

// validate is the generic part of spec validation the suite relies on: it
// lets the suite check that the harness's own spec is sane.
func validate(s driver.Spec) error {
	if s.ID == "" || (s.VM == nil) == (s.Process == nil) {
		return driver.ErrInvalidSpec
	}
	return nil
}

// copyDir copies an image directory, as an agent moving it to another node.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copy image %s to %s: %v", src, dst, err)
	}
}

func testSuspendResume(t *testing.T, h *Harness) {
	a, b := h.NewDriver(t), h.NewDriver(t)
	spec := h.Spec("move")
	start(t, h, a, spec)
	c := waitProgress(t, h, a, spec.ID, 0, 0)
	waitProgress(t, h, a, spec.ID, 0, last(c))

	dirA := t.TempDir()
	img, err := a.Suspend(ctxFor(t, h.Timeout), spec.ID, dirA)
	if err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if img.Dir != dirA || img.Bytes <= 0 {
		t.Errorf("Suspend image = %+v, want dir %s and bytes > 0", img, dirA)
	}
	before := last(h.Progress(readLog(a, spec.ID, 0)))
	_, err = a.Inspect(ctxFor(t, 30*time.Second), spec.ID)
	wantNotFound(t, "Inspect after Suspend", err)

	// The agent moves the image to the other node.
	dirB := t.TempDir()
	copyDir(t, dirA, dirB)
	spec.Epoch++
	off := logSize(b, spec.ID)
	if err := b.Resume(ctxFor(t, h.Timeout), spec, dirB); err != nil {
		t.Fatalf("Resume on the other node: %v", err)
	}
	stopAtCleanup(t, b, spec.ID)
	after := waitProgress(t, h, b, spec.ID, off, before)
	checkContinues(t, spec.ID, before, after)
	st := waitState(t, h, b, spec.ID, driver.StateRunning)
	if st.Epoch != spec.Epoch {
		t.Errorf("resumed epoch = %d, want %d", st.Epoch, spec.Epoch)
	}

	// Suspend and resume again on the first node (round trip).
	dirA2 := t.TempDir()
	if _, err := b.Suspend(ctxFor(t, h.Timeout), spec.ID, dirA2); err != nil {
		t.Fatalf("second Suspend: %v", err)
	}
	before = last(h.Progress(readLog(b, spec.ID, off)))
	off = logSize(a, spec.ID)
	spec.Epoch++
	if err := a.Resume(ctxFor(t, h.Timeout), spec, dirA2); err != nil {
		t.Fatalf("Resume on the first node: %v", err)
	}
	stopAtCleanup(t, a, spec.ID)
	after = waitProgress(t, h, a, spec.ID, off, before)
	checkContinues(t, spec.ID, before, after)
}

func testResumeBadImage(t *testing.T, h *Harness) {
	d := h.NewDriver(t)
	spec := h.Spec("badimage")
	empty := t.TempDir()
	if err := d.Resume(ctxFor(t, h.Timeout), spec, empty); err == nil {
		stopAtCleanup(t, d, spec.ID)
		t.Fatalf("Resume from an empty directory succeeded")
	}
	garbage := t.TempDir()
	for _, name := range []string{"state", "image", "checkpoint", "vmstate", "meta.json"} {
		if err := os.WriteFile(filepath.Join(garbage, name), []byte("not an image\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Resume(ctxFor(t, h.Timeout), spec, garbage); err == nil {
		stopAtCleanup(t, d, spec.ID)
		// A driver may only notice late; it must not report running.
		time.Sleep(2 * time.Second)
		if st, err := d.Inspect(ctxFor(t, 30*time.Second), spec.ID); err == nil && st.State == driver.StateRunning {
			t.Fatalf("Resume from a garbage image runs: %+v", st)
		}
		return
	}
	if _, err := d.Inspect(ctxFor(t, 30*time.Second), spec.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("failed Resume left a task behind: Inspect err = %v", err)
	}
}

func testPause(t *testing.T, h *Harness) {
	d := h.NewDriver(t)
	p, ok := d.(driver.Pauser)
	if !ok {
		t.Logf("driver %s has no Pauser; nothing to check", d.Kind())
		return
	}
	spec := h.Spec("pause")
	start(t, h, d, spec)
	c := waitProgress(t, h, d, spec.ID, 0, 0)
	if err := p.Pause(ctxFor(t, h.Timeout), spec.ID); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	waitState(t, h, d, spec.ID, driver.StatePaused)
	time.Sleep(500 * time.Millisecond) // let output written before the pause land
	frozen := last(h.Progress(readLog(d, spec.ID, 0)))
	time.Sleep(1500 * time.Millisecond)
	if now := last(h.Progress(readLog(d, spec.ID, 0))); now != frozen {
		t.Errorf("paused task made progress: %d -> %d", frozen, now)
	}
	if err := p.Unpause(ctxFor(t, h.Timeout), spec.ID); err != nil {
		t.Fatalf("Unpause: %v", err)
	}
	waitState(t, h, d, spec.ID, driver.StateRunning)
	waitProgress(t, h, d, spec.ID, 0, max(frozen, last(c)))
}

// migrate runs one live migration from src to dst and returns the final
// progress. The socket is handed over directly (no tunnel).
func migrate(t *testing.T, h *Harness, src, dst driver.Driver, spec driver.Spec) driver.Progress {
	t.Helper()
	ms, md := src.(driver.LiveMigrator), dst.(driver.LiveMigrator)
	sock, err := md.PrepareIncoming(ctxFor(t, h.Timeout), spec)
	if err != nil {
		t.Fatalf("PrepareIncoming: %v", err)
	}
	stopAtCleanup(t, dst, spec.ID)
	if st, err := dst.Inspect(ctxFor(t, 30*time.Second), spec.ID); err != nil || st.State == driver.StateRunning {
		t.Fatalf("destination after PrepareIncoming: %+v, %v; want present and not running", st, err)
	}
	calls := 0
	final, err := ms.MigrateOut(ctxFor(t, h.Timeout), spec.ID, sock, driver.MigrationOptions{MaxDowntime: 100 * time.Millisecond}, func(driver.Progress) { calls++ })
	if err != nil {
		t.Fatalf("MigrateOut: %v", err)
	}
	if final.Status != "completed" {
		t.Errorf("MigrateOut final status %q, want completed", final.Status)
	}
	if st, err := src.Inspect(ctxFor(t, 30*time.Second), spec.ID); err != nil || st.State == driver.StateRunning {
		t.Errorf("source after MigrateOut: %+v, %v; want present and not running", st, err)
	}
	return final
}

func testLiveMigrate(t *testing.T, h *Harness) {
	a, b := h.NewDriver(t), h.NewDriver(t)
	if _, ok := a.(driver.LiveMigrator); !ok {
		t.Logf("driver %s has no LiveMigrator; nothing to check", a.Kind())
		return
	}
	spec := h.Spec("live")
	start(t, h, a, spec)
	c := waitProgress(t, h, a, spec.ID, 0, 0)
	waitProgress(t, h, a, spec.ID, 0, last(c))

	for i, hop := range []struct{ src, dst driver.Driver }{{a, b}, {b, a}} {
		off := logSize(hop.dst, spec.ID)
		spec.Epoch++
		migrate(t, h, hop.src, hop.dst, spec)
		before := last(h.Progress(readLog(hop.src, spec.ID, 0)))
		if err := hop.dst.(driver.LiveMigrator).FinishIncoming(ctxFor(t, h.Timeout), spec.ID); err != nil {
			t.Fatalf("hop %d FinishIncoming: %v", i, err)
		}
		if err := hop.src.(driver.LiveMigrator).ConfirmOut(ctxFor(t, h.Timeout), spec.ID); err != nil {
			t.Fatalf("hop %d ConfirmOut: %v", i, err)
		}
		_, err := hop.src.Inspect(ctxFor(t, 30*time.Second), spec.ID)
		wantNotFound(t, "Inspect on the source after ConfirmOut", err)
		after := waitProgress(t, h, hop.dst, spec.ID, off, before)
		checkContinues(t, spec.ID, before, after)
		st := waitState(t, h, hop.dst, spec.ID, driver.StateRunning)
		if st.Epoch != spec.Epoch {
			t.Errorf("hop %d: destination epoch %d, want %d", i, st.Epoch, spec.Epoch)
		}
	}
}

func testLiveMigrateAbort(t *testing.T, h *Harness) {
	a, b := h.NewDriver(t), h.NewDriver(t)
	if _, ok := a.(driver.LiveMigrator); !ok {
		t.Logf("driver %s has no LiveMigrator; nothing to check", a.Kind())
		return
	}
	spec := h.Spec("abort")
	start(t, h, a, spec)
	c := waitProgress(t, h, a, spec.ID, 0, 0)
	dspec := spec
	dspec.Epoch++
	migrate(t, h, a, b, dspec)
	// The move is not committed: the destination is dropped, the source
	// resumes and continues from where it was.
	if err := b.(driver.LiveMigrator).AbortIncoming(ctxFor(t, h.Timeout), spec.ID); err != nil {
		t.Fatalf("AbortIncoming: %v", err)
	}
	_, err := b.Inspect(ctxFor(t, 30*time.Second), spec.ID)
	wantNotFound(t, "Inspect on the destination after AbortIncoming", err)
	before := last(h.Progress(readLog(a, spec.ID, 0)))
	if err := a.(driver.LiveMigrator).AbortOut(ctxFor(t, h.Timeout), spec.ID); err != nil {
		t.Fatalf("AbortOut: %v", err)
	}
	st := waitState(t, h, a, spec.ID, driver.StateRunning)
	if st.Epoch != spec.Epoch {
		t.Errorf("source epoch after AbortOut = %d, want %d", st.Epoch, spec.Epoch)
	}
	after := waitProgress(t, h, a, spec.ID, 0, max(before, last(c)))
	if last(after) <= before {
		t.Errorf("source did not continue after AbortOut")
	}
}
