package agent

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
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
		n.Peer, n.Mode, n.Image = "", "", nil
	}
	if phase == api.PhaseSuspended {
		n.Peer, n.Mode = "", ""
	}
	if phase == api.PhaseMoved {
		n.Image, n.Prev = nil, nil
	}
	return a.putLocked(&n)
}

// markMoved records the committed move: a tombstone with the new epoch.
func (a *Agent) markMoved(rec *record, peer string, epoch uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur, ok := a.records[rec.ID]; ok && cur.Phase == api.PhaseMoved && cur.Epoch >= epoch {
		return nil
	}
	os.RemoveAll(a.store.imageDir(rec.ID))
	n := record{ID: rec.ID, Driver: rec.Driver, Epoch: epoch, Phase: api.PhaseMoved, Spec: rec.Spec, Peer: peer}
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
	img, err := a.suspendLocal(ctx, rec)
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
	_, err = a.peer(req.To).Resume(ctx, id, api.ResumeRequest{Epoch: rec.Epoch, From: a.cfg.Advertise})
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

// handleTunnel turns the connection into a byte pipe to the incoming QEMU's
// socket (HTTP Upgrade: ferry-tunnel/1).
func (a *Agent) handleTunnel(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.TunnelProtocol) {
		writeErr(w, fmt.Errorf("%w: tunnel needs Upgrade: %s", driver.ErrInvalidSpec, api.TunnelProtocol))
		return
	}
	s, err := a.session(r.PathValue("id"), r.URL.Query().Get("token"))
	if err != nil {
		writeErr(w, err)
		return
	}
	s.mu.Lock()
	if s.tunnel || s.finishing {
		s.mu.Unlock()
		writeErr(w, fmt.Errorf("%w: incoming %q already has a tunnel", driver.ErrBusy, s.id))
		return
	}
	s.tunnel = true
	s.timer.Stop()
	s.mu.Unlock()
	var d net.Dialer
	qc, err := d.DialContext(r.Context(), "unix", s.socket)
	if err != nil {
		a.abortIncoming(s, "cannot reach incoming socket")
		writeErr(w, fmt.Errorf("connect to incoming socket of %q: %w", s.id, err))
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		qc.Close()
		writeErr(w, errors.New("connection cannot be hijacked"))
		return
	}
	w.Header().Set("Connection", "Upgrade")
	w.Header().Set("Upgrade", api.TunnelProtocol)
	w.WriteHeader(http.StatusSwitchingProtocols)
	conn, brw, err := hj.Hijack()
	if err != nil {
		qc.Close()
		a.abortIncoming(s, "hijack failed")
		return
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		qc.Close()
		a.abortIncoming(s, "tunnel write failed")
		return
	}
	var tc net.Conn = conn
	if n := brw.Reader.Buffered(); n > 0 {
		tc = &bufferedConn{Conn: conn, r: io.MultiReader(io.LimitReader(brw.Reader, int64(n)), conn)}
	}
	s.mu.Lock()
	s.tunnelConn = conn
	s.mu.Unlock()
	a.track(conn)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.untrack(conn)
		pipe(tc, qc)
		// The stream ended: finish must come soon, else abort.
		s.mu.Lock()
		if !s.finishing {
			s.timer = time.AfterFunc(a.cfg.IncomingTimeout, func() { a.abortIncoming(s, "no finish after the tunnel closed") })
		}
		s.mu.Unlock()
	}()
}

// bufferedConn reads through bytes already buffered by the HTTP server.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the underlying connection when it can.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (a *Agent) track(c net.Conn) {
	a.mu.Lock()
	a.conns[c] = struct{}{}
	a.mu.Unlock()
}

func (a *Agent) untrack(c net.Conn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
}

// pipe copies both ways between x and y, half-closing each side when its
// source ends, and closes both when done or on the first error.
func pipe(x, y net.Conn) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() { once.Do(func() { x.Close(); y.Close() }) }
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 256<<10)
		_, err := io.CopyBuffer(dst, src, buf)
		if err != nil {
			closeBoth()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		closeBoth()
	}
	wg.Add(2)
	go cp(x, y)
	go cp(y, x)
	wg.Wait()
	closeBoth()
}

// --- images between agents ------------------------------------------------

// handleImage streams a suspended task's image as a tar: first record.json
// (the record, with spec and driver), then the image directory's files.
// The task is locked against local resume (phase migrating-out) until the
// fetcher releases it.
func (a *Agent) handleImage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	epoch, err := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
	if err != nil {
		writeErr(w, fmt.Errorf("%w: epoch %q", driver.ErrInvalidSpec, r.URL.Query().Get("epoch")))
		return
	}
	_, caller, _ := pki.PeerRole(r.TLS)
	a.mu.Lock()
	rec, err := a.checkEpochLocked(id, epoch)
	if err == nil {
		switch {
		case rec.Image == nil:
			err = fmt.Errorf("%w: task %q has no image on %s (phase %s)", driver.ErrNotFound, id, a.cfg.Name, rec.Phase)
		case rec.Phase == api.PhaseSuspended:
			if _, busy := a.busy[id]; busy {
				err = fmt.Errorf("%w: task %q is busy with %s", driver.ErrBusy, id, a.busy[id])
				break
			}
			n := *rec
			n.Phase, n.Peer, n.Mode = api.PhaseMigratingOut, caller, "fetch"
			err = a.putLocked(&n)
			rec = &n
		case rec.Phase == api.PhaseMigratingOut && rec.Mode == "checkpoint":
		default:
			err = fmt.Errorf("%w: task %q is %s on %s", driver.ErrBusy, id, rec.Phase, a.cfg.Name)
		}
	}
	a.mu.Unlock()
	if err != nil {
		writeErr(w, err)
		return
	}
	if strings.EqualFold(r.Header.Get("Upgrade"), api.ImageProtocol) {
		a.sendImageCAS(w, rec)
		return
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.WriteHeader(http.StatusOK)
	if err := writeImageTar(w, rec, a.store.imageDir(id)); err != nil {
		a.log.Warn("send image", "task", id, "err", err)
	}
}

// sendImageCAS answers an image fetch upgraded to api.ImageProtocol: the
// record in a header, then the image directory with cas/transfer (chunks
// verified by hash, zero runs never sent, a cut transfer resumable).
func (a *Agent) sendImageCAS(w http.ResponseWriter, rec *record) {
	meta, err := json.Marshal(rec)
	if err != nil {
		writeErr(w, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeErr(w, errors.New("connection cannot be hijacked"))
		return
	}
	w.Header().Set("Connection", "Upgrade")
	w.Header().Set("Upgrade", api.ImageProtocol)
	w.Header().Set(api.RecordHeader, base64.StdEncoding.EncodeToString(meta))
	w.WriteHeader(http.StatusSwitchingProtocols)
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if err := brw.Flush(); err != nil {
		return
	}
	a.track(conn)
	defer a.untrack(conn)
	start := time.Now()
	res, err := transfer.SendDir(a.ctx, transfer.Hijacked(conn, brw.Reader), a.store.imageDir(rec.ID), filepath.Join(a.cfg.DataDir, "run"),
		transfer.SendOptions{ID: fmt.Sprintf("%s-e%d", rec.ID, rec.Epoch), Name: "image", Logger: a.log})
	if err != nil {
		a.log.Warn("send image", "task", rec.ID, "err", err)
		return
	}
	a.log.Info("image sent", "task", rec.ID, "chunks", res.ChunksSent, "bytes", res.BytesSent, "wire_bytes", res.WireBytes, "took", time.Since(start))
}

// receiveImageCAS fetches a peer's image into dir (which must not exist)
// and returns the peer's record.
func (a *Agent) receiveImageCAS(ctx context.Context, peerAddr, id string, epoch uint64, dir string) (*record, error) {
	conn, meta, err := a.peer(peerAddr).FetchImageStream(ctx, id, epoch)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	a.track(conn)
	defer a.untrack(conn)
	var prec record
	if err := json.Unmarshal(meta, &prec); err != nil {
		return nil, fmt.Errorf("%w: record of %q from %s: %v", driver.ErrInvalidSpec, id, peerAddr, err)
	}
	if prec.Image != nil {
		// The transfer stages the packed image, then extracts it: twice
		// its size, plus a reserve.
		need := 2*prec.Image.Bytes + max(prec.Image.Bytes/100, 1<<20)
		free, err := a.cfg.FreeSpace(a.cfg.DataDir)
		if err != nil {
			return nil, err
		}
		if free < need {
			return nil, fmt.Errorf("%w: image of %q is %d bytes; node %s needs %d free in %s and has %d", driver.ErrInsufficient, id, prec.Image.Bytes, a.cfg.Name, need, a.cfg.DataDir, free)
		}
	}
	staging := filepath.Join(a.cfg.DataDir, "run", "cas-staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return nil, err
	}
	rc := &transfer.Receiver{StagingDir: staging, Logger: a.log,
		Dest: func(transfer.Header, *cas.Index) (string, error) { return dir, nil }}
	res, err := rc.Serve(ctx, conn)
	if err != nil {
		return nil, err
	}
	a.log.Info("image received", "task", id, "from", peerAddr, "chunks", res.Received, "bytes", res.ReceivedBytes)
	return &prec, nil
}

func writeImageTar(w io.Writer, rec *record, dir string) error {
	tw := tar.NewWriter(w)
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "record.json", Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(b); err != nil {
		return err
	}
	err = filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if rel == "." {
			return nil
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(filepath.Join("image", rel))
		if fi.IsDir() {
			hdr.Name += "/"
			return tw.WriteHeader(hdr)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// readImageTar unpacks a tar from writeImageTar into dir (its image files)
// and returns the record. Paths are confined to dir.
func readImageTar(r io.Reader, dir string) (*record, error) {
	tr := tar.NewReader(r)
	var rec *record
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("image stream: %w", err)
		}
		switch {
		case hdr.Name == "record.json":
			var rc record
			if err := json.NewDecoder(io.LimitReader(tr, maxBody)).Decode(&rc); err != nil {
				return nil, fmt.Errorf("%w: image stream record: %v", driver.ErrInvalidSpec, err)
			}
			rec = &rc
		case strings.HasPrefix(hdr.Name, "image/"):
			rel := filepath.Clean(filepath.FromSlash(strings.TrimPrefix(hdr.Name, "image/")))
			if rel == "." {
				continue
			}
			if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return nil, fmt.Errorf("%w: image stream path %q escapes the image", driver.ErrInvalidSpec, hdr.Name)
			}
			p := filepath.Join(dir, rel)
			switch hdr.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(p, 0o700); err != nil {
					return nil, err
				}
			case tar.TypeReg:
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					return nil, err
				}
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return nil, err
				}
				if _, err := io.Copy(f, tr); err != nil {
					f.Close()
					return nil, fmt.Errorf("image stream: %w", err)
				}
				if err := f.Sync(); err != nil {
					f.Close()
					return nil, err
				}
				if err := f.Close(); err != nil {
					return nil, err
				}
			}
		default:
			return nil, fmt.Errorf("%w: image stream holds unexpected %q", driver.ErrInvalidSpec, hdr.Name)
		}
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: image stream has no record.json", driver.ErrInvalidSpec)
	}
	return rec, nil
}

// resumeFromPeer fetches a suspended task's image from the agent at
// req.From, commits epoch+1 here and resumes it, then releases the image at
// the peer.
func (a *Agent) resumeFromPeer(ctx context.Context, id string, req api.ResumeRequest) (api.Task, error) {
	if err := api.ValidID(id); err != nil {
		return api.Task{}, err
	}
	if req.Epoch == 0 {
		return api.Task{}, fmt.Errorf("%w: resume %q: epoch is required", driver.ErrInvalidSpec, id)
	}
	newEpoch := req.Epoch + 1
	a.mu.Lock()
	prev, had := a.records[id]
	if had && prev.Phase != api.PhaseMoved {
		a.mu.Unlock()
		return api.Task{}, fmt.Errorf("%w: task %q is already %s on %s (epoch %d)", driver.ErrExists, id, prev.Phase, a.cfg.Name, prev.Epoch)
	}
	if had && newEpoch <= prev.Epoch {
		a.mu.Unlock()
		return api.Task{}, fmt.Errorf("%w: task %q: resume at epoch %d, but %s saw it move away at epoch %d", api.ErrStaleEpoch, id, newEpoch, a.cfg.Name, prev.Epoch)
	}
	if err := a.acquireLocked(id, "resume"); err != nil {
		a.mu.Unlock()
		return api.Task{}, err
	}
	a.mu.Unlock()
	defer a.release(id)
	peer := a.peer(req.From)
	giveBack := func() {
		cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := peer.Release(cctx, id, api.ReleaseRequest{Epoch: req.Epoch, Peer: a.cfg.Advertise}); err != nil {
			a.log.Warn("give image back", "task", id, "peer", req.From, "err", err)
		}
	}
	tmp := filepath.Join(a.store.taskDir(id), "image.incoming")
	os.RemoveAll(tmp)
	fail := func(err error) (api.Task, error) {
		os.RemoveAll(tmp)
		giveBack()
		return api.Task{}, err
	}
	start := time.Now()
	prec, err := a.receiveImageCAS(ctx, req.From, id, req.Epoch, tmp)
	if err != nil {
		var re *api.RemoteError
		if errors.As(err, &re) {
			// Refused before anything moved (stale epoch, busy...): the
			// holder's image was not locked for us.
			os.RemoveAll(tmp)
			return api.Task{}, fmt.Errorf("fetch image of %q from %s: %w", id, req.From, err)
		}
		return fail(fmt.Errorf("fetch image of %q from %s: %w", id, req.From, err))
	}
	if prec.ID != id || prec.Epoch != req.Epoch {
		return fail(fmt.Errorf("%w: image from %s is task %q epoch %d, want %q epoch %d", api.ErrStaleEpoch, req.From, prec.ID, prec.Epoch, id, req.Epoch))
	}
	d, ok := a.drivers[prec.Driver]
	if !ok {
		return fail(fmt.Errorf("%w: driver %q not on node %s", driver.ErrUnsupported, prec.Driver, a.cfg.Name))
	}
	spec := prec.Spec
	spec.Epoch = newEpoch
	a.mu.Lock()
	err = a.fitsLocked(&spec)
	if err == nil {
		os.RemoveAll(a.store.imageDir(id))
		err = os.Rename(tmp, a.store.imageDir(id))
	}
	rec := &record{ID: id, Driver: d.Kind(), Epoch: newEpoch, Phase: api.PhaseRunning, Spec: spec}
	if err == nil {
		if had {
			p := *prev
			rec.Prev = &p
		}
		err = a.putLocked(rec)
	}
	a.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	a.log.Info("image fetched", "task", id, "from", req.From, "bytes", dirSize(a.store.imageDir(id)), "took", time.Since(start))
	if err := d.Resume(ctx, spec, a.store.imageDir(id)); err != nil {
		a.dropIncoming(rec)
		os.RemoveAll(a.store.imageDir(id))
		giveBack()
		return api.Task{}, err
	}
	a.mu.Lock()
	rec.Prev = nil
	a.putLocked(rec)
	a.mu.Unlock()
	os.RemoveAll(a.store.imageDir(id))
	cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := peer.Release(cctx, id, api.ReleaseRequest{Epoch: newEpoch, Peer: a.cfg.Advertise, Committed: true}); err != nil {
		a.log.Warn("release image at peer (its copy is stale, epoch behind)", "task", id, "peer", req.From, "err", err)
	}
	a.log.Info("task resumed from peer", "task", id, "from", req.From, "epoch", newEpoch)
	return a.Inspect(ctx, id)
}

func (a *Agent) handleRelease(w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	id := r.PathValue("id")
	if err := api.ValidID(id); err != nil {
		writeErr(w, err)
		return
	}
	a.mu.Lock()
	rec, ok := a.records[id]
	a.mu.Unlock()
	switch {
	case !ok:
		writeErr(w, fmt.Errorf("%w: task %q on %s", driver.ErrNotFound, id, a.cfg.Name))
		return
	case req.Committed && req.Epoch > rec.Epoch:
		if err := a.markMoved(rec, req.Peer, req.Epoch); err != nil {
			writeErr(w, err)
			return
		}
	case !req.Committed && req.Epoch == rec.Epoch && rec.Phase == api.PhaseMigratingOut && rec.Mode == "fetch":
		if err := a.setPhase(rec, api.PhaseSuspended, rec.Epoch); err != nil {
			writeErr(w, err)
			return
		}
	case req.Committed && req.Epoch <= rec.Epoch && rec.Phase == api.PhaseMoved:
		// Already released.
	default:
		writeErr(w, fmt.Errorf("%w: release of %q at epoch %d: node %s holds epoch %d (%s)", api.ErrStaleEpoch, id, req.Epoch, a.cfg.Name, rec.Epoch, rec.Phase))
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}
