package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// recover reconciles the records with what the drivers run, after a
// restart: incoming copies that never finished are aborted; outbound moves
// that were in flight are settled by asking the peer (in the background);
// copies without a usable record are flagged stale. Running tasks need
// nothing: the drivers re-attached to them (Driver.List).
func (a *Agent) recover() {
	ctx, cancel := context.WithTimeout(a.ctx, cleanupTimeout)
	defer cancel()
	sts, err := a.driverStatuses(ctx)
	if err != nil {
		a.log.Error("recover: list driver tasks", "err", err)
		sts = map[string]driver.Status{}
	}
	a.mu.Lock()
	recs := make([]*record, 0, len(a.records))
	for _, r := range a.records {
		recs = append(recs, r)
	}
	for id, st := range sts {
		if _, ok := a.records[id]; !ok {
			a.stale[id] = fmt.Sprintf("no record on %s: not owned here (epoch %d)", a.cfg.Name, st.Epoch)
			a.log.Warn("stale copy found", "task", id, "reason", a.stale[id])
		}
	}
	a.mu.Unlock()
	for _, r := range recs {
		st, present := sts[r.ID]
		switch r.Phase {
		case api.PhaseIncoming:
			// Never finished: the source still owns the task.
			if present {
				if lm, ok := a.drivers[r.Driver].(driver.LiveMigrator); ok {
					if err := lm.AbortIncoming(ctx, r.ID); err != nil && !errors.Is(err, driver.ErrNotFound) {
						a.log.Warn("recover: abort incoming failed; stopping the copy", "task", r.ID, "err", err)
						a.drivers[r.Driver].Stop(ctx, r.ID)
					}
				}
			}
			a.dropIncoming(r)
			a.log.Info("recover: dropped unfinished incoming copy", "task", r.ID)
		case api.PhaseMigratingOut:
			if r.Mode == "fetch" {
				// A peer was fetching the image; the fetch died with the
				// agent and the image is suspended again. The fetcher may
				// have had all of it and commit the task still: the binding
				// to its certificate name stays, so that its release makes
				// this image a tombstone and no other agent's may
				// (handleRelease). A later grant of the controller's rebinds it.
				n := *r
				n.Phase, n.Peer, n.Mode = api.PhaseSuspended, "", ""
				a.mu.Lock()
				if err := a.putLocked(&n); err != nil {
					a.log.Error("recover: record the cut fetch", "task", r.ID, "err", err)
				}
				a.mu.Unlock()
				continue
			}
			a.mu.Lock()
			a.busy[r.ID] = "settle"
			a.stale[r.ID] = fmt.Sprintf("move to %s was in flight when the agent stopped; settling", r.Peer)
			a.mu.Unlock()
			a.wg.Add(1)
			go func(r *record, present bool) {
				defer a.wg.Done()
				a.settle(r, present)
			}(r, present)
		case api.PhaseRunning:
			if present && st.Epoch != 0 && st.Epoch != r.Epoch {
				a.log.Warn("recover: copy epoch differs from record", "task", r.ID, "copy", st.Epoch, "record", r.Epoch)
			}
			if !present {
				a.log.Warn("recover: task lost while the agent was away", "task", r.ID)
			}
		}
	}
}

// settle decides an outbound move that was in flight when the previous
// agent stopped: committed at the peer → end the local copy and keep a
// tombstone; not committed → resume the local copy. While the peer cannot
// be reached the local copy stays as it is (paused or suspended, flagged),
// and settle retries until the agent closes.
func (a *Agent) settle(r *record, present bool) {
	defer a.release(r.ID)
	newEpoch := r.Epoch + 1
	for delay := time.Second; ; delay = min(2*delay, 15*time.Second) {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		out := a.askOutcome(ctx, r.Peer, r.ID, newEpoch)
		cancel()
		switch out {
		case committed:
			if present {
				cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
				var err error
				if lm, ok := a.drivers[r.Driver].(driver.LiveMigrator); ok && r.Mode == "live" {
					err = lm.ConfirmOut(cctx, r.ID)
				}
				if err != nil || r.Mode != "live" {
					err = a.drivers[r.Driver].Stop(cctx, r.ID)
				}
				cancel()
				if err != nil && !errors.Is(err, driver.ErrNotFound) {
					a.log.Error("settle: end the source copy", "task", r.ID, "err", err)
				}
			}
			a.markMoved(r, r.Peer, newEpoch)
			a.log.Info("settle: move had committed; local copy ended", "task", r.ID, "peer", r.Peer)
			return
		case notCommitted:
			a.resumeAfterFailedMove(r, present)
			return
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// resumeAfterFailedMove makes the local copy the live one again.
func (a *Agent) resumeAfterFailedMove(r *record, present bool) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	a.mu.Lock()
	delete(a.stale, r.ID)
	a.mu.Unlock()
	if present {
		if lm, ok := a.drivers[r.Driver].(driver.LiveMigrator); ok && r.Mode == "live" {
			if err := lm.AbortOut(ctx, r.ID); err != nil && !errors.Is(err, driver.ErrNotFound) {
				a.log.Warn("settle: abort out (the copy may already run)", "task", r.ID, "err", err)
			}
		}
		a.setPhase(r, api.PhaseRunning, r.Epoch)
		a.log.Info("settle: move had not committed; local copy runs", "task", r.ID)
		return
	}
	if r.Image != nil {
		if err := a.drivers[r.Driver].Resume(ctx, r.Spec, a.store.imageDir(r.ID)); err != nil {
			a.log.Error("settle: resume from image", "task", r.ID, "err", err)
			a.setPhase(r, api.PhaseSuspended, r.Epoch)
			return
		}
		a.setPhase(r, api.PhaseRunning, r.Epoch)
		os.RemoveAll(a.store.imageDir(r.ID))
		a.log.Info("settle: move had not committed; resumed from the image", "task", r.ID)
		return
	}
	a.setPhase(r, api.PhaseRunning, r.Epoch)
	a.log.Warn("settle: move had not committed but the local copy is gone", "task", r.ID)
}
