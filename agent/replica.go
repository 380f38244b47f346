package agent

// Replicas of periodic checkpoints (issue 4, "time segmenting"): after each
// committed periodic checkpoint of a task whose record names a checkpoint
// peer, the agent running it (the holder) pushes the checkpoint to that
// peer, which keeps the latest one per task as a replica. Losing the holder
// then costs at most one checkpoint interval: a resume with Replica set
// starts the task from the replica at epoch+1.
//
// Holder side: the driver's hook hard-links the committed checkpoint into
// DATA/run/outbox/<id>-<epoch>-<seq>/checkpoint (so the driver may drop it
// at the next checkpoint) next to a replica.json, and wakes the task's
// pusher goroutine, which sends the newest snapshot with cas/transfer;
// snapshots taken while a push runs supersede each other, and a failed push
// is logged and not retried (the next checkpoint is). The task never waits.
//
// Peer side: DATA/replicas/<id>/<epoch>-<seq>/{replica.json,checkpoint/}
// arrives through the transfer's atomic directory swap, so a replica is
// either complete or absent; the newest valid one per task is kept, the
// others removed. Received chunks also go into the node's chunk store
// (chunks.go, pinned as the task's image), so the next push of the same
// task sends only the chunks that changed.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cas"
	"github.com/ferrycluster/ferry/cas/transfer"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/internal/linktree"
	"github.com/ferrycluster/ferry/pki"
)

const (
	replicaMetaFile = "replica.json"
	replicaDataDir  = "checkpoint"
)

// replicaMeta is a replica's replica.json: the public description plus
// what a resume needs to start the task.
type replicaMeta struct {
	api.Replica
	Driver string      `json:"driver"`
	Spec   driver.Spec `json:"spec"`
	// Pusher is the certificate name of the agent that pushed the replica,
	// set by the peer from the TLS connection (whatever the holder wrote):
	// only it pushes more of that epoch or drops the replica (ownedBy).
	Pusher string `json:"pusher,omitempty"`
}

// newer orders replicas of one task by (epoch, seq).
func (m replicaMeta) newer(o replicaMeta) bool {
	return m.Epoch > o.Epoch || m.Epoch == o.Epoch && m.Seq > o.Seq
}

func (m replicaMeta) dirName() string { return fmt.Sprintf("%d-%d", m.Epoch, m.Seq) }

// validate checks a replica description that came over the wire for id.
func (m replicaMeta) validate(id string) error {
	switch {
	case m.Task != id || m.Spec.ID != id:
		return fmt.Errorf("%w: replica of %q describes task %q (spec %q)", driver.ErrInvalidSpec, id, m.Task, m.Spec.ID)
	case m.Epoch == 0:
		return fmt.Errorf("%w: replica of %q: epoch is required", driver.ErrInvalidSpec, id)
	case m.Bytes < 0 || m.Bytes > maxImageBytes:
		return fmt.Errorf("%w: replica of %q: size %d bytes is outside 0..%d", driver.ErrInvalidSpec, id, m.Bytes, int64(maxImageBytes))
	case m.Holder == "":
		return fmt.Errorf("%w: replica of %q: holder is required", driver.ErrInvalidSpec, id)
	}
	return validateSpec(&m.Spec)
}

// parseReplicaHeader decodes and checks the api.ReplicaHeader of a push
// of task id.
func parseReplicaHeader(id, h string) (replicaMeta, error) {
	var m replicaMeta
	b, err := base64.StdEncoding.DecodeString(h)
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		err = dec.Decode(&m)
	}
	if err != nil {
		return replicaMeta{}, fmt.Errorf("%w: replica push of %q: header %s: %v", driver.ErrInvalidSpec, id, api.ReplicaHeader, err)
	}
	if err := m.validate(id); err != nil {
		return replicaMeta{}, err
	}
	return m, nil
}

// replicaEntry is a replica kept on this node.
type replicaEntry struct {
	meta replicaMeta
	dir  string // DATA/replicas/<id>/<epoch>-<seq>
}

// pushState is a task's pusher: the newest snapshot waiting, whether a
// goroutine is sending, and how many snapshots are being written.
type pushState struct {
	pending   *snapshot
	running   bool
	preparing int
}

// snapshot is a checkpoint linked into the outbox, waiting to be pushed.
type snapshot struct {
	dir  string
	peer string
	meta replicaMeta
}

func (a *Agent) replicasDir() string { return filepath.Join(a.cfg.DataDir, "replicas") }
func (a *Agent) outboxDir() string   { return filepath.Join(a.cfg.DataDir, "run", "outbox") }

// openReplicas loads the replicas this node keeps, drops leftovers of
// interrupted transfers and pushes, and installs the checkpoint hook in the
// drivers that have one.
func (a *Agent) openReplicas() error {
	os.RemoveAll(a.outboxDir())
	for _, d := range []string{a.replicasDir(), a.outboxDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(a.replicasDir())
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if r, ok := a.loadReplica(e.Name()); ok {
			a.replicas[r.meta.Task] = r
		}
	}
	for _, d := range a.cfg.Drivers {
		if h, ok := d.(interface {
			SetOnCheckpoint(func(ctx context.Context, id string, img driver.Image))
		}); ok {
			h.SetOnCheckpoint(a.onCheckpoint)
		}
	}
	return nil
}

// loadReplica keeps the newest complete replica of one task directory and
// removes the rest.
func (a *Agent) loadReplica(id string) (*replicaEntry, bool) {
	base := filepath.Join(a.replicasDir(), id)
	ents, _ := os.ReadDir(base)
	var best *replicaEntry
	for _, e := range ents {
		dir := filepath.Join(base, e.Name())
		m, err := readReplicaMeta(dir)
		if err != nil || m.validate(id) != nil || m.dirName() != e.Name() {
			if err == nil {
				err = errors.New("misnamed or invalid")
			}
			a.log.Warn("dropping unusable replica", "dir", dir, "err", err)
			os.RemoveAll(dir)
			continue
		}
		if best == nil || m.newer(best.meta) {
			if best != nil {
				os.RemoveAll(best.dir)
			}
			best = &replicaEntry{meta: m, dir: dir}
		} else {
			os.RemoveAll(dir)
		}
	}
	if best == nil {
		os.RemoveAll(base)
		return nil, false
	}
	return best, true
}

// writeReplicaMeta replaces dir/replica.json with m, durably.
func writeReplicaMeta(dir string, m replicaMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return writeFileSync(filepath.Join(dir, replicaMetaFile), b)
}

func readReplicaMeta(dir string) (replicaMeta, error) {
	var m replicaMeta
	b, err := os.ReadFile(filepath.Join(dir, replicaMetaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %s: %v", driver.ErrInvalidSpec, filepath.Join(dir, replicaMetaFile), err)
	}
	if _, err := os.Stat(filepath.Join(dir, replicaDataDir)); err != nil {
		return m, err
	}
	return m, nil
}

// validPeer checks a checkpoint peer address: host:port, not this agent.
func (a *Agent) validPeer(id, addr string) error {
	if addr == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("%w: task %q: checkpoint_peer %q: want host:port", driver.ErrInvalidSpec, id, addr)
	}
	if addr == a.cfg.Advertise {
		return fmt.Errorf("%w: task %q: checkpoint_peer %s is this node (%s); pick another", driver.ErrInvalidSpec, id, addr, a.cfg.Name)
	}
	return nil
}

// onCheckpoint is the drivers' hook, called after each committed periodic
// checkpoint. It links the checkpoint into the outbox and hands it to the
// task's pusher; it never waits for the network.
func (a *Agent) onCheckpoint(_ context.Context, id string, img driver.Image) {
	a.mu.Lock()
	rec, ok := a.records[id]
	if !ok || a.closed || rec.Phase != api.PhaseRunning || rec.CheckpointPeer == "" {
		a.mu.Unlock()
		return
	}
	if op, busy := a.busy[id]; busy {
		// A stop, suspend or move holds the record: leave it alone (the
		// task is about to change hands or end).
		a.mu.Unlock()
		a.log.Info("checkpoint replica skipped: task busy", "task", id, "op", op)
		return
	}
	n := *rec
	n.CheckpointSeq++
	if err := a.putLocked(&n); err != nil {
		a.mu.Unlock()
		a.log.Warn("checkpoint replica: record", "task", id, "err", err)
		return
	}
	m := replicaMeta{
		Replica: api.Replica{Task: id, Epoch: n.Epoch, Seq: n.CheckpointSeq, Bytes: img.Bytes, Taken: time.Now().UTC(), Holder: a.cfg.Advertise},
		Driver:  n.Driver, Spec: n.Spec,
	}
	// The push counts from here (a stop's dropAtPeer waits for it), though
	// it is queued only once the snapshot is written.
	ps := a.pushes[id]
	if ps == nil {
		ps = &pushState{}
		a.pushes[id] = ps
	}
	ps.preparing++
	hook := a.afterSnapshot
	a.mu.Unlock()
	s := &snapshot{dir: filepath.Join(a.outboxDir(), fmt.Sprintf("%s-%s", id, m.dirName())), peer: n.CheckpointPeer, meta: m}
	err := writeSnapshot(s, img.Dir)
	if hook != nil {
		hook(id)
	}
	var discard string
	a.mu.Lock()
	ps.preparing--
	cur, ok := a.records[id]
	op, busy := a.busy[id]
	switch {
	case err != nil:
		a.log.Warn("checkpoint replica: snapshot", "task", id, "err", err)
		discard = s.dir
	case a.closed:
		discard = s.dir
	case !ok || cur.Phase != api.PhaseRunning || cur.Epoch != m.Epoch || busy:
		a.log.Info("checkpoint replica not pushed: the task stopped or changed meanwhile", "task", id, "seq", m.Seq, "op", op)
		discard = s.dir
	default:
		if ps.pending != nil {
			a.log.Info("checkpoint replica superseded before it was sent", "task", id, "seq", ps.pending.meta.Seq, "by", m.Seq)
			discard = ps.pending.dir
		}
		ps.pending = s
		if !ps.running {
			ps.running = true
			a.wg.Add(1)
			go a.pushLoop(id)
		}
	}
	a.forgetPushLocked(id, ps)
	a.mu.Unlock()
	if discard != "" {
		os.RemoveAll(discard)
	}
}

// forgetPushLocked removes the task's pusher when nothing is being
// prepared, waiting or sent.
func (a *Agent) forgetPushLocked(id string, ps *pushState) {
	if !ps.running && ps.pending == nil && ps.preparing == 0 && a.pushes[id] == ps {
		delete(a.pushes, id)
	}
}

// writeSnapshot links the checkpoint at src into s.dir/checkpoint and
// writes s.dir/replica.json.
func writeSnapshot(s *snapshot, src string) error {
	if err := linktree.Tree(src, filepath.Join(s.dir, replicaDataDir)); err != nil {
		return err
	}
	b, err := json.Marshal(s.meta)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dir, replicaMetaFile), b, 0o600)
}

// pushLoop sends a task's newest snapshot until none is waiting.
func (a *Agent) pushLoop(id string) {
	defer a.wg.Done()
	for {
		a.mu.Lock()
		ps := a.pushes[id]
		s := ps.pending
		ps.pending = nil
		if s == nil {
			ps.running = false
			a.forgetPushLocked(id, ps)
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		start := time.Now()
		res, err := a.pushReplica(a.ctx, s)
		os.RemoveAll(s.dir)
		if err != nil {
			a.log.Warn("checkpoint replica not copied; the next checkpoint will be", "task", id, "peer", s.peer, "epoch", s.meta.Epoch, "seq", s.meta.Seq, "err", err)
			continue
		}
		a.log.Info("checkpoint replica copied", "task", id, "peer", s.peer, "epoch", s.meta.Epoch, "seq", s.meta.Seq,
			"bytes", s.meta.Bytes, "chunks_sent", res.ChunksSent, "wire_bytes", res.WireBytes, "took", time.Since(start))
	}
}

// maxPushTimeout caps pushTimeout whatever size a push claims.
const maxPushTimeout = 2 * time.Hour

// pushTimeout bounds one replica transfer of size bytes on either side, so
// a peer or holder that hangs never holds a task's pushes for good: five
// minutes plus a second per 10 MB, at most maxPushTimeout.
func pushTimeout(size int64) time.Duration {
	size = min(max(size, 0), maxImageBytes)
	return min(5*time.Minute+time.Duration(size/10e6)*time.Second, maxPushTimeout)
}

// pushReplica sends one snapshot to its peer.
func (a *Agent) pushReplica(ctx context.Context, s *snapshot) (transfer.SendResult, error) {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout(s.meta.Bytes))
	defer cancel()
	meta, err := json.Marshal(s.meta)
	if err != nil {
		return transfer.SendResult{}, err
	}
	conn, err := a.peer(s.peer).PushReplica(ctx, s.meta.Task, meta)
	if err != nil {
		return transfer.SendResult{}, err
	}
	defer conn.Close()
	a.track(conn)
	defer a.untrack(conn)
	return transfer.SendDir(ctx, conn, s.dir,
		transfer.SendOptions{ID: "replica-" + pinName(s.meta.Task) + "-" + s.meta.dirName(), Name: s.meta.dirName(), Logger: a.log})
}

// pinName names a task's pin in the chunk store (task ids may start with
// '-', which pin names may not).
func pinName(id string) string {
	h := sha256.Sum256([]byte(id))
	return "t" + hex.EncodeToString(h[:12])
}

// Replicas lists the replicas this node keeps, by task.
func (a *Agent) Replicas() []api.Replica {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]api.Replica, 0, len(a.replicas))
	for _, r := range a.replicas {
		out = append(out, r.meta.Replica)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Task < out[j].Task })
	return out
}

func (a *Agent) handleReplicas(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.Replicas())
}

// handleReplicaPush receives a replica from its holder: refused before any
// byte moves when it is not newer than the one kept, when the task runs
// here at its epoch or later, or when the disk cannot hold it.
func (a *Agent) handleReplicaPush(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	m, slot, err := a.checkPush(r, id)
	if err != nil {
		writeErr(w, err)
		return
	}
	defer a.leaveReceive(id, slot, true)
	conn, err := a.upgradeConn(w, r, api.ImageProtocol, nil)
	if err != nil {
		return
	}
	defer conn.Close()
	defer a.untrack(conn)
	base := filepath.Join(a.replicasDir(), id)
	if err := os.MkdirAll(base, 0o700); err != nil {
		a.log.Warn("replica receive", "task", id, "err", err)
		return
	}
	rc := a.keepReceivedCheckpoint(&transfer.Receiver{StagingDir: a.stagingDir(), Logger: a.log,
		Dest: func(_ transfer.Header, x *cas.Index) (string, error) {
			if err := checkPacked("replica", id, m.Bytes, x); err != nil {
				return "", err
			}
			return filepath.Join(base, m.dirName()), nil
		}}, id)
	if err := os.MkdirAll(rc.StagingDir, 0o700); err != nil {
		a.log.Warn("replica receive", "task", id, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, pushTimeout(m.Bytes))
	defer cancel()
	res, err := rc.Serve(ctx, conn)
	if err != nil {
		a.log.Warn("replica receive", "task", id, "holder", m.Holder, "err", err)
		return
	}
	a.commitReplica(id, m, res)
}

// receiveSlot serializes the pushes of one task: whoever holds ch
// receives; users counts the pushes holding or waiting for it, so the map
// entry goes when the last one leaves.
type receiveSlot struct {
	ch    chan struct{}
	users int
}

// enterReceive takes the receive slot of task id (a.receiving[id]),
// waiting for the push that holds it, or fails when ctx ends first.
func (a *Agent) enterReceive(ctx context.Context, id string) (*receiveSlot, error) {
	a.mu.Lock()
	slot := a.receiving[id]
	if slot == nil {
		slot = &receiveSlot{ch: make(chan struct{}, 1)}
		a.receiving[id] = slot
	}
	slot.users++
	a.mu.Unlock()
	select {
	case slot.ch <- struct{}{}:
		return slot, nil
	case <-ctx.Done():
		a.leaveReceive(id, slot, false)
		return nil, fmt.Errorf("%w: a replica of %q is being received", driver.ErrBusy, id)
	}
}

// leaveReceive gives back slot (held: taken by enterReceive) and forgets
// it when no push holds or waits for it.
func (a *Agent) leaveReceive(id string, slot *receiveSlot, held bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.leaveReceiveLocked(id, slot, held)
}

func (a *Agent) leaveReceiveLocked(id string, slot *receiveSlot, held bool) {
	if held {
		<-slot.ch
	}
	slot.users--
	if slot.users == 0 && a.receiving[id] == slot {
		delete(a.receiving, id)
	}
}

// checkPush vets a replica push and takes the task's receive slot, which
// the caller gives back with leaveReceive.
func (a *Agent) checkPush(r *http.Request, id string) (replicaMeta, *receiveSlot, error) {
	var m replicaMeta
	if err := api.ValidID(id); err != nil {
		return m, nil, err
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.ImageProtocol) {
		return m, nil, fmt.Errorf("%w: replica push needs Upgrade: %s", driver.ErrInvalidSpec, api.ImageProtocol)
	}
	m, err := parseReplicaHeader(id, r.Header.Get(api.ReplicaHeader))
	if err != nil {
		return m, nil, err
	}
	_, m.Pusher, err = pki.PeerRole(r.TLS)
	if err != nil {
		return m, nil, fmt.Errorf("%w: replica push of %q: %v", api.ErrForbidden, id, err)
	}
	// The replica's files, and their chunks in the store unless they are
	// linked there (receiveCopies).
	if err := a.checkRoom("replica", id, m.Bytes, a.receiveCopies()); err != nil {
		return m, nil, err
	}
	// One push of a task at a time: a newer one waits for the previous
	// one's commit, then is checked against it.
	slot, err := a.enterReceive(r.Context(), id)
	if err != nil {
		return m, nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// A replica from an older epoch than this node has seen for the task
	// (kept replica, or its record here, also a moved one) is not the
	// task's latest state.
	cur, kept := a.replicas[id]
	rec, known := a.records[id]
	switch {
	case kept && m.Epoch <= cur.meta.Epoch && !cur.meta.ownedBy(m.Pusher):
		err = fmt.Errorf("%w: replica of %q at epoch %d was pushed by %s; %s may only push a later epoch (the task moved to it)", api.ErrForbidden, id, cur.meta.Epoch, cur.meta.Pusher, m.Pusher)
	case kept && !m.newer(cur.meta):
		err = fmt.Errorf("%w: replica of %q at epoch %d seq %d: node %s keeps epoch %d seq %d", api.ErrStaleEpoch, id, m.Epoch, m.Seq, a.cfg.Name, cur.meta.Epoch, cur.meta.Seq)
	case known && occupies(rec.Phase) && rec.Epoch >= m.Epoch:
		err = fmt.Errorf("%w: replica of %q at epoch %d: the task runs on %s at epoch %d", api.ErrStaleEpoch, id, m.Epoch, a.cfg.Name, rec.Epoch)
	case known && rec.Epoch > m.Epoch:
		err = fmt.Errorf("%w: replica of %q at epoch %d: node %s saw the task at epoch %d (%s)", api.ErrStaleEpoch, id, m.Epoch, a.cfg.Name, rec.Epoch, rec.Phase)
	}
	if err != nil {
		a.leaveReceiveLocked(id, slot, true)
		return m, nil, err
	}
	return m, slot, nil
}

// commitReplica installs a received replica (already in place on disk) if
// it is still the newest, and pins its chunks for the next push.
func (a *Agent) commitReplica(id string, m replicaMeta, res transfer.ReceiveResult) {
	got, err := readReplicaMeta(res.Path)
	if err == nil {
		err = got.validate(id)
	}
	if err == nil && got.dirName() != m.dirName() {
		err = fmt.Errorf("%w: replica.json names %s, the push %s", driver.ErrInvalidSpec, got.dirName(), m.dirName())
	}
	if err == nil {
		// Who pushed is what the TLS connection said, not the file.
		got.Pusher = m.Pusher
		err = writeReplicaMeta(res.Path, got)
	}
	if err != nil {
		a.log.Warn("replica received with a bad description; dropped", "task", id, "err", err)
		os.RemoveAll(res.Path)
		return
	}
	a.mu.Lock()
	old := a.replicas[id]
	if old != nil && !got.newer(old.meta) {
		a.mu.Unlock()
		os.RemoveAll(res.Path)
		return
	}
	a.replicas[id] = &replicaEntry{meta: got, dir: res.Path}
	a.mu.Unlock()
	if old != nil {
		os.RemoveAll(old.dir)
	}
	a.log.Info("replica kept", "task", id, "holder", got.Holder, "epoch", got.Epoch, "seq", got.Seq, "bytes", got.Bytes,
		"received_chunks", res.Received, "from_store", res.FromStore, "received_bytes", res.ReceivedBytes)
}

// dropReplica forgets the replica of id (the task now runs here).
func (a *Agent) dropReplica(id string) {
	a.mu.Lock()
	r := a.replicas[id]
	delete(a.replicas, id)
	a.mu.Unlock()
	if r != nil {
		os.RemoveAll(filepath.Join(a.replicasDir(), id))
	}
}

// DropReplica forgets the replica of id kept here if its epoch is not
// ahead of epoch (the task stopped at that epoch; a newer replica is the
// live task's and stays), for a caller of role and certificate name: the
// controller, or the agent that pushed the replica.
func (a *Agent) DropReplica(id string, epoch uint64, role pki.Role, caller string) error {
	if err := api.ValidID(id); err != nil {
		return err
	}
	a.mu.Lock()
	r, ok := a.replicas[id]
	var err error
	switch {
	case !ok:
		err = fmt.Errorf("%w: no replica of task %q on node %s", driver.ErrNotFound, id, a.cfg.Name)
	case role != pki.RoleServer && !r.meta.ownedBy(caller):
		err = fmt.Errorf("%w: replica of %q was pushed by %s; only it or the controller may drop it, not %s", api.ErrForbidden, id, r.meta.Pusher, caller)
	case r.meta.Epoch > epoch:
		err = fmt.Errorf("%w: replica of %q has epoch %d, ahead of %d", api.ErrStaleEpoch, id, r.meta.Epoch, epoch)
	default:
		delete(a.replicas, id)
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	// Only this replica's directory: a push may be landing next to it.
	os.RemoveAll(r.dir)
	a.log.Info("replica dropped", "task", id, "epoch", r.meta.Epoch, "seq", r.meta.Seq, "by", caller)
	return nil
}

// ownedBy reports whether the agent named caller pushed the replica (a
// replica kept from before pushers were recorded has no owner).
func (m replicaMeta) ownedBy(caller string) bool {
	return m.Pusher == "" || m.Pusher == caller
}

func (a *Agent) handleReplicaDrop(w http.ResponseWriter, r *http.Request) {
	var req api.EpochRequest
	if err := decode(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	role, caller, _ := pki.PeerRole(r.TLS)
	if err := a.DropReplica(r.PathValue("id"), req.Epoch, role, caller); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// dropAtPeer asks the checkpoint peer of a task that stopped here to drop
// its replica, once the task's last push is over, including one whose
// snapshot was being written when the task stopped (in the background; a
// failure is logged).
func (a *Agent) dropAtPeer(peer, id string, epoch uint64) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.wg.Add(1)
	a.peerDrops++
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		defer func() {
			a.mu.Lock()
			a.peerDrops--
			a.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(a.ctx, cleanupTimeout)
		defer cancel()
		for {
			a.mu.Lock()
			_, pushing := a.pushes[id]
			a.mu.Unlock()
			if !pushing {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err := a.peer(peer).DropReplica(ctx, id, epoch); err != nil && !errors.Is(err, driver.ErrNotFound) {
			a.log.Warn("drop the replica of a stopped task at its checkpoint peer", "task", id, "peer", peer, "err", err)
		}
	}()
}

// linkReplica links the replica of id, if its epoch is epoch, into dir
// (which must not exist), so a newer push may replace the kept one
// meanwhile.
func (a *Agent) linkReplica(id string, epoch uint64, dir string) (replicaMeta, error) {
	a.mu.Lock()
	r, ok := a.replicas[id]
	a.mu.Unlock()
	if !ok {
		return replicaMeta{}, fmt.Errorf("%w: no replica of task %q on node %s", driver.ErrNotFound, id, a.cfg.Name)
	}
	if err := replicaEpochIs(id, a.cfg.Name, r.meta.Epoch, epoch); err != nil {
		return replicaMeta{}, err
	}
	if err := linktree.Tree(filepath.Join(r.dir, replicaDataDir), dir); err != nil {
		os.RemoveAll(dir)
		return replicaMeta{}, fmt.Errorf("replica of %q: %w", id, err)
	}
	return r.meta, nil
}

// handleReplicaFetch sends a replica to an agent resuming the task from it.
func (a *Agent) handleReplicaFetch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := api.ValidID(id); err != nil {
		writeErr(w, err)
		return
	}
	epoch, err := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
	if err != nil || !strings.EqualFold(r.Header.Get("Upgrade"), api.ImageProtocol) {
		writeErr(w, fmt.Errorf("%w: replica fetch of %q needs an epoch and Upgrade: %s", driver.ErrInvalidSpec, id, api.ImageProtocol))
		return
	}
	tmp, err := os.MkdirTemp(filepath.Join(a.cfg.DataDir, "run"), "replica-send-")
	if err != nil {
		writeErr(w, err)
		return
	}
	defer os.RemoveAll(tmp)
	m, err := a.linkReplica(id, epoch, filepath.Join(tmp, replicaDataDir))
	if err != nil {
		writeErr(w, err)
		return
	}
	meta, err := json.Marshal(m)
	if err != nil {
		writeErr(w, err)
		return
	}
	_, caller, _ := pki.PeerRole(r.TLS)
	conn, err := a.upgradeConn(w, r, api.ImageProtocol, http.Header{api.ReplicaHeader: {base64.StdEncoding.EncodeToString(meta)}})
	if err != nil {
		return
	}
	defer conn.Close()
	defer a.untrack(conn)
	// Bounded like a push: a fetcher that stops reading does not hold the
	// send (and its temporary copy) until the agent closes.
	ctx, cancel := context.WithTimeout(a.ctx, pushTimeout(m.Bytes))
	defer cancel()
	res, err := transfer.SendDir(ctx, conn, filepath.Join(tmp, replicaDataDir),
		transfer.SendOptions{ID: "restore-" + pinName(id) + "-" + m.dirName(), Name: "image", Logger: a.log})
	if err != nil {
		a.log.Warn("send replica", "task", id, "to", caller, "err", err)
		return
	}
	a.log.Info("replica sent for a restart", "task", id, "to", caller, "epoch", m.Epoch, "seq", m.Seq, "wire_bytes", res.WireBytes)
}

// resumeFromReplica starts a task from a replica of its periodic checkpoint,
// kept here (req.From empty or this agent) or by req.From, at req.Epoch+1.
func (a *Agent) resumeFromReplica(ctx context.Context, id string, req api.ResumeRequest) (api.Task, error) {
	local := req.From == "" || req.From == a.cfg.Advertise
	var fetch func(ctx context.Context, dir string) (*record, error)
	if local {
		fetch = func(_ context.Context, dir string) (*record, error) {
			m, err := a.linkReplica(id, req.Epoch, dir)
			return m.record(), err
		}
	} else {
		fetch = func(ctx context.Context, dir string) (*record, error) {
			conn, b, err := a.peer(req.From).FetchReplicaStream(ctx, id, req.Epoch)
			if err != nil {
				return nil, err
			}
			defer conn.Close()
			var m replicaMeta
			if err := json.Unmarshal(b, &m); err != nil || m.validate(id) != nil {
				return nil, fmt.Errorf("%w: replica description of %q from %s: %s", driver.ErrInvalidSpec, id, req.From, b)
			}
			if err := a.receiveDir(ctx, conn, req.From, "replica", id, m.Bytes, true, dir); err != nil {
				return nil, err
			}
			return m.record(), nil
		}
	}
	src := imageSource{
		from:  req.From,
		what:  "replica",
		fetch: fetch,
	}
	if local {
		src.from = a.cfg.Name
		src.committed = func(uint64) { a.dropReplica(id) }
	}
	src.check = func(prec *record) error { return replicaEpochIs(id, src.from, prec.Epoch, req.Epoch) }
	return a.resumeFetched(ctx, id, req, src)
}

// replicaEpochIs refuses a restart at epoch from a replica of id (kept on
// node) taken at another epoch: an older one is not the task's latest
// state (it ran on, or moved, after it), a newer one is a later
// incarnation's.
func replicaEpochIs(id, node string, have, epoch uint64) error {
	if have != epoch {
		return fmt.Errorf("%w: replica of %q on %s is from epoch %d, the restart asks for epoch %d: only a replica of that epoch is the task's latest state", api.ErrStaleEpoch, id, node, have, epoch)
	}
	return nil
}

// record is what a resume from the replica starts.
func (m replicaMeta) record() *record {
	return &record{ID: m.Task, Driver: m.Driver, Epoch: m.Epoch, Spec: m.Spec}
}
