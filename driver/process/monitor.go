package process

import (
	"os"
	"path/filepath"
	"time"

	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/linktree"
)

// startMonitor watches the task's supervisor and handles a job that exits
// with the checkpoint code on its own, without a request (HTCondor's
// self-checkpointing): what it left in FERRY_CHECKPOINT_DIR is committed as
// the task's latest checkpoint (checkpoints/<seq>, Config.OnCheckpoint is
// called) and the job is restarted from it with FERRY_RESTORE=1. A job that
// exits with the code but left nothing there is reported failed.
func (d *Driver) startMonitor(t *task) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		stop := make(chan struct{})
		go func() {
			select {
			case <-d.done:
			case <-t.stop:
			}
			close(stop)
		}()
		for {
			inc := t.snapshot().Incarnation
			jr := t.observe().jr
			if jr.PID == 0 {
				return // never ran or already ended
			}
			waitExit(jr.SupervisorPID, jr.SupervisorStart, stop)
			select {
			case <-stop:
				return
			case t.sem <- struct{}{}: // wait out an operation in flight
			}
			t.mu.Lock()
			gone, now := t.gone, t.rec.Incarnation
			t.mu.Unlock()
			if gone {
				t.release()
				return
			}
			if now != inc { // an operation restarted the job: watch the new one
				t.release()
				continue
			}
			t.mu.Lock()
			t.restarting = true
			t.mu.Unlock()
			img, ok := d.selfCheckpoint(t, inc)
			t.mu.Lock()
			t.restarting = false
			t.mu.Unlock()
			t.release()
			if !ok {
				return
			}
			ctx, cancel := contextUntil(stop)
			d.onCheckpoint(ctx, t.id, img)
			cancel()
		}
	}()
}

// selfCheckpoint commits and restarts after an unrequested checkpoint exit.
// The caller holds the operation lock.
func (d *Driver) selfCheckpoint(t *task, inc int) (driver.Image, bool) {
	p := t.observe()
	if p.ex == nil || p.ex.Incarnation != inc || p.ex.ExitCode != t.job.exitCode || p.ex.Signal != "" {
		return driver.Image{}, false
	}
	staging := filepath.Join(t.dir, stagingDir)
	ents, err := os.ReadDir(staging)
	if err != nil || len(ents) == 0 {
		return driver.Image{}, false
	}
	rec := t.snapshot()
	t.mu.Lock()
	t.rec.CheckpointSeq++
	seq := t.rec.CheckpointSeq
	t.mu.Unlock()
	base := filepath.Join(t.dir, checkpointsDir)
	dst := filepath.Join(base, seqName(seq))
	t0 := time.Now()
	m, err := sealStaging(staging, Manifest{TaskID: t.id, Epoch: rec.Spec.Epoch, Mode: ModeStop, CreatedAt: p.ex.ExitedAt})
	if err == nil {
		err = os.MkdirAll(base, 0o755)
	}
	if err == nil {
		err = commitDir(staging, dst)
	}
	if err != nil {
		d.log.Warn("job exited with the checkpoint code; its checkpoint cannot be committed", "task", t.id, "err", err)
		_ = resetDir(staging)
		return driver.Image{}, false
	}
	t.mu.Lock()
	t.rec.Latest, t.rec.LastBytes, t.rec.LastTook = dst, m.Bytes, time.Since(t0)
	_ = t.saveLocked()
	t.mu.Unlock()
	if rec.Latest != "" && rec.Latest != dst {
		os.RemoveAll(rec.Latest)
	}
	rd := filepath.Join(t.dir, restoreDir)
	err = os.RemoveAll(rd)
	if err == nil {
		err = linktree.Tree(dst, rd)
	}
	if err == nil {
		ctx, cancel := contextUntil(d.done)
		err = d.spawn(ctx, t, true)
		cancel()
	}
	if err != nil {
		d.log.Warn("restart after a self-checkpoint failed; the checkpoint is kept", "task", t.id, "dir", dst, "err", err)
		return driver.Image{}, false
	}
	d.log.Info("job checkpointed itself; restarted from it", "task", t.id, "dir", dst, "bytes", m.Bytes)
	return driver.Image{Dir: dst, Bytes: m.Bytes, Took: time.Since(t0)}, true
}
