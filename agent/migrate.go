package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// cleanupTimeout bounds abort and confirm steps that must run even when the
// move's context is gone.
const cleanupTimeout = 60 * time.Second

// Migrate moves a running task to the agent at req.To, calling emit with
// each protocol step and progress report. It returns the final event (Done
// set). See the package comment for the safety rules.
func (a *Agent) Migrate(ctx context.Context, id string, req api.MigrateRequest, emit func(api.MigrateEvent)) (api.MigrateEvent, error) {
	if emit == nil {
		emit = func(api.MigrateEvent) {}
	}
	if req.To == "" {
		return api.MigrateEvent{}, fmt.Errorf("%w: migrate %q: destination (to) is required", driver.ErrInvalidSpec, id)
	}
	if req.To == a.cfg.Advertise {
		return api.MigrateEvent{}, fmt.Errorf("%w: migrate %q: destination %s is this node", driver.ErrInvalidSpec, id, req.To)
	}
	if req.Options.MaxDowntime < 0 || req.Options.Bandwidth < 0 {
		return api.MigrateEvent{}, fmt.Errorf("%w: migrate %q: negative downtime or bandwidth", driver.ErrInvalidSpec, id)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return api.MigrateEvent{}, fmt.Errorf("%w: agent %s is shutting down", driver.ErrBusy, a.cfg.Name)
	}
	a.moving.Add(1)
	a.mu.Unlock()
	defer a.moving.Done()
	rec, err := a.begin(id, req.Epoch, "migrate")
	if err != nil {
		return api.MigrateEvent{}, err
	}
	settling := false // an in-doubt move hands the busy mark to settle
	defer func() {
		if !settling {
			a.release(id)
		}
	}()
	if rec.Phase != api.PhaseRunning {
		return api.MigrateEvent{}, fmt.Errorf("%w: task %q is %s, not running", driver.ErrInvalidSpec, id, rec.Phase)
	}
	lm, live := a.drivers[rec.Driver].(driver.LiveMigrator)
	mode := req.Mode
	switch mode {
	case "":
		mode = "checkpoint"
		if live {
			mode = "live"
		}
	case "live":
		if !live {
			return api.MigrateEvent{}, fmt.Errorf("%w: %s driver cannot live-migrate task %q; use mode checkpoint", driver.ErrUnsupported, rec.Driver, id)
		}
	case "checkpoint":
	default:
		return api.MigrateEvent{}, fmt.Errorf("%w: migrate %q: mode %q: want live, checkpoint or empty", driver.ErrInvalidSpec, id, mode)
	}

	mctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel) // the caller going away cancels too
	defer stop()
	a.mu.Lock()
	a.moves[id] = cancel
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.moves, id)
		a.mu.Unlock()
	}()

	start := time.Now()
	n := *rec
	n.Phase, n.Peer, n.Mode = api.PhaseMigratingOut, req.To, mode
	a.mu.Lock()
	err = a.putLocked(&n)
	a.mu.Unlock()
	if err != nil {
		return api.MigrateEvent{}, err
	}
	emit(api.MigrateEvent{Step: "begin", Mode: mode})
	a.log.Info("migration begins", "task", id, "to", req.To, "mode", mode, "epoch", rec.Epoch)
	var ev api.MigrateEvent
	if mode == "live" {
		ev, err = a.migrateLive(mctx, &n, lm, req, emit)
	} else {
		ev, err = a.migrateCheckpoint(mctx, &n, req, emit)
	}
	if err != nil {
		a.log.Warn("migration failed", "task", id, "to", req.To, "err", err)
		if errors.Is(err, api.ErrInDoubt) {
			// Keep asking the destination in the background; the task
			// stays busy ("settle") until the outcome is known.
			settling = true
			a.mu.Lock()
			a.busy[id] = "settle"
			cur := n
			if r, ok := a.records[id]; ok {
				cur = *r
			}
			a.mu.Unlock()
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				// A live source is still there, paused; a checkpoint
				// source is only its image.
				a.settle(&cur, mode == "live")
			}()
		}
		return api.MigrateEvent{}, err
	}
	ev.Step, ev.Done, ev.Mode, ev.Took = "done", true, mode, time.Since(start)
	a.log.Info("migration committed", "task", id, "to", req.To, "epoch", ev.Epoch, "took", ev.Took, "downtime", ev.Downtime)
	return ev, nil
}

// setPhase persists a new phase of rec (copying it).
func (a *Agent) setPhase(rec *record, phase api.Phase, epoch uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := *rec
	n.Phase, n.Epoch = phase, epoch
	if phase == api.PhaseRunning {
		n.Peer, n.Mode, n.PeerName, n.Image = "", "", "", nil
	}
	if phase == api.PhaseSuspended {
		n.Peer, n.Mode, n.PeerName = "", "", ""
	}
	if phase == api.PhaseMoved {
		n.Image, n.Prev = nil, nil
	}
	return a.putLocked(&n)
}

// markMoved records the committed move: a tombstone with the new epoch,
// still bound to the agent that fetched the image (a release it repeats is
// answered, another agent's refused).
func (a *Agent) markMoved(rec *record, peer string, epoch uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur, ok := a.records[rec.ID]; ok && cur.Phase == api.PhaseMoved && cur.Epoch >= epoch {
		return nil
	}
	os.RemoveAll(a.store.imageDir(rec.ID))
	n := record{ID: rec.ID, Driver: rec.Driver, Epoch: epoch, Phase: api.PhaseMoved, Spec: rec.Spec, Peer: peer, PeerName: rec.PeerName}
	delete(a.stale, rec.ID)
	return a.putLocked(&n)
}

// outcome is what the source learns from the destination after a failed
// or unanswered finish.
type outcome int

const (
	notCommitted outcome = iota
	committed
	inDoubt
)

// askOutcome asks the destination whether it owns the task at epoch.
func (a *Agent) askOutcome(ctx context.Context, peerAddr, id string, epoch uint64) outcome {
	t, err := a.peer(peerAddr).Inspect(ctx, id)
	switch {
	case err == nil && t.Epoch >= epoch && (t.Phase == api.PhaseRunning || t.Phase == api.PhaseMoved || t.Phase == api.PhaseSuspended):
		return committed
	case err == nil && t.Phase == api.PhaseIncoming:
		return inDoubt // not decided yet; it aborts by itself on timeout
	case err == nil, errors.Is(err, driver.ErrNotFound):
		return notCommitted
	}
	return inDoubt
}

func (a *Agent) migrateLive(ctx context.Context, rec *record, lm driver.LiveMigrator, req api.MigrateRequest, emit func(api.MigrateEvent)) (api.MigrateEvent, error) {
	id := rec.ID
	newEpoch := rec.Epoch + 1
	peer := a.peer(req.To)
	revert := func(cause error) (api.MigrateEvent, error) {
		if err := a.setPhase(rec, api.PhaseRunning, rec.Epoch); err != nil {
			a.log.Error("revert record", "task", id, "err", err)
		}
		emit(api.MigrateEvent{Step: "abort"})
		return api.MigrateEvent{}, cause
	}

	// prepare: the destination starts the task paused, listening.
	spec := rec.Spec
	spec.Epoch = newEpoch
	if is, ok := lm.(driver.IncomingSpecer); ok {
		// What the destination must match that the record does not say
		// (qemu: the guest's exact RAM size).
		s, err := is.IncomingSpec(id, spec)
		if err != nil {
			return revert(fmt.Errorf("migrate %q: %w", id, err))
		}
		spec = s
	}
	prep, err := peer.Prepare(ctx, api.PrepareRequest{Driver: rec.Driver, Spec: spec, Source: a.cfg.Name})
	if err != nil {
		return revert(fmt.Errorf("prepare at %s: %w", req.To, err))
	}
	emit(api.MigrateEvent{Step: "prepare"})
	session := api.SessionRequest{ID: id, Token: prep.Token}
	abortBoth := func(cause error) (api.MigrateEvent, error) {
		cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := lm.AbortOut(cctx, id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			a.log.Error("abort at source", "task", id, "err", err)
		}
		if err := peer.Abort(cctx, session); err != nil {
			a.log.Warn("abort at destination (it aborts by itself on timeout)", "task", id, "peer", req.To, "err", err)
		}
		return revert(cause)
	}

	// perform: tunnel QEMU's stream through this agent to the destination.
	tun, err := peer.Tunnel(ctx, id, prep.Token)
	if err != nil {
		return abortBoth(fmt.Errorf("open tunnel to %s: %w", req.To, err))
	}
	a.track(tun)
	defer a.untrack(tun)
	defer tun.Close()
	sock := filepath.Join(a.cfg.DataDir, "run", id+".out.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return abortBoth(fmt.Errorf("tunnel socket: %w", err))
	}
	defer os.Remove(sock)
	defer ln.Close()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			tun.Close()
			return
		}
		a.track(c)
		defer a.untrack(c)
		pipe(c, tun)
	}()
	final, err := lm.MigrateOut(ctx, id, sock, req.Options, func(p driver.Progress) {
		emit(api.MigrateEvent{Step: "perform", Progress: &p})
	})
	if err != nil {
		return abortBoth(fmt.Errorf("migrate %q to %s: %w", id, req.To, err))
	}
	// From here on cancel has no effect: the source is paused and complete.
	a.mu.Lock()
	delete(a.moves, id)
	a.mu.Unlock()

	// finish: the destination records the new epoch, then runs.
	fctx, fcancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer fcancel()
	if err := peer.Finish(fctx, session); err != nil {
		switch a.askOutcome(fctx, req.To, id, newEpoch) {
		case notCommitted:
			return abortBoth(fmt.Errorf("finish at %s: %w", req.To, err))
		case inDoubt:
			a.mu.Lock()
			a.stale[id] = fmt.Sprintf("move to %s in doubt: source kept paused", req.To)
			a.mu.Unlock()
			return api.MigrateEvent{}, fmt.Errorf("%w: task %q: finish at %s failed (%v) and its outcome is unknown; the source stays paused", api.ErrInDoubt, id, req.To, err)
		}
	}
	emit(api.MigrateEvent{Step: "finish", Epoch: newEpoch})

	// confirm: end the paused source; keep a tombstone.
	if err := lm.ConfirmOut(fctx, id); err != nil && !errors.Is(err, driver.ErrNotFound) {
		a.log.Error("confirm at source: the stopped copy may be left over", "task", id, "err", err)
	}
	if err := a.markMoved(rec, req.To, newEpoch); err != nil {
		a.log.Error("record move", "task", id, "err", err)
	}
	emit(api.MigrateEvent{Step: "confirm"})
	return api.MigrateEvent{Epoch: newEpoch, Downtime: final.Downtime, Progress: &final}, nil
}

func (a *Agent) migrateCheckpoint(ctx context.Context, rec *record, req api.MigrateRequest, emit func(api.MigrateEvent)) (api.MigrateEvent, error) {
	id := rec.ID
	newEpoch := rec.Epoch + 1
	// Only the node at req.To may fetch the image (handleImage).
	to, err := a.peerName(ctx, req.To)
	if err == nil {
		bound := *rec
		bound.PeerName = to
		a.mu.Lock()
		err = a.putLocked(&bound)
		a.mu.Unlock()
		rec = &bound
	}
	if err != nil {
		a.setPhase(rec, api.PhaseRunning, rec.Epoch)
		emit(api.MigrateEvent{Step: "abort"})
		return api.MigrateEvent{}, fmt.Errorf("move %q: destination %s: %w", id, req.To, err)
	}
	var img driver.Image
	var resumed <-chan error
	if sd, ok := a.drivers[rec.Driver].(streamDriver); ok && a.cfg.ImageTransfer == ImageTransferStream {
		// The destination fetches while the job writes (image.go).
		img, resumed, err = a.streamSuspend(ctx, rec, sd, req)
	} else {
		img, err = a.suspendLocal(ctx, rec)
	}
	if err != nil {
		a.setPhase(rec, api.PhaseRunning, rec.Epoch)
		emit(api.MigrateEvent{Step: "abort"})
		return api.MigrateEvent{}, fmt.Errorf("suspend %q for the move: %w", id, err)
	}
	n := *rec
	n.Image = &img
	a.mu.Lock()
	err = a.putLocked(&n)
	a.mu.Unlock()
	if err != nil {
		return api.MigrateEvent{}, err
	}
	emit(api.MigrateEvent{Step: "perform", Progress: &driver.Progress{Status: "suspended", TotalBytes: img.Bytes}})
	// The destination fetches the image, records epoch+1 and resumes.
	if resumed != nil {
		err = <-resumed
	} else {
		_, err = a.peer(req.To).Resume(ctx, id, api.ResumeRequest{Epoch: rec.Epoch, From: a.cfg.Advertise, CheckpointPeer: req.CheckpointPeer})
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		switch a.askOutcome(cctx, req.To, id, newEpoch) {
		case committed:
		case inDoubt:
			a.mu.Lock()
			a.stale[id] = fmt.Sprintf("move to %s in doubt: image kept, task not resumed", req.To)
			a.mu.Unlock()
			return api.MigrateEvent{}, fmt.Errorf("%w: task %q: resume at %s failed (%v) and its outcome is unknown; the image stays here", api.ErrInDoubt, id, req.To, err)
		default:
			emit(api.MigrateEvent{Step: "abort"})
			if rerr := a.drivers[rec.Driver].Resume(cctx, rec.Spec, a.store.imageDir(id)); rerr != nil {
				a.setPhase(&n, api.PhaseSuspended, rec.Epoch)
				return api.MigrateEvent{}, fmt.Errorf("move to %s failed (%v) and resuming here failed too (%v): task %q is suspended on %s", req.To, err, rerr, id, a.cfg.Name)
			}
			a.setPhase(&n, api.PhaseRunning, rec.Epoch)
			os.RemoveAll(a.store.imageDir(id))
			return api.MigrateEvent{}, fmt.Errorf("move %q to %s (resumed here): %w", id, req.To, err)
		}
	}
	emit(api.MigrateEvent{Step: "finish", Epoch: newEpoch})
	if err := a.markMoved(rec, req.To, newEpoch); err != nil {
		a.log.Error("record move", "task", id, "err", err)
	}
	emit(api.MigrateEvent{Step: "confirm"})
	return api.MigrateEvent{Epoch: newEpoch, Downtime: 0, Progress: &driver.Progress{Status: "completed", TransferredBytes: img.Bytes, TotalBytes: img.Bytes}}, nil
}

func (a *Agent) handleMigrate(w http.ResponseWriter, r *http.Request) {
	var req api.MigrateRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	id := r.PathValue("id")
	// Refuse before streaming when the request cannot start.
	a.mu.Lock()
	_, err := a.checkEpochLocked(id, req.Epoch)
	if err == nil {
		if op, busy := a.busy[id]; busy {
			err = fmt.Errorf("%w: task %q is busy with %s", driver.ErrBusy, id, op)
		}
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	var (
		once sync.Once
		out  *ndjson
		mu   sync.Mutex
	)
	emit := func(ev api.MigrateEvent) {
		mu.Lock()
		defer mu.Unlock()
		once.Do(func() { out = newNDJSON(w) })
		out.send(ev)
	}
	ev, err := a.Migrate(r.Context(), id, req, emit)
	mu.Lock()
	started := out != nil
	mu.Unlock()
	if err != nil {
		if !started {
			writeErr(w, err)
			return
		}
		e, _ := api.ErrorFor(err)
		emit(api.MigrateEvent{Step: "done", Done: true, Error: &e})
		return
	}
	emit(ev)
}

// Cancel stops an outbound live migration in flight; the source keeps
// running.
func (a *Agent) Cancel(ctx context.Context, id string, epoch uint64) error {
	a.mu.Lock()
	rec, err := a.checkEpochLocked(id, epoch)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	cancel, ok := a.moves[id]
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: task %q has no move in flight that can be cancelled", driver.ErrNotFound, id)
	}
	cancel()
	if lm, ok := a.drivers[rec.Driver].(driver.LiveMigrator); ok {
		if err := lm.CancelOut(ctx, id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			a.log.Debug("cancel", "task", id, "err", err)
		}
	}
	return nil
}

func (a *Agent) handleCancel(w http.ResponseWriter, r *http.Request) {
	var req api.EpochRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.Cancel(r.Context(), r.PathValue("id"), req.Epoch); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// --- destination side -------------------------------------------------------

// incomingSession is a prepared incoming live migration.
type incomingSession struct {
	id, token, socket string
	lm                driver.LiveMigrator
	source            string

	mu         sync.Mutex
	tunnel     bool // tunnel opened
	finishing  bool // finish started: no timeout abort any more
	timer      *time.Timer
	tunnelConn net.Conn
}

func (s *incomingSession) stopTimer() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
	}
}

func (a *Agent) handlePrepare(w http.ResponseWriter, r *http.Request) {
	var req api.PrepareRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	resp, err := a.prepare(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *Agent) prepare(ctx context.Context, req api.PrepareRequest) (api.PrepareResponse, error) {
	spec := req.Spec
	if err := validateSpec(&spec); err != nil {
		return api.PrepareResponse{}, err
	}
	if err := a.resolveGuestImage(ctx, &spec); err != nil { // guestimage.go
		return api.PrepareResponse{}, err
	}
	if spec.Epoch == 0 {
		return api.PrepareResponse{}, fmt.Errorf("%w: prepare %q: epoch is required", driver.ErrInvalidSpec, spec.ID)
	}
	d, err := a.driverFor(req.Driver, &spec)
	if err != nil {
		return api.PrepareResponse{}, err
	}
	lm, ok := d.(driver.LiveMigrator)
	if !ok {
		return api.PrepareResponse{}, fmt.Errorf("%w: %s driver on %s cannot receive live migrations", driver.ErrUnsupported, d.Kind(), a.cfg.Name)
	}
	id := spec.ID
	a.mu.Lock()
	prev, had := a.records[id]
	if had && prev.Phase != api.PhaseMoved {
		a.mu.Unlock()
		return api.PrepareResponse{}, fmt.Errorf("%w: task %q is already %s on %s (epoch %d)", driver.ErrExists, id, prev.Phase, a.cfg.Name, prev.Epoch)
	}
	if had && spec.Epoch <= prev.Epoch {
		a.mu.Unlock()
		return api.PrepareResponse{}, fmt.Errorf("%w: task %q: incoming epoch %d, but %s saw it move away at epoch %d", api.ErrStaleEpoch, id, spec.Epoch, a.cfg.Name, prev.Epoch)
	}
	if err := a.fitsLocked(&spec); err != nil {
		a.mu.Unlock()
		return api.PrepareResponse{}, err
	}
	if err := a.acquireLocked(id, "incoming"); err != nil {
		a.mu.Unlock()
		return api.PrepareResponse{}, err
	}
	rec := &record{ID: id, Driver: d.Kind(), Epoch: spec.Epoch, Phase: api.PhaseIncoming, Spec: spec, Peer: req.Source}
	if had {
		p := *prev
		p.Prev = nil
		rec.Prev = &p
	}
	err = a.putLocked(rec)
	a.mu.Unlock()
	if err != nil {
		a.release(id)
		return api.PrepareResponse{}, err
	}
	sock, err := lm.PrepareIncoming(ctx, spec)
	if err != nil {
		a.dropIncoming(rec)
		a.release(id)
		return api.PrepareResponse{}, fmt.Errorf("prepare incoming %q on %s: %w", id, a.cfg.Name, err)
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	s := &incomingSession{id: id, token: hex.EncodeToString(tok), socket: sock, lm: lm, source: req.Source}
	s.timer = time.AfterFunc(a.cfg.IncomingTimeout, func() { a.abortIncoming(s, "no tunnel opened in time") })
	a.mu.Lock()
	a.incoming[id] = s
	a.mu.Unlock()
	a.log.Info("incoming prepared", "task", id, "from", req.Source, "epoch", spec.Epoch)
	return api.PrepareResponse{Token: s.token}, nil
}

// dropIncoming restores the record an incoming copy replaced.
func (a *Agent) dropIncoming(rec *record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rec.Prev != nil {
		if err := a.putLocked(rec.Prev); err != nil {
			a.log.Error("restore record", "task", rec.ID, "err", err)
		}
		return
	}
	delete(a.records, rec.ID)
	a.store.remove(rec.ID)
}

// session returns the incoming session of id if token matches.
func (a *Agent) session(id, token string) (*incomingSession, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.incoming[id]
	if !ok || s.token != token {
		return nil, fmt.Errorf("%w: no incoming migration of %q with this token on %s", driver.ErrNotFound, id, a.cfg.Name)
	}
	return s, nil
}

// abortIncoming tears down an incoming session (timeout, abort request).
func (a *Agent) abortIncoming(s *incomingSession, reason string) error {
	s.mu.Lock()
	if s.finishing {
		s.mu.Unlock()
		return fmt.Errorf("%w: incoming %q is finishing; too late to abort", driver.ErrBusy, s.id)
	}
	s.finishing = true
	if s.timer != nil {
		s.timer.Stop()
	}
	conn := s.tunnelConn
	s.mu.Unlock()
	a.mu.Lock()
	if a.incoming[s.id] != s {
		a.mu.Unlock()
		return nil
	}
	delete(a.incoming, s.id)
	rec := a.records[s.id]
	a.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := s.lm.AbortIncoming(ctx, s.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
		a.log.Error("abort incoming", "task", s.id, "err", err)
	}
	if rec != nil && rec.Phase == api.PhaseIncoming {
		a.dropIncoming(rec)
	}
	a.release(s.id)
	a.log.Info("incoming aborted", "task", s.id, "reason", reason)
	return nil
}

func (a *Agent) handleAbort(w http.ResponseWriter, r *http.Request) {
	var req api.SessionRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	s, err := a.session(req.ID, req.Token)
	if err == nil {
		err = a.abortIncoming(s, "source asked")
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (a *Agent) handleFinish(w http.ResponseWriter, r *http.Request) {
	var req api.SessionRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	s, err := a.session(req.ID, req.Token)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.mu.Lock()
	if s.finishing {
		s.mu.Unlock()
		writeErr(w, fmt.Errorf("%w: incoming %q is already finishing or aborted", driver.ErrBusy, s.id))
		return
	}
	s.finishing = true
	s.timer.Stop()
	s.mu.Unlock()
	a.mu.Lock()
	delete(a.incoming, s.id)
	rec := a.records[s.id]
	a.mu.Unlock()
	defer a.release(s.id)
	// Commit: the new epoch is recorded here before the copy runs.
	if err := a.setPhase(rec, api.PhaseRunning, rec.Epoch); err != nil {
		s.lm.AbortIncoming(context.Background(), s.id)
		a.dropIncoming(rec)
		writeErr(w, err)
		return
	}
	if err := s.lm.FinishIncoming(r.Context(), s.id); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		s.lm.AbortIncoming(ctx, s.id)
		a.dropIncoming(rec)
		writeErr(w, fmt.Errorf("finish incoming %q on %s: %w", s.id, a.cfg.Name, err))
		return
	}
	a.log.Info("incoming finished: task runs here", "task", s.id, "epoch", rec.Epoch)
	t, err := a.Inspect(r.Context(), s.id)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}
