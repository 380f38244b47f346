package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
)

// maxBody bounds request bodies.
const maxBody = 1 << 20

// roles allowed per class of endpoint.
var (
	anyRole     = []pki.Role{pki.RoleServer, pki.RoleAgent, pki.RoleClient}
	serverRole  = []pki.Role{pki.RoleServer}
	commandRole = []pki.Role{pki.RoleServer, pki.RoleAgent} // an agent: mayAskResume, DropReplica
	peerRole    = []pki.Role{pki.RoleAgent}
)

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, roles []pki.Role, fn http.HandlerFunc) {
		mux.Handle(pattern, authorize(roles, fn))
	}
	h("GET /v1/health", anyRole, a.handleHealth)
	h("GET /v1/node", anyRole, a.handleNode)
	h("GET /v1/tasks", anyRole, a.handleList)
	h("POST /v1/tasks", serverRole, a.handleRun)
	h("GET /v1/tasks/{id}", anyRole, a.handleInspect)
	h("GET /v1/tasks/{id}/stats", anyRole, a.handleStats)
	h("GET /v1/tasks/{id}/logs", anyRole, a.handleLogs)
	h("POST /v1/tasks/{id}/stop", serverRole, a.handleStop)
	h("POST /v1/tasks/{id}/suspend", serverRole, a.handleSuspend)
	h("POST /v1/tasks/{id}/resume", commandRole, a.handleResume)
	h("POST /v1/tasks/{id}/pause", serverRole, a.handlePause)
	h("POST /v1/tasks/{id}/unpause", serverRole, a.handlePause)
	h("POST /v1/tasks/{id}/migrate", serverRole, a.handleMigrate)
	h("POST /v1/tasks/{id}/cancel", serverRole, a.handleCancel)
	h("POST /v1/tasks/{id}/grant", serverRole, a.handleGrant)
	h("POST /v1/peer/prepare", peerRole, a.handlePrepare)
	h("POST /v1/peer/finish", peerRole, a.handleFinish)
	h("POST /v1/peer/abort", peerRole, a.handleAbort)
	h("GET /v1/peer/tunnel/{id}", peerRole, a.handleTunnel)
	h("GET /v1/peer/tasks/{id}/image", peerRole, a.handleImage)
	h("POST /v1/peer/tasks/{id}/release", peerRole, a.handleRelease)
	h("GET /v1/replicas", anyRole, a.handleReplicas)
	h("POST /v1/peer/replicas/{id}", peerRole, a.handleReplicaPush)
	h("GET /v1/peer/replicas/{id}/image", peerRole, a.handleReplicaFetch)
	h("POST /v1/replicas/{id}/drop", commandRole, a.handleReplicaDrop)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, fmt.Errorf("%w: no endpoint %s %s", driver.ErrNotFound, r.Method, r.URL.Path))
	})
	return mux
}

// authorize admits callers whose certificate role is in roles.
func authorize(roles []pki.Role, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role, name, err := pki.PeerRole(r.TLS)
		if err != nil {
			writeErr(w, fmt.Errorf("%w: %v", api.ErrForbidden, err))
			return
		}
		for _, ok := range roles {
			if role == ok {
				next.ServeHTTP(w, r)
				return
			}
		}
		writeErr(w, fmt.Errorf("%w: %s %s is not allowed for %q (role %s)", api.ErrForbidden, r.Method, r.URL.Path, name, role))
	})
}

// decode reads a JSON body strictly.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body of %s: %v", driver.ErrInvalidSpec, r.URL.Path, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: request body of %s: trailing data", driver.ErrInvalidSpec, r.URL.Path)
	}
	return nil
}

// decodeTask decodes r's body into v (decode) and returns the task id of
// r's path, validated (api.ValidID).
func decodeTask(r *http.Request, v any) (string, error) {
	if err := decode(r, v); err != nil {
		return "", err
	}
	id := r.PathValue("id")
	return id, api.ValidID(id)
}

func (a *Agent) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{OK: true, Name: a.cfg.Name})
}

// Node returns the node's capacities and usage.
func (a *Agent) Node() api.NodeInfo {
	a.mu.Lock()
	cpu, mem := a.usedLocked()
	a.mu.Unlock()
	acc := a.cfg.Accelerator
	if acc == "" {
		for _, d := range a.drivers {
			if x, ok := d.(interface{ Accelerator() string }); ok {
				acc = x.Accelerator()
			}
			if x, ok := d.(interface{ Accel() string }); ok {
				acc = x.Accel()
			}
		}
	}
	var qv string
	for _, d := range a.drivers {
		if x, ok := d.(interface{ QEMUVersion() string }); ok {
			qv = x.QEMUVersion()
		}
	}
	return api.NodeInfo{Name: a.cfg.Name, CPUs: a.cfg.CPUs, MemoryBytes: a.cfg.MemoryBytes, Accelerator: acc, QEMUVersion: qv,
		Drivers: a.driverKinds(), UsedCPUs: cpu, UsedMemoryBytes: mem}
}

func (a *Agent) handleNode(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.Node())
}

// driverStatuses lists every driver's tasks by id.
func (a *Agent) driverStatuses(ctx context.Context) (map[string]driver.Status, error) {
	out := map[string]driver.Status{}
	for kind, d := range a.drivers {
		sts, err := d.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s tasks: %w", kind, err)
		}
		for _, s := range sts {
			if s.Kind == "" {
				s.Kind = kind
			}
			out[s.ID] = s
		}
	}
	return out, nil
}

// List returns the node's tasks: every record (except tombstones) and every
// copy a driver runs, with stale copies flagged.
func (a *Agent) List(ctx context.Context) ([]api.Task, error) {
	sts, err := a.driverStatuses(ctx)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []api.Task
	for id, r := range a.records {
		st, running := sts[id]
		if r.Phase == api.PhaseMoved && !running {
			continue
		}
		out = append(out, a.viewLocked(r, st, running))
	}
	for id, st := range sts {
		if _, ok := a.records[id]; ok {
			continue
		}
		s := st
		reason := a.stale[id]
		if reason == "" {
			reason = "no record on this node: not owned here"
		}
		out = append(out, api.Task{ID: id, Driver: st.Kind, Epoch: st.Epoch, Phase: api.PhaseRunning, Status: &s, Stale: true, StaleReason: reason})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// viewLocked renders one record with its driver status. Caller holds mu.
func (a *Agent) viewLocked(r *record, st driver.Status, running bool) api.Task {
	spec := r.Spec
	t := api.Task{ID: r.ID, Driver: r.Driver, Epoch: r.Epoch, Phase: r.Phase, Spec: &spec, Image: r.Image, Peer: r.Peer, Busy: a.busy[r.ID], CheckpointPeer: r.CheckpointPeer}
	if running {
		s := st
		t.Status = &s
		switch {
		case r.Phase == api.PhaseMoved:
			t.Stale, t.StaleReason = true, fmt.Sprintf("task moved to %s at epoch %d; this copy is left over", r.Peer, r.Epoch)
		case st.Epoch != 0 && st.Epoch < r.Epoch:
			t.Stale, t.StaleReason = true, fmt.Sprintf("copy has epoch %d, record holds %d", st.Epoch, r.Epoch)
		case r.Phase == api.PhaseSuspended:
			t.Stale, t.StaleReason = true, "record says suspended but a copy runs"
		}
		if r.Phase == api.PhaseRunning {
			t.RAMTailKiB = a.ramTailLocked(r)
		}
	} else if r.Phase == api.PhaseRunning {
		t.Phase = api.PhaseLost
	}
	if reason, ok := a.stale[r.ID]; ok && !t.Stale {
		t.Stale, t.StaleReason = true, reason
	}
	return t
}

// ramTailLocked is the RAM tail (KiB) of the guest r's driver runs, as it
// launched it (driver.IncomingSpecer, the shape a live migration's
// destination must match); nil when the driver does not say. Caller holds
// mu.
func (a *Agent) ramTailLocked(r *record) *int64 {
	is, ok := a.drivers[r.Driver].(driver.IncomingSpecer)
	if !ok || r.Spec.VM == nil {
		return nil
	}
	s, err := is.IncomingSpec(r.ID, r.Spec)
	if err != nil || s.VM == nil {
		return nil
	}
	return s.VM.RAMTailKiB
}

func (a *Agent) handleList(w http.ResponseWriter, r *http.Request) {
	ts, err := a.List(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if ts == nil {
		ts = []api.Task{}
	}
	writeJSON(w, http.StatusOK, ts)
}

// Inspect returns one task.
func (a *Agent) Inspect(ctx context.Context, id string) (api.Task, error) {
	if err := api.ValidID(id); err != nil {
		return api.Task{}, err
	}
	ts, err := a.List(ctx)
	if err != nil {
		return api.Task{}, err
	}
	for _, t := range ts {
		if t.ID == id {
			return t, nil
		}
	}
	a.mu.Lock()
	rec, ok := a.records[id]
	a.mu.Unlock()
	if ok && rec.Phase == api.PhaseMoved {
		return api.Task{ID: id, Driver: rec.Driver, Epoch: rec.Epoch, Phase: api.PhaseMoved, Peer: rec.Peer}, nil
	}
	return api.Task{}, fmt.Errorf("%w: task %q on node %s", driver.ErrNotFound, id, a.cfg.Name)
}

func (a *Agent) handleInspect(w http.ResponseWriter, r *http.Request) {
	t, err := a.Inspect(r.Context(), r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// liveRecord returns the record and driver of a task this node runs.
func (a *Agent) liveRecord(id string) (*record, driver.Driver, error) {
	if err := api.ValidID(id); err != nil {
		return nil, nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	rec, ok := a.records[id]
	if !ok || !occupies(rec.Phase) {
		return nil, nil, fmt.Errorf("%w: no running task %q on node %s", driver.ErrNotFound, id, a.cfg.Name)
	}
	return rec, a.drivers[rec.Driver], nil
}

func (a *Agent) handleStats(w http.ResponseWriter, r *http.Request) {
	rec, d, err := a.liveRecord(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	st, err := d.Stats(r.Context(), rec.ID)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// handleLogs serves the task's console or stdout/stderr: the last ?tail=N
// lines (default all), and with ?follow=1 new output until the caller goes
// away or the task leaves the node.
func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := api.ValidID(id); err != nil {
		writeErr(w, err)
		return
	}
	q := r.URL.Query()
	tail := -1
	if s := q.Get("tail"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeErr(w, fmt.Errorf("%w: tail %q: want a non-negative integer", driver.ErrInvalidSpec, s))
			return
		}
		tail = n
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	a.mu.Lock()
	rec, ok := a.records[id]
	a.mu.Unlock()
	var d driver.Driver
	if ok {
		d = a.drivers[rec.Driver]
	} else {
		for _, dd := range a.drivers {
			if _, err := os.Stat(dd.LogPath(id)); err == nil {
				d = dd
			}
		}
	}
	if d == nil {
		writeErr(w, fmt.Errorf("%w: no logs of task %q on node %s", driver.ErrNotFound, id, a.cfg.Name))
		return
	}
	f, err := os.Open(d.LogPath(id))
	if err != nil {
		writeErr(w, fmt.Errorf("%w: logs of task %q: %v", driver.ErrNotFound, id, err))
		return
	}
	defer f.Close()
	if tail >= 0 {
		if err := seekTail(f, tail); err != nil {
			writeErr(w, err)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		if !follow {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-a.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	const chunk = 64 << 10
	lines := 0
	pos := size
	buf := make([]byte, chunk)
	for pos > 0 {
		step := int64(chunk)
		if pos < step {
			step = pos
		}
		pos -= step
		if _, err := f.ReadAt(buf[:step], pos); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for i := step - 1; i >= 0; i-- {
			if buf[i] == '\n' && pos+i != size-1 {
				lines++
				if lines == n {
					_, err := f.Seek(pos+i+1, io.SeekStart)
					return err
				}
			}
		}
	}
	if n == 0 {
		_, err := f.Seek(0, io.SeekEnd)
		return err
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// Run starts a new task.
func (a *Agent) Run(ctx context.Context, req api.RunRequest) (api.Task, error) {
	spec := req.Spec
	if err := validateSpec(&spec); err != nil {
		return api.Task{}, err
	}
	d, err := a.driverFor(req.Driver, &spec)
	if err != nil {
		return api.Task{}, err
	}
	if err := a.validPeer(spec.ID, req.CheckpointPeer); err != nil {
		return api.Task{}, err
	}
	if spec.Epoch == 0 {
		spec.Epoch = 1
	}
	a.mu.Lock()
	if old, ok := a.records[spec.ID]; ok {
		if old.Phase != api.PhaseMoved {
			a.mu.Unlock()
			return api.Task{}, fmt.Errorf("%w: task %q is %s on node %s (epoch %d)", driver.ErrExists, spec.ID, old.Phase, a.cfg.Name, old.Epoch)
		}
		if spec.Epoch <= old.Epoch {
			a.mu.Unlock()
			return api.Task{}, fmt.Errorf("%w: task %q: run with epoch %d, but it moved away at epoch %d", api.ErrStaleEpoch, spec.ID, spec.Epoch, old.Epoch)
		}
	}
	if err := a.fitsLocked(&spec); err != nil {
		a.mu.Unlock()
		return api.Task{}, err
	}
	if err := a.acquireLocked(spec.ID, "run"); err != nil {
		a.mu.Unlock()
		return api.Task{}, err
	}
	rec := &record{ID: spec.ID, Driver: d.Kind(), Epoch: spec.Epoch, Phase: api.PhaseRunning, Spec: spec, CheckpointPeer: req.CheckpointPeer}
	err = a.putLocked(rec)
	a.mu.Unlock()
	if err != nil {
		a.release(spec.ID)
		return api.Task{}, err
	}
	err = d.Start(ctx, spec)
	if err != nil {
		a.mu.Lock()
		delete(a.records, spec.ID)
		a.store.remove(spec.ID)
		a.mu.Unlock()
	}
	a.release(spec.ID)
	if err != nil {
		return api.Task{}, err
	}
	a.log.Info("task started", "task", spec.ID, "driver", d.Kind(), "epoch", spec.Epoch)
	return a.Inspect(ctx, spec.ID)
}

func (a *Agent) handleRun(w http.ResponseWriter, r *http.Request) {
	var req api.RunRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.resolveGuestImage(r.Context(), &req.Spec); err != nil { // guestimage.go
		writeErr(w, err)
		return
	}
	t, err := a.Run(r.Context(), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

// begin checks the epoch and marks the task busy with op.
func (a *Agent) begin(id string, epoch uint64, op string) (*record, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec, err := a.checkEpochLocked(id, epoch)
	if err != nil {
		return nil, err
	}
	if err := a.acquireLocked(id, op); err != nil {
		return nil, err
	}
	return rec, nil
}

// Stop ends a task (running or suspended) and forgets it.
func (a *Agent) Stop(ctx context.Context, id string, epoch uint64) error {
	rec, err := a.begin(id, epoch, "stop")
	if err != nil {
		return err
	}
	defer a.release(id)
	if occupies(rec.Phase) {
		if err := a.drivers[rec.Driver].Stop(ctx, id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			return err
		}
	}
	a.mu.Lock()
	delete(a.records, id)
	err = a.store.remove(id)
	a.mu.Unlock()
	if rec.CheckpointPeer != "" {
		a.dropAtPeer(rec.CheckpointPeer, id, epoch)
	}
	a.log.Info("task stopped", "task", id, "epoch", epoch)
	return err
}

func (a *Agent) handleStop(w http.ResponseWriter, r *http.Request) {
	var req api.EpochRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.Stop(r.Context(), r.PathValue("id"), req.Epoch); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// Suspend saves a running task to an image on this node's disk.
func (a *Agent) Suspend(ctx context.Context, id string, epoch uint64) (api.Task, error) {
	rec, err := a.begin(id, epoch, "suspend")
	if err != nil {
		return api.Task{}, err
	}
	defer a.release(id)
	if rec.Phase != api.PhaseRunning {
		return api.Task{}, fmt.Errorf("%w: task %q is %s, not running", driver.ErrInvalidSpec, id, rec.Phase)
	}
	img, err := a.suspendLocal(ctx, rec)
	if err != nil {
		return api.Task{}, err
	}
	a.mu.Lock()
	n := *rec
	n.Phase, n.Image = api.PhaseSuspended, &img
	err = a.putLocked(&n)
	a.mu.Unlock()
	if err != nil {
		return api.Task{}, err
	}
	a.log.Info("task suspended", "task", id, "bytes", img.Bytes, "took", img.Took)
	return a.Inspect(ctx, id)
}

// suspendLocal runs the driver's Suspend into a fresh image directory.
func (a *Agent) suspendLocal(ctx context.Context, rec *record) (driver.Image, error) {
	dir := a.store.imageDir(rec.ID)
	if err := os.RemoveAll(dir); err != nil {
		return driver.Image{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return driver.Image{}, err
	}
	img, err := a.drivers[rec.Driver].Suspend(ctx, rec.ID, dir)
	if err != nil {
		os.RemoveAll(dir)
		return driver.Image{}, err
	}
	if img.Dir == "" {
		img.Dir = dir
	}
	if img.Bytes == 0 {
		img.Bytes = dirSize(dir)
	}
	return img, nil
}

func (a *Agent) handleSuspend(w http.ResponseWriter, r *http.Request) {
	var req api.EpochRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	t, err := a.Suspend(r.Context(), r.PathValue("id"), req.Epoch)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// Resume runs a suspended task from its image: this node's, or a peer's
// (fetched over the authenticated channel, committing epoch+1 here); with
// req.Replica, from the replica of its periodic checkpoint kept here or by
// req.From, committing epoch+1 here.
func (a *Agent) Resume(ctx context.Context, id string, req api.ResumeRequest) (api.Task, error) {
	if req.Replica {
		return a.resumeFromReplica(ctx, id, req)
	}
	if req.From != "" && req.From != a.cfg.Advertise {
		return a.resumeFromPeer(ctx, id, req)
	}
	if err := a.validPeer(id, req.CheckpointPeer); err != nil {
		return api.Task{}, err
	}
	rec, err := a.begin(id, req.Epoch, "resume")
	if err != nil {
		return api.Task{}, err
	}
	defer a.release(id)
	if rec.Phase != api.PhaseSuspended || rec.Image == nil {
		return api.Task{}, fmt.Errorf("%w: task %q is %s, not suspended", driver.ErrInvalidSpec, id, rec.Phase)
	}
	a.mu.Lock()
	err = a.fitsLocked(&rec.Spec)
	a.mu.Unlock()
	if err != nil {
		return api.Task{}, err
	}
	if err := a.drivers[rec.Driver].Resume(ctx, rec.Spec, a.store.imageDir(id)); err != nil {
		return api.Task{}, err
	}
	a.mu.Lock()
	n := *rec
	n.Phase, n.Image, n.CheckpointPeer = api.PhaseRunning, nil, req.CheckpointPeer
	n.PeerName = "" // the agent granted the image, or its fetcher (recover), may release nothing now
	err = a.putLocked(&n)
	a.mu.Unlock()
	if err != nil {
		return api.Task{}, err
	}
	os.RemoveAll(a.store.imageDir(id))
	a.log.Info("task resumed", "task", id, "epoch", n.Epoch)
	return a.Inspect(ctx, id)
}

func (a *Agent) handleResume(w http.ResponseWriter, r *http.Request) {
	var req api.ResumeRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	role, caller, _ := pki.PeerRole(r.TLS)
	if err := a.mayAskResume(r.Context(), role, caller, req); err != nil {
		writeErr(w, err)
		return
	}
	t, err := a.Resume(r.Context(), r.PathValue("id"), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (a *Agent) handlePause(w http.ResponseWriter, r *http.Request) {
	var req api.EpochRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	id := r.PathValue("id")
	rec, err := a.begin(id, req.Epoch, "pause")
	if err != nil {
		writeErr(w, err)
		return
	}
	defer a.release(id)
	p, ok := a.drivers[rec.Driver].(driver.Pauser)
	if !ok || rec.Phase != api.PhaseRunning {
		writeErr(w, fmt.Errorf("%w: pause of %s task %q (%s)", driver.ErrUnsupported, rec.Driver, id, rec.Phase))
		return
	}
	if r.URL.Path[len(r.URL.Path)-len("unpause"):] == "unpause" {
		err = p.Unpause(r.Context(), id)
	} else {
		err = p.Pause(r.Context(), id)
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	t, err := a.Inspect(r.Context(), id)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// ndjson writes one JSON value per line and flushes.
type ndjson struct {
	w   *bufio.Writer
	fl  http.Flusher
	enc *json.Encoder
}

func newNDJSON(w http.ResponseWriter) *ndjson {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriter(w)
	fl, _ := w.(http.Flusher)
	return &ndjson{w: bw, fl: fl, enc: json.NewEncoder(bw)}
}

func (n *ndjson) send(v any) {
	n.enc.Encode(v)
	n.w.Flush()
	if n.fl != nil {
		n.fl.Flush()
	}
}
