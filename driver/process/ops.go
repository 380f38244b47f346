package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/linktree"
)

// Checkpoint implements driver.Checkpointer: checkpoint-and-continue into
// dir (missing or empty; committed atomically). The job answers the signal
// by writing its state and creating FERRY_CHECKPOINT_DONE; a job that
// instead exits with the checkpoint code is restarted from the checkpoint it
// just wrote (FERRY_RESTORE=1), as HTCondor does. On timeout the error wraps
// driver.ErrTimeout and the job keeps running; dir is left as it was.
func (d *Driver) Checkpoint(ctx context.Context, id, dir string) (driver.Image, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Image{}, err
	}
	if err := t.acquire(ctx); err != nil {
		return driver.Image{}, err
	}
	defer t.release()
	return d.checkpoint(ctx, t, dir, ModeContinue, nil)
}

// Suspend implements driver.Driver: checkpoint-and-stop into dir. The job
// answers by writing its state and exiting with the checkpoint code (85);
// a job that creates FERRY_CHECKPOINT_DONE instead is terminated once the
// checkpoint is committed. The task is then forgotten (its log stays). On
// error the task keeps running and dir is left as it was.
func (d *Driver) Suspend(ctx context.Context, id, dir string) (driver.Image, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Image{}, err
	}
	return d.suspend(ctx, t, dir, nil)
}

// suspend is Suspend of a looked-up task; signaled (if not nil) is called
// once the job has been asked, its staging directory fresh.
func (d *Driver) suspend(ctx context.Context, t *task, dir string, signaled func()) (driver.Image, error) {
	id := t.id
	if err := t.acquire(ctx); err != nil {
		return driver.Image{}, err
	}
	defer t.release()
	img, err := d.checkpoint(ctx, t, dir, ModeStop, signaled)
	if err != nil {
		return driver.Image{}, err
	}
	d.terminate(ctx, t)
	d.forget(t)
	d.log.Info("task suspended", "task", id, "dir", img.Dir, "bytes", img.Bytes, "took", img.Took)
	return img, nil
}

// LatestCheckpoint returns the task's last committed periodic checkpoint.
func (d *Driver) LatestCheckpoint(id string) (driver.Image, error) {
	t, err := d.lookup(id)
	if err != nil {
		return driver.Image{}, err
	}
	rec := t.snapshot()
	if rec.Latest == "" {
		return driver.Image{}, fmt.Errorf("process driver: task %q: no periodic checkpoint yet: %w", id, driver.ErrNotFound)
	}
	m, err := VerifyImage(rec.Latest)
	if err != nil {
		return driver.Image{}, err
	}
	return driver.Image{Dir: rec.Latest, Bytes: m.Bytes, Took: m.Took}, nil
}

// outcome of one checkpoint request.
type outcome int

const (
	answeredDone outcome = iota + 1 // marker written, job runs on
	answeredExit                    // job exited with the checkpoint code
)

// checkpoint runs the protocol once. The caller holds the operation lock.
// signaled, if not nil, is called right after the job was sent the request
// (staging/ is then fresh: what appears there is this checkpoint's).
func (d *Driver) checkpoint(ctx context.Context, t *task, dst, mode string, signaled func()) (driver.Image, error) {
	fail := func(err error) (driver.Image, error) {
		return driver.Image{}, fmt.Errorf("process driver: checkpoint task %q: %w", t.id, err)
	}
	if dst == "" {
		return fail(errors.New("destination directory is empty"))
	}
	if err := checkEmptyDir(dst); err != nil {
		return fail(err)
	}
	p := t.observe()
	if !p.running {
		return fail(fmt.Errorf("%w: job is not running", driver.ErrTaskFailed))
	}
	rec := t.snapshot()
	staging := filepath.Join(t.dir, stagingDir)
	if err := resetDir(staging); err != nil {
		return fail(err)
	}
	if rec.Paused { // a stopped job cannot answer
		_ = signalGroup(p.jr, syscall.SIGCONT)
	}
	repause := func() {
		if rec.Paused {
			if q := t.observe(); q.running {
				_ = signalGroup(q.jr, syscall.SIGSTOP)
			}
		}
	}
	if !alive(p.jr.PID, p.jr.Start) {
		repause()
		return fail(fmt.Errorf("%w: job process %d is gone", driver.ErrTaskFailed, p.jr.PID))
	}
	if mode == ModeContinue {
		if err := os.WriteFile(filepath.Join(staging, ContinueRequest), nil, 0o644); err != nil {
			repause()
			return fail(err)
		}
	}
	t0 := time.Now()
	if err := d.awaitHandler(ctx, t, p.jr, t0); err != nil {
		repause()
		_ = resetDir(staging)
		return fail(err)
	}
	if err := syscall.Kill(p.jr.PID, t.job.signal); err != nil {
		repause()
		return fail(fmt.Errorf("%w: signal job: %v", driver.ErrTaskFailed, err))
	}
	if signaled != nil {
		signaled()
	}
	res, err := d.awaitAnswer(ctx, t, p.jr, staging, t0)
	if res == answeredExit && mode == ModeContinue {
		// Inspect says "starting" until the job runs again.
		t.mu.Lock()
		t.restarting = true
		t.mu.Unlock()
		defer func() { t.mu.Lock(); t.restarting = false; t.mu.Unlock() }()
	}
	if err != nil {
		if errors.Is(err, driver.ErrTimeout) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			repause()
		}
		// Whatever the job wrote is not a checkpoint; the last good one
		// (elsewhere) is untouched.
		_ = resetDir(staging)
		return fail(err)
	}
	if res == answeredDone && mode == ModeStop {
		// The job should have exited (no continue request); freeze it so it
		// does no work past the checkpoint, end it once committed.
		_ = signalGroup(p.jr, syscall.SIGSTOP)
	}
	took := time.Since(t0)
	m, err := sealStaging(staging, Manifest{TaskID: t.id, Epoch: rec.Spec.Epoch, Mode: mode, CreatedAt: t0.UTC(), Took: took})
	if err == nil {
		err = commitDir(staging, dst)
	}
	if err != nil {
		_ = resetDir(staging)
		if res == answeredExit && mode == ModeContinue {
			// The job stopped for a checkpoint that cannot be kept: it is
			// ended; report it rather than restart from stale state.
			return fail(fmt.Errorf("%w: job exited for the checkpoint, which could not be committed: %v", driver.ErrTaskFailed, err))
		}
		if res == answeredDone {
			if mode == ModeStop && !rec.Paused {
				_ = signalGroup(p.jr, syscall.SIGCONT)
			}
			repause()
		}
		return fail(err)
	}
	_ = os.Mkdir(staging, 0o755) // fresh for the next request
	d.log.Debug("checkpoint committed", "task", t.id, "mode", mode, "answer", took, "commit", time.Since(t0)-took, "bytes", m.Bytes)
	t.mu.Lock()
	t.rec.LastBytes, t.rec.LastTook = m.Bytes, took
	_ = t.saveLocked()
	t.mu.Unlock()
	img := driver.Image{Dir: dst, Bytes: m.Bytes, Took: took}
	if mode == ModeContinue {
		switch res {
		case answeredDone:
			repause()
		case answeredExit:
			// Checkpoint-and-continue for a job that only knows how to
			// stop: restart it from what it just saved.
			rd := filepath.Join(t.dir, restoreDir)
			err := os.RemoveAll(rd)
			if err == nil {
				err = linktree.Tree(dst, rd)
			}
			if err == nil {
				err = d.spawn(ctx, t, true)
			}
			if err != nil {
				return img, fmt.Errorf("process driver: task %q: checkpoint committed at %s, restart from it failed: %w", t.id, dst, err)
			}
			d.log.Info("job exited for checkpoint-and-continue; restarted from it", "task", t.id)
		}
	}
	return img, nil
}

// awaitHandler waits (within the checkpoint timeout) until the job has a
// handler for the checkpoint signal, so that a request never kills a job
// that has not set one up yet (or never will).
func (d *Driver) awaitHandler(ctx context.Context, t *task, jr jobRecord, t0 time.Time) error {
	deadline := t0.Add(t.job.timeout)
	for delay := time.Millisecond; ; delay = min(delay*2, 20*time.Millisecond) {
		caught, ignored, err := signalDisposition(jr.PID, int(t.job.signal))
		if err != nil {
			return fmt.Errorf("%w: job process %d: %v", driver.ErrTaskFailed, jr.PID, err)
		}
		if caught {
			return nil
		}
		if time.Now().After(deadline) {
			why := "has no handler for"
			if ignored {
				why = "ignores"
			}
			return fmt.Errorf("%w: job %s %s after %v, so no checkpoint was requested (see docs/checkpointing.md); it keeps running",
				driver.ErrTimeout, why, signalName(t.job.signal), t.job.timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the job's %s handler: %w; the job keeps running", signalName(t.job.signal), ctx.Err())
		case <-time.After(delay):
		}
	}
}

// awaitAnswer waits for the job's answer to a checkpoint request: the done
// marker, or its exit with the checkpoint code. Anything else — another
// exit, the timeout, ctx — is an error.
func (d *Driver) awaitAnswer(ctx context.Context, t *task, jr jobRecord, staging string, t0 time.Time) (outcome, error) {
	deadline := t0.Add(t.job.timeout)
	marker := filepath.Join(staging, DoneMarker)
	wb := newStagingWriteback(staging)
	for delay := time.Millisecond; ; delay = min(delay*2, 10*time.Millisecond) {
		wb.poll()
		if _, err := os.Stat(marker); err == nil {
			return answeredDone, nil
		}
		p := t.observe()
		if p.ex != nil {
			if p.ex.ExitCode == t.job.exitCode && p.ex.Signal == "" {
				return answeredExit, nil
			}
			how := "exited with code " + strconv.Itoa(p.ex.ExitCode)
			if p.ex.Signal != "" {
				how = "was killed by " + p.ex.Signal
			}
			return 0, fmt.Errorf("%w: job %s while checkpointing (checkpoint code is %d); last log lines:\n%s",
				driver.ErrTaskFailed, how, t.job.exitCode, lastLines(d.LogPath(t.id), 10))
		}
		if !p.running {
			return 0, fmt.Errorf("%w: job ended while checkpointing without an exit record", driver.ErrTaskFailed)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: job did not answer %s within %v (no %s in %s, no exit with code %d); it keeps running",
				driver.ErrTimeout, signalName(t.job.signal), t.job.timeout, DoneMarker, EnvCheckpointDir, t.job.exitCode)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for the job's checkpoint: %w; the job keeps running", ctx.Err())
		case <-time.After(delay):
		}
	}
}

// startPeriodic runs the task's periodic checkpoints, when its spec asks
// for them, until the task is forgotten or the driver closed.
func (d *Driver) startPeriodic(t *task) {
	every := t.job.interval
	if every <= 0 {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-d.done:
				return
			case <-t.stop:
				return
			case <-tick.C:
			}
			if !d.periodic(t) {
				return
			}
		}
	}()
}

// periodic takes one periodic checkpoint into checkpoints/<seq>, keeps it
// as the latest, drops the previous one and calls Config.OnCheckpoint. It
// reports whether the loop should go on.
func (d *Driver) periodic(t *task) bool {
	select {
	case t.sem <- struct{}{}: // skip the tick when another operation runs
	default:
		return true
	}
	t.mu.Lock()
	gone, paused := t.gone, t.rec.Paused
	t.mu.Unlock()
	if gone {
		t.release()
		return false
	}
	if paused {
		t.release()
		return true
	}
	p := t.observe()
	if !p.running {
		t.release()
		return false
	}
	if caught, _, err := signalDisposition(p.jr.PID, int(t.job.signal)); err == nil && !caught {
		// Not (yet) listening: skip rather than hold the task for the
		// whole checkpoint timeout.
		t.release()
		d.log.Debug("periodic checkpoint skipped: job has no handler for the signal", "task", t.id, "signal", signalName(t.job.signal))
		return true
	}
	ctx, cancel := contextUntil(d.done, t.stop)
	defer cancel()
	t.mu.Lock()
	t.cancelPeriodic = cancel
	t.mu.Unlock()
	defer func() { t.mu.Lock(); t.cancelPeriodic = nil; t.mu.Unlock() }()
	t.mu.Lock()
	t.rec.CheckpointSeq++
	seq := t.rec.CheckpointSeq
	prev := t.rec.Latest
	t.mu.Unlock()
	base := filepath.Join(t.dir, checkpointsDir)
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.release()
		d.log.Warn("periodic checkpoint", "task", t.id, "err", err)
		return true
	}
	dst := filepath.Join(base, seqName(seq))
	img, err := d.checkpoint(ctx, t, dst, ModeContinue, nil)
	if err != nil {
		t.release()
		d.log.Warn("periodic checkpoint failed; the previous one stays", "task", t.id, "err", err)
		return true
	}
	t.mu.Lock()
	t.rec.Latest = dst
	_ = t.saveLocked()
	t.mu.Unlock()
	if prev != "" && prev != dst {
		os.RemoveAll(prev)
	}
	t.release()
	d.log.Info("periodic checkpoint committed", "task", t.id, "dir", dst, "bytes", img.Bytes, "took", img.Took)
	d.onCheckpoint(ctx, t.id, img)
	return true
}

func seqName(seq int) string { return fmt.Sprintf("%08d", seq) }

// contextUntil returns a context cancelled when any of the channels closes.
func contextUntil(chans ...<-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	for _, c := range chans {
		go func() {
			select {
			case <-c:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	return ctx, cancel
}
