package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrycluster/ferry/driver"
)

// Names inside a suspend image directory.
const (
	stateFile = "vmstate"
	imageMeta = "task.json"
)

// unlimitedBandwidth stands for "no limit" (QEMU's default is 128 MiB/s).
const unlimitedBandwidth = 1 << 40

// migrateInfo is the part of query-migrate we read.
type migrateInfo struct {
	Status           string `json:"status"`
	TotalTime        int64  `json:"total-time"`
	SetupTime        int64  `json:"setup-time"`
	ExpectedDowntime int64  `json:"expected-downtime"`
	Downtime         int64  `json:"downtime"`
	RAM              *struct {
		Transferred    int64   `json:"transferred"`
		Remaining      int64   `json:"remaining"`
		Total          int64   `json:"total"`
		DirtyPagesRate int64   `json:"dirty-pages-rate"`
		DirtySyncCount int64   `json:"dirty-sync-count"`
		Duplicate      int64   `json:"duplicate"` // zero pages (a header each)
		Normal         int64   `json:"normal"`    // pages sent whole
		Mbps           float64 `json:"mbps"`
		DowntimeBytes  int64   `json:"downtime-bytes"`
	} `json:"ram"`
	ErrorDesc string `json:"error-desc"`
}

func (mi migrateInfo) progress() driver.Progress {
	p := driver.Progress{
		Status:           mi.Status,
		ExpectedDowntime: time.Duration(mi.ExpectedDowntime) * time.Millisecond,
		Downtime:         time.Duration(mi.Downtime) * time.Millisecond,
		TotalTime:        time.Duration(mi.TotalTime) * time.Millisecond,
	}
	if mi.RAM != nil {
		p.TransferredBytes = mi.RAM.Transferred
		p.RemainingBytes = mi.RAM.Remaining
		p.TotalBytes = mi.RAM.Total
		p.DirtyRate = mi.RAM.DirtyPagesRate
	}
	return p
}

// shellQuote quotes s for /bin/sh (QEMU runs exec: URIs through it).
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// setMigration sets capabilities and parameters before an outgoing migration.
func (t *task) setMigration(ctx context.Context, opts driver.MigrationOptions) error {
	caps := []map[string]any{
		{"capability": "events", "state": true},
		{"capability": "auto-converge", "state": opts.AutoConverge},
		{"capability": "postcopy-ram", "state": opts.PostCopy},
	}
	if err := t.execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return err
	}
	bw := opts.Bandwidth
	if bw <= 0 {
		bw = unlimitedBandwidth
	}
	params := map[string]any{"max-bandwidth": bw}
	if opts.MaxDowntime > 0 {
		ms := opts.MaxDowntime.Milliseconds()
		if ms < 1 {
			ms = 1
		}
		params["downtime-limit"] = ms
	}
	return t.execute(ctx, "migrate-set-parameters", params, nil)
}

// runMigration starts a migration to uri and polls it until it ends. On
// ctx expiry it cancels the migration. startPostcopy switches to post-copy
// after the first full pass.
func (t *task) runMigration(ctx context.Context, uri string, startPostcopy bool, progress func(driver.Progress)) (migrateInfo, error) {
	if err := t.execute(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return migrateInfo{}, err
	}
	postcopyStarted := false
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var mi migrateInfo
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := t.execute(qctx, "query-migrate", nil, &mi)
		cancel()
		if err != nil {
			return migrateInfo{}, err
		}
		p := mi.progress()
		if progress != nil && mi.Status != "" {
			progress(p)
		}
		switch mi.Status {
		case "completed":
			// QEMU reports "completed" a moment before it fills in the
			// total time and downtime: ask again briefly for them.
			for i := 0; i < 20 && mi.TotalTime == 0; i++ {
				time.Sleep(10 * time.Millisecond)
				qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				t.execute(qctx, "query-migrate", nil, &mi)
				cancel()
			}
			if progress != nil {
				progress(mi.progress())
			}
			return mi, nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("%w: qemu task %q: migration %s: %s", driver.ErrTaskFailed, t.id, mi.Status, mi.ErrorDesc)
		}
		if startPostcopy && !postcopyStarted && mi.Status == "active" && mi.RAM != nil && mi.RAM.DirtySyncCount >= 2 {
			if err := t.execute(ctx, "migrate-start-postcopy", nil, nil); err == nil {
				postcopyStarted = true
			}
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			t.execute(cctx, "migrate_cancel", nil, nil)
			t.waitMigrationEnd(cctx)
			cancel()
			return mi, fmt.Errorf("%w: qemu task %q: migration: %v", driver.ErrTimeout, t.id, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitMigrationEnd polls until no migration is active.
func (t *task) waitMigrationEnd(ctx context.Context) {
	for ctx.Err() == nil {
		var mi migrateInfo
		if err := t.execute(ctx, "query-migrate", nil, &mi); err != nil {
			return
		}
		switch mi.Status {
		case "", "none", "completed", "failed", "cancelled":
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ensureRunning resumes the guest unless it is running or was paused by
// Pause (an operation that failed or was aborted leaves the guest as the
// caller had it).
func (t *task) ensureRunning(ctx context.Context) error {
	t.mu.Lock()
	userPaused := t.userPaused
	t.mu.Unlock()
	if userPaused {
		return nil
	}
	var qs struct {
		Status string `json:"status"`
	}
	if err := t.execute(ctx, "query-status", nil, &qs); err != nil {
		return err
	}
	if qs.Status == "running" {
		return nil
	}
	return t.execute(ctx, "cont", nil, nil)
}

// Suspend implements driver.Driver: stop the guest, migrate its state into
// dir/vmstate (through a temporary name, fsynced, then renamed: a partial
// image never replaces a committed one), then quit QEMU. On error the guest
// runs on.
func (d *Driver) Suspend(ctx context.Context, id, dir string) (driver.Image, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Image{}, err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return driver.Image{}, fmt.Errorf("qemu task %q: suspend image dir %q: not a directory", id, dir)
	}
	if err := t.begin(opSuspending); err != nil {
		return driver.Image{}, err
	}
	defer t.setOp(opNone)
	began := time.Now()
	tmp := filepath.Join(dir, "."+stateFile+".tmp")
	final := filepath.Join(dir, stateFile)
	fail := func(err error) (driver.Image, error) {
		os.Remove(tmp)
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if rerr := t.ensureRunning(rctx); rerr != nil {
			d.log.Error("suspend failed and the guest did not resume", "task", id, "err", rerr)
		}
		return driver.Image{}, err
	}
	if err := t.execute(ctx, "stop", nil, nil); err != nil {
		return fail(err)
	}
	if err := t.setMigration(ctx, driver.MigrationOptions{}); err != nil {
		return fail(err)
	}
	if _, err := t.runMigration(ctx, "exec:cat > "+shellQuote(tmp), false, nil); err != nil {
		return fail(err)
	}
	if err := syncFile(tmp); err != nil {
		return fail(fmt.Errorf("qemu task %q: sync suspend image: %w", id, err))
	}
	t.mu.Lock()
	rec := record{Spec: t.spec, Machine: t.machine, Role: roleRun, StartedAt: t.startedAt, Accel: d.accel}
	t.mu.Unlock()
	if err := writeJSON(filepath.Join(dir, imageMeta), rec); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	syncFile(dir)
	took := time.Since(began)
	fi, _ := os.Stat(final)
	// The image is committed: the guest may go.
	d.discard(t)
	d.log.Info("suspended", "task", id, "bytes", fi.Size(), "took", took)
	return driver.Image{Dir: dir, Bytes: fi.Size(), Took: took}, nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// readImage reads a suspend image's record and checks the spec fits it.
func (d *Driver) readImage(spec driver.Spec, m machine, dir string) (machine, string, error) {
	state := filepath.Join(dir, stateFile)
	if fi, err := os.Stat(state); err != nil || !fi.Mode().IsRegular() {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: %s holds no suspend image (%s)", driver.ErrInvalidSpec, spec.ID, dir, stateFile)
	}
	b, err := os.ReadFile(filepath.Join(dir, imageMeta))
	var rec record
	if err != nil || json.Unmarshal(b, &rec) != nil {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: %s: unreadable %s", driver.ErrInvalidSpec, spec.ID, dir, imageMeta)
	}
	img := rec.Machine
	if img.MemoryMiB < 48 || img.CPUs < 1 || img.CPUs > d.cfg.MaxCPUs || !cmdlineRE.MatchString(img.Append) || len(img.Append) > 2048 {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: %s: %s records an impossible machine (memory %d MiB, %d cpus)",
			driver.ErrInvalidSpec, spec.ID, dir, imageMeta, img.MemoryMiB, img.CPUs)
	}
	if spec.MemoryBytes != 0 && m.MemoryMiB != img.MemoryMiB {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: memory %d MiB, but the image was saved with %d MiB", driver.ErrInvalidSpec, spec.ID, m.MemoryMiB, img.MemoryMiB)
	}
	// The state loads only into the same machine shape; the kernel and
	// initrd are this node's (the same image, placed by the agent).
	if img.TailKiB < 0 || img.TailKiB >= 1024 || img.TailKiB%8 != 0 {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: %s: %s records %d KiB of RAM tail (want 0-1016, a multiple of 8)",
			driver.ErrInvalidSpec, spec.ID, dir, imageMeta, img.TailKiB)
	}
	m.MemoryMiB, m.TailKiB, m.CPUs = img.MemoryMiB, img.TailKiB, img.CPUs
	if img.Append != "" {
		m.Append = img.Append
	}
	if m.MemoryMiB*mib > d.cfg.MaxMemoryBytes {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: image needs %d MiB, more than the %d MiB allowed", driver.ErrInsufficient, spec.ID, m.MemoryMiB, d.cfg.MaxMemoryBytes/mib)
	}
	return m, state, nil
}

// Resume implements driver.Driver: start QEMU paused with -incoming defer,
// load the state with migrate-incoming, then run.
func (d *Driver) Resume(ctx context.Context, spec driver.Spec, dir string) error {
	m, err := d.shape(spec)
	if err != nil {
		return err
	}
	t, err := d.reserve(spec.ID)
	if err != nil {
		return err
	}
	m, state, err := d.readImage(spec, m, dir)
	if err != nil {
		d.forget(t)
		return err
	}
	began := time.Now()
	fail := func(err error) error { d.discard(t); return err }
	if err := d.launch(ctx, t, spec, m, roleIncoming); err != nil {
		return fail(err)
	}
	if err := t.execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + shellQuote(state)}, nil); err != nil {
		return fail(err)
	}
	if err := t.waitIncoming(ctx); err != nil {
		return fail(err)
	}
	if err := t.execute(ctx, "cont", nil, nil); err != nil {
		return fail(err)
	}
	t.setOp(opNone)
	d.log.Info("resumed", "task", spec.ID, "from", dir, "took", time.Since(began))
	return nil
}

// waitIncoming polls the destination until its incoming migration has
// completed.
func (t *task) waitIncoming(ctx context.Context) error {
	for {
		var mi migrateInfo
		if err := t.execute(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%w: qemu task %q: incoming migration %s: %s", driver.ErrTaskFailed, t.id, mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: qemu task %q: waiting for incoming state: %v", driver.ErrTimeout, t.id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// IncomingSpec implements driver.IncomingSpecer: spec with the running
// guest's RAM tail, which the destination's machine must match (a guest
// resumed from an image saved before the tail existed runs without it;
// QEMU refuses a stream for RAM of another size).
func (d *Driver) IncomingSpec(id string, spec driver.Spec) (driver.Spec, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Spec{}, err
	}
	if spec.ID != id || spec.VM == nil {
		return driver.Spec{}, fmt.Errorf("%w: qemu task %q: incoming spec for %q without a vm section", driver.ErrInvalidSpec, id, spec.ID)
	}
	t.mu.Lock()
	tail := t.machine.TailKiB
	t.mu.Unlock()
	vm := *spec.VM // the caller's VMSpec stays as it was
	vm.RAMTailKiB = &tail
	spec.VM = &vm
	return spec, nil
}

// PrepareIncoming implements driver.LiveMigrator: start the destination
// paused, listening for the migration stream on a unix socket, with the
// source's RAM tail when the spec carries it (see IncomingSpec).
func (d *Driver) PrepareIncoming(ctx context.Context, spec driver.Spec) (string, error) {
	m, err := d.shape(spec)
	if err != nil {
		return "", err
	}
	if tail := spec.VM.RAMTailKiB; tail != nil {
		m.TailKiB = *tail // shape checked it is 0 or ramTailKiB
	}
	t, err := d.reserve(spec.ID)
	if err != nil {
		return "", err
	}
	if err := d.launch(ctx, t, spec, m, roleIncoming); err != nil {
		d.discard(t)
		return "", err
	}
	// Post-copy needs the capability on both sides; turn it on here so the
	// source may choose it (hosts without userfaultfd refuse: then only
	// pre-copy works).
	cap := []map[string]any{{"capability": "postcopy-ram", "state": true}}
	if err := t.execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": cap}, nil); err != nil {
		d.log.Debug("post-copy unavailable on destination", "task", spec.ID, "err", err)
	}
	sock := migrateSock(t.dir)
	if err := t.execute(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + sock}, nil); err != nil {
		d.discard(t)
		return "", err
	}
	t.setOp(opIncoming)
	d.log.Info("prepared incoming", "task", spec.ID, "socket", sock)
	return sock, nil
}

// MigrateOut implements driver.LiveMigrator: pre-copy (auto-converge and
// post-copy as options) to the unix socket, streaming progress; returns
// when QEMU reports completion, with the source paused.
func (d *Driver) MigrateOut(ctx context.Context, id, socket string, opts driver.MigrationOptions, progress func(driver.Progress)) (driver.Progress, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Progress{}, err
	}
	if opts.Bandwidth < 0 || opts.MaxDowntime < 0 {
		return driver.Progress{}, fmt.Errorf("%w: qemu task %q: negative bandwidth or downtime", driver.ErrInvalidSpec, id)
	}
	if socket == "" || strings.ContainsAny(socket, ",\x00") {
		return driver.Progress{}, fmt.Errorf("%w: qemu task %q: bad migration socket path %q", driver.ErrInvalidSpec, id, socket)
	}
	if err := t.begin(opOutgoing); err != nil {
		return driver.Progress{}, err
	}
	if err := t.setMigration(ctx, opts); err != nil {
		t.setOp(opNone)
		return driver.Progress{}, err
	}
	t.setWatched(true)
	mi, err := t.runMigration(ctx, "unix:"+socket, opts.PostCopy, progress)
	t.setWatched(false)
	final := mi.progress()
	if err != nil {
		// QEMU resumes a source whose migration failed; make sure.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if rerr := t.ensureRunning(rctx); rerr != nil && !errors.Is(rerr, driver.ErrTaskFailed) {
			d.log.Error("migration failed and the source did not resume", "task", id, "err", rerr)
		}
		cancel()
		t.setOp(opNone)
		return final, err
	}
	t.setOp(opOutDone)
	args := []any{"task", id, "total", final.TotalTime, "setup_ms", mi.SetupTime, "downtime", final.Downtime, "bytes", final.TransferredBytes}
	if r := mi.RAM; r != nil {
		args = append(args, "zero_pages", r.Duplicate, "normal_pages", r.Normal, "dirty_syncs", r.DirtySyncCount, "mbps", r.Mbps, "downtime_bytes", r.DowntimeBytes)
	}
	d.log.Info("migrated out", args...)
	return final, nil
}

// FinishIncoming implements driver.LiveMigrator: wait for the incoming
// state, then run the destination.
func (d *Driver) FinishIncoming(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if o := t.getOp(); o != opIncoming {
		return fmt.Errorf("%w: qemu task %q is not an incoming migration (%s)", driver.ErrBusy, id, orIdle(o))
	}
	if err := t.waitIncoming(ctx); err != nil {
		return err
	}
	if err := t.execute(ctx, "cont", nil, nil); err != nil {
		return err
	}
	t.setOp(opNone)
	d.log.Info("finished incoming", "task", id)
	return nil
}

// AbortIncoming implements driver.LiveMigrator: drop the destination.
func (d *Driver) AbortIncoming(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if o := t.getOp(); o != opIncoming {
		return fmt.Errorf("%w: qemu task %q is not an incoming migration (%s)", driver.ErrBusy, id, orIdle(o))
	}
	d.terminate(ctx, t)
	d.discard(t)
	d.log.Info("aborted incoming", "task", id)
	return nil
}

// ConfirmOut implements driver.LiveMigrator: end the migrated-out source.
func (d *Driver) ConfirmOut(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if o := t.getOp(); o != opOutDone {
		return fmt.Errorf("%w: qemu task %q has no completed outgoing migration (%s)", driver.ErrBusy, id, orIdle(o))
	}
	d.terminate(ctx, t)
	d.discard(t)
	d.log.Info("confirmed outgoing", "task", id)
	return nil
}

// AbortOut implements driver.LiveMigrator: cancel what is in flight and run
// the source again.
func (d *Driver) AbortOut(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	o := t.getOp()
	if o != opOutDone && o != opOutgoing && o != opNone {
		return fmt.Errorf("%w: qemu task %q is %s", driver.ErrBusy, id, o)
	}
	if o == opOutgoing || o == opNone {
		t.execute(ctx, "migrate_cancel", nil, nil)
		t.waitMigrationEnd(ctx)
	}
	if err := t.ensureRunning(ctx); err != nil {
		return err
	}
	t.setOp(opNone)
	d.log.Info("aborted outgoing; source runs", "task", id)
	return nil
}

// CancelOut implements driver.LiveMigrator: migrate_cancel; the source runs
// on and MigrateOut returns an error. Nothing in flight is not an error.
func (d *Driver) CancelOut(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	if o := t.getOp(); o != opOutgoing {
		if o == opOutDone {
			return fmt.Errorf("%w: qemu task %q: the migration has completed; AbortOut resumes the source", driver.ErrBusy, id)
		}
		return nil
	}
	if err := t.execute(ctx, "migrate_cancel", nil, nil); err != nil {
		return err
	}
	if !t.watched() {
		// Nobody polls this migration (driver restarted mid-flight).
		t.waitMigrationEnd(ctx)
		if err := t.ensureRunning(ctx); err != nil {
			return err
		}
		t.setOp(opNone)
	}
	return nil
}

func orIdle(o op) string {
	if o == opNone {
		return "idle"
	}
	return string(o)
}

// Checkpoint implements driver.Checkpointer: a live migration of the
// running guest into dir/vmstate (committed as Suspend's is), after which
// the guest runs on; it is paused only for the migration's downtime (Took).
// Resume loads the image like a suspend image.
func (d *Driver) Checkpoint(ctx context.Context, id, dir string) (driver.Image, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Image{}, err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return driver.Image{}, fmt.Errorf("qemu task %q: checkpoint dir %q: not a directory", id, dir)
	}
	if err := t.begin(opCheckpointing); err != nil {
		return driver.Image{}, err
	}
	defer t.setOp(opNone)
	tmp := filepath.Join(dir, "."+stateFile+".tmp")
	final := filepath.Join(dir, stateFile)
	defer func() {
		// Whatever happened, the guest runs on.
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if rerr := t.ensureRunning(rctx); rerr != nil {
			d.log.Error("checkpoint: the guest did not resume", "task", id, "err", rerr)
		}
	}()
	if err := t.setMigration(ctx, driver.MigrationOptions{MaxDowntime: 100 * time.Millisecond}); err != nil {
		return driver.Image{}, err
	}
	mi, err := t.runMigration(ctx, "exec:cat > "+shellQuote(tmp), false, nil)
	p := mi.progress()
	if err != nil {
		os.Remove(tmp)
		return driver.Image{}, err
	}
	rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = t.ensureRunning(rctx)
	cancel()
	if err != nil {
		os.Remove(tmp)
		return driver.Image{}, err
	}
	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return driver.Image{}, fmt.Errorf("qemu task %q: sync checkpoint: %w", id, err)
	}
	t.mu.Lock()
	rec := record{Spec: t.spec, Machine: t.machine, Role: roleRun, StartedAt: t.startedAt, Accel: d.accel}
	t.mu.Unlock()
	if err := writeJSON(filepath.Join(dir, imageMeta), rec); err != nil {
		os.Remove(tmp)
		return driver.Image{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return driver.Image{}, err
	}
	syncFile(dir)
	fi, _ := os.Stat(final)
	d.log.Info("checkpointed", "task", id, "bytes", fi.Size(), "downtime", p.Downtime, "total", p.TotalTime)
	return driver.Image{Dir: dir, Bytes: fi.Size(), Took: p.Downtime}, nil
}
