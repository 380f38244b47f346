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

// warmUpSink receives a warm-up migration: it reads the first 4 MiB of the
// stream and exits, so QEMU's next write fails and the migration ends by
// itself — it cannot complete (a running guest's stream is larger), so the
// guest is never paused, whether or not a driver is watching. At
// warmUpBandwidth that takes seconds, so the driver's migrate_cancel comes
// first: QEMU reports "cancelled" only once it has cleaned the migration
// up, while "failed" is reported before, and a migrate issued in between
// would race that clean-up.
const warmUpSink = "exec:head -c 4194304 >/dev/null"

// defaultDowntimeLimitMS is QEMU's own default downtime limit, set for a
// migration whose options give none.
const defaultDowntimeLimitMS = 300

// warmUpBandwidth caps a warm-up migration after its setup (bytes/s).
const warmUpBandwidth = 1 << 20

// warmUp starts, in the background, a migration of t that ends right after
// its setup phase. That setup is a QEMU's first dirty-bitmap sync over all
// its RAM — with the RAM tail (docs/vm.md) page by page, each page resetting
// every vCPU's TLB entries: about 0.5 ms per MiB of guest RAM under TCG
// (70-250 ms at 128 MiB, 390-410 ms at 512 MiB), and every page is dirty
// then because QEMU marks all RAM dirty when it allocates it. Once synced,
// only pages written since are dirty, so a real migration's setup takes a
// few ms instead. The sync moves no guest state and leaves the migration
// bitmap correct (a real migration still sends every page in its first
// pass). The driver warms up a QEMU when it has loaded an incoming state,
// and a booted one warmUpAfterStart later (its boot writes all of RAM: the
// guest kernel zeroes it); the operations that migrate (setMigration) wait
// for a warm-up in flight, and a warm-up does not start while another
// operation runs.
func (d *Driver) warmUp(t *task) *warmUpRun {
	w := &warmUpRun{done: make(chan struct{})}
	t.mu.Lock()
	if cur := t.warming; cur != nil {
		t.mu.Unlock()
		return cur
	}
	if op := t.op; op != opNone || t.qmp == nil {
		t.mu.Unlock()
		w.err = fmt.Errorf("%w: qemu task %q is %s", driver.ErrBusy, t.id, orIdle(op))
		close(w.done)
		return w
	}
	t.warming = w
	t.mu.Unlock()
	go func() {
		defer func() {
			t.mu.Lock()
			t.warming = nil
			t.mu.Unlock()
			close(w.done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		began := time.Now()
		synced, mi, err := t.warm(ctx)
		if err == nil && !synced {
			err = fmt.Errorf("qemu task %q: warm-up migration ended %s before its setup did: %s", t.id, mi.Status, mi.ErrorDesc)
		}
		w.err = err
		if err != nil {
			d.log.Debug("warm-up", "task", t.id, "err", err)
			return
		}
		d.log.Debug("warmed up", "task", t.id, "took", time.Since(began))
	}()
	return w
}

// warmUpRun is one warm-up migration; err is set before done is closed.
type warmUpRun struct {
	done chan struct{}
	err  error
}

// warmUpAfterStart are the delays after a boot at which the driver warms
// the guest up: the first once the kernel has initialised its memory
// under TCG on a loaded machine, the second for slower boots (each syncs
// only what was written since the one before).
var warmUpAfterStart = []time.Duration{10 * time.Second, 60 * time.Second}

// warmUpSoon warms t up now if its first sync would be slow: only guests
// with the RAM tail sync page by page; without it (QEMU 9.0 and later) a
// first sync takes a few ms (docs/vm.md "Which QEMU"), so nothing is done.
func (d *Driver) warmUpSoon(t *task) {
	if t.machine.TailKiB != 0 {
		d.warmUp(t)
	}
}

// warmUpLater schedules t's warm-ups after a boot (guests with the RAM
// tail only, as warmUpSoon).
func (d *Driver) warmUpLater(t *task) {
	if t.machine.TailKiB == 0 {
		return
	}
	for _, after := range warmUpAfterStart {
		time.AfterFunc(after, func() {
			if cur, err := d.lookup(t.id); err == nil && cur == t {
				d.warmUp(t)
			}
		})
	}
}

// WarmUp runs a warm-up migration of the task now (see warmUp), or joins
// the one in flight, and waits for it to end; it fails with ErrBusy while
// the task is busy with another operation. Moves do
// not need it (the driver warms guests up itself); a benchmark uses it to
// start every measured move from a warmed-up QEMU.
func (d *Driver) WarmUp(ctx context.Context, id string) error {
	t, err := d.lookup(id)
	if err != nil {
		return err
	}
	w := d.warmUp(t)
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return fmt.Errorf("%w: qemu task %q: warm-up: %v", driver.ErrTimeout, id, ctx.Err())
	}
}

// warm runs the warm-up migration (see warmUp). It reports whether the
// migration got past its setup (QEMU announced "active": the sync is done)
// and QEMU's last answer about it.
func (t *task) warm(ctx context.Context) (bool, migrateInfo, error) {
	if err := t.setCapabilities(ctx, driver.MigrationOptions{}); err != nil {
		return false, migrateInfo{}, err
	}
	// setMigration sets it again for a real migration.
	if err := t.execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": warmUpBandwidth}, nil); err != nil {
		return false, migrateInfo{}, err
	}
	t.mu.Lock()
	c := t.qmp
	t.mu.Unlock()
	if c == nil {
		return false, migrateInfo{}, fmt.Errorf("%w: qemu task %q has no QEMU", driver.ErrTaskFailed, t.id)
	}
	events, unsubscribe := c.Subscribe(16)
	defer unsubscribe()
	if err := t.execute(ctx, "migrate", map[string]any{"uri": warmUpSink}, nil); err != nil {
		return false, migrateInfo{}, err
	}
	synced := false
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return synced, migrateInfo{}, fmt.Errorf("%w: qemu task %q: QEMU is gone", driver.ErrTaskFailed, t.id)
			}
			if ev.Name != "MIGRATION" {
				continue
			}
			var data struct {
				Status string `json:"status"`
			}
			json.Unmarshal(ev.Data, &data)
			switch data.Status {
			case "active":
				// Setup is over; stop sending into the sink.
				synced = true
				t.execute(ctx, "migrate_cancel", nil, nil)
			case "failed", "cancelled", "completed":
				var mi migrateInfo
				err := t.execute(ctx, "query-migrate", nil, &mi)
				if data.Status == "completed" && err == nil {
					// Cannot happen with warmUpSink; never leave the guest
					// paused.
					err = t.ensureRunning(ctx)
				}
				return synced, mi, err
			}
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			t.execute(cctx, "migrate_cancel", nil, nil)
			t.waitMigrationEnd(cctx)
			return synced, migrateInfo{}, ctx.Err()
		}
	}
}

// listenIncoming has a QEMU started with -incoming defer take its state
// from uri, with MIGRATION events on so waitIncoming hears the state is in
// without waiting for its next poll.
func (t *task) listenIncoming(ctx context.Context, uri string) error {
	caps := []map[string]any{{"capability": "events", "state": true}}
	if err := t.execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return err
	}
	return t.execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// waitWarm waits until no warm-up migration of t is in flight.
func (t *task) waitWarm(ctx context.Context) error {
	t.mu.Lock()
	w := t.warming
	t.mu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: qemu task %q: waiting for its warm-up migration: %v", driver.ErrTimeout, t.id, ctx.Err())
	}
}

// setMigration sets capabilities and parameters before an outgoing
// migration, once a warm-up in flight has ended.
func (t *task) setMigration(ctx context.Context, opts driver.MigrationOptions) error {
	if err := t.waitWarm(ctx); err != nil {
		return err
	}
	if err := t.setCapabilities(ctx, opts); err != nil {
		return err
	}
	bw := opts.Bandwidth
	if bw <= 0 {
		bw = unlimitedBandwidth
	}
	// The downtime limit is always set: QEMU keeps parameters between
	// migrations, so a move without one would inherit the last operation's
	// (a checkpoint's 100 ms, say) instead of QEMU's default.
	ms := int64(defaultDowntimeLimitMS)
	if opts.MaxDowntime > 0 {
		ms = max(opts.MaxDowntime.Milliseconds(), 1)
	}
	params := map[string]any{"max-bandwidth": bw, "downtime-limit": ms}
	return t.execute(ctx, "migrate-set-parameters", params, nil)
}

// setCapabilities sets the capabilities of an outgoing migration (a warm-up
// runs with opts' zero value): MIGRATION events on, and opts'
// auto-converge and post-copy.
func (t *task) setCapabilities(ctx context.Context, opts driver.MigrationOptions) error {
	caps := []map[string]any{
		{"capability": "events", "state": true},
		{"capability": "auto-converge", "state": opts.AutoConverge},
		{"capability": "postcopy-ram", "state": opts.PostCopy},
	}
	return t.execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil)
}

// runMigration starts a migration to uri and polls it until it ends. On
// ctx expiry it cancels the migration. startPostcopy switches to post-copy
// after the first full pass.
func (t *task) runMigration(ctx context.Context, uri string, startPostcopy bool, progress func(driver.Progress)) (migrateInfo, error) {
	events, unsubscribe := t.migrationEvents()
	defer unsubscribe()
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
		case <-events:
		}
	}
}

// migrationEvents returns a channel that receives QEMU's MIGRATION events
// (status changes; the "events" capability must be on), so a poll loop
// learns of completion at once rather than at its next tick, and a
// function that ends the subscription. Missed events only delay a poll.
func (t *task) migrationEvents() (<-chan struct{}, func()) {
	t.mu.Lock()
	c := t.qmp
	t.mu.Unlock()
	out := make(chan struct{}, 1)
	if c == nil {
		return out, func() {}
	}
	evs, stop := c.Subscribe(16)
	quit := make(chan struct{})
	go func() {
		for {
			select {
			case ev, ok := <-evs:
				if !ok {
					return
				}
				if ev.Name != "MIGRATION" {
					continue
				}
				select {
				case out <- struct{}{}:
				default:
				}
			case <-quit:
				return
			}
		}
	}()
	return out, func() { close(quit); stop() }
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
	// QEMU 9 and later report a migration "completed" while the guest is
	// still in finish-migrate, and refuse cont ("Migration is not finalized
	// yet") until the migration is cleaned up: wait for that.
	for qs.Status == "finish-migrate" {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: qemu task %q: still finishing its migration: %v", driver.ErrTimeout, t.id, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
		if err := t.execute(ctx, "query-status", nil, &qs); err != nil {
			return err
		}
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
	// Settings first: they wait for a warm-up in flight, and the guest
	// should run, not sit paused, while they do.
	if err := t.setMigration(ctx, driver.MigrationOptions{}); err != nil {
		return fail(err)
	}
	if err := t.execute(ctx, "stop", nil, nil); err != nil {
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
	if img.Type != "" && img.Type != machineType {
		return machine{}, "", fmt.Errorf("%w: qemu task %q: %s: %s records machine type %q (want %s)", driver.ErrInvalidSpec, spec.ID, dir, imageMeta, img.Type, machineType)
	}
	m.MemoryMiB, m.TailKiB, m.CPUs, m.Type = img.MemoryMiB, img.TailKiB, img.CPUs, machineType
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
	if err == nil {
		err = d.refuseTailless(spec.ID, m, "resume of")
	}
	if err != nil {
		d.forget(t)
		return err
	}
	began := time.Now()
	fail := func(err error) error { d.discard(t); return err }
	if err := d.launch(ctx, t, spec, m, roleIncoming); err != nil {
		return fail(err)
	}
	if err := t.listenIncoming(ctx, "exec:cat "+shellQuote(state)); err != nil {
		return fail(err)
	}
	if err := t.waitIncoming(ctx); err != nil {
		return fail(err)
	}
	if err := t.execute(ctx, "cont", nil, nil); err != nil {
		return fail(err)
	}
	t.setOp(opNone)
	d.warmUpSoon(t)
	d.log.Info("resumed", "task", spec.ID, "from", dir, "took", time.Since(began))
	return nil
}

// waitIncoming polls the destination until its incoming migration has
// completed.
func (t *task) waitIncoming(ctx context.Context) error {
	events, unsubscribe := t.migrationEvents()
	defer unsubscribe()
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
		case <-events:
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
	if err := d.refuseTailless(spec.ID, m, "incoming migration of"); err != nil {
		return "", err
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
	if err := t.listenIncoming(ctx, "unix:"+sock); err != nil {
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
	d.warmUpSoon(t)
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
