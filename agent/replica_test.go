package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/driver/process"
	"github.com/ferrycluster/ferry/pki"
)

// processPair starts two agents with process drivers and returns a context
// ending after d (or with the test).
func processPair(t *testing.T, d time.Duration) (context.Context, *node, *node) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	ca := newTestCA(t)
	return ctx, startNode(t, ca, "node-a", processDrivers(t), nil), startNode(t, ca, "node-b", processDrivers(t), nil)
}

// Periodic checkpoints go to the checkpoint peer as replicas, the peer
// keeps only the newest (also across its own restart), refuses older
// pushes and bad requests, and a resume from its own replica (From empty)
// continues the task at epoch+1 after the holder is lost.
func TestReplicaPushAndLocalRestart(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 3*time.Minute)

	spec := counterSpec("seg", nil)
	spec.Process.CheckpointInterval = 400 * time.Millisecond
	_, err := a.c.Run(ctx, api.RunRequest{Spec: spec, CheckpointPeer: a.addr})
	wantKind(t, "run with itself as checkpoint peer", err, driver.ErrInvalidSpec)
	_, err = a.c.Run(ctx, api.RunRequest{Spec: spec, CheckpointPeer: "node-b"})
	wantKind(t, "run with a checkpoint peer without a port", err, driver.ErrInvalidSpec)
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: spec, CheckpointPeer: b.addr}); err != nil {
		t.Fatal(err)
	}
	var rep api.Replica
	for rep.Seq < 3 {
		rs, err := b.c.Replicas(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 1 {
			rep = rs[0]
		}
		if len(rs) > 1 {
			t.Fatalf("replicas %+v, want one", rs)
		}
		if ctx.Err() != nil {
			t.Fatalf("no third replica at node-b: %+v", rs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep.Task != "seg" || rep.Epoch != 1 || rep.Holder != a.addr {
		t.Fatalf("replica %+v", rep)
	}
	// Only the newest stays on disk.
	if ents, _ := os.ReadDir(filepath.Join(b.dataDir, "replicas", "seg")); len(ents) != 1 {
		t.Fatalf("node-b keeps %d replica directories of seg, want 1", len(ents))
	}
	// An older push is refused before any byte moves.
	old := replicaMeta{Replica: api.Replica{Task: "seg", Epoch: 1, Seq: 1, Holder: a.addr}, Driver: "process", Spec: spec}
	_, err = a.agent.pushReplica(ctx, &snapshot{dir: t.TempDir(), peer: b.addr, meta: old})
	wantKind(t, "push of an older replica", err, api.ErrStaleEpoch)

	// The next push sends only what changed: the counter file and tar
	// headers, not the whole checkpoint again.
	other := counterSpec("blob", nil)
	cur := replicaMeta{Replica: api.Replica{Task: "blob", Epoch: 7, Seq: 1, Holder: a.addr, Bytes: 4 << 20}, Driver: "process", Spec: other}
	dir := t.TempDir()
	big := make([]byte, 4<<20)
	rand.New(rand.NewSource(1)).Read(big)
	os.MkdirAll(filepath.Join(dir, replicaDataDir), 0o700)
	os.WriteFile(filepath.Join(dir, replicaDataDir, "counter"), []byte("1"), 0o600)
	os.WriteFile(filepath.Join(dir, replicaDataDir, "blob"), big, 0o600)
	writeMeta := func() {
		t.Helper()
		b, _ := json.Marshal(cur)
		if err := os.WriteFile(filepath.Join(dir, replicaMetaFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeMeta()
	first, err := a.agent.pushReplica(ctx, &snapshot{dir: dir, peer: b.addr, meta: cur})
	if err != nil {
		t.Fatal(err)
	}
	cur.Seq = 2
	writeMeta()
	os.WriteFile(filepath.Join(dir, replicaDataDir, "counter"), []byte("2"), 0o600)
	second, err := a.agent.pushReplica(ctx, &snapshot{dir: dir, peer: b.addr, meta: cur})
	if err != nil {
		t.Fatal(err)
	}
	if first.BytesSent < 4<<20 || second.BytesSent*4 > first.BytesSent {
		t.Fatalf("second push sent %d bytes, first %d: want only the changed chunks", second.BytesSent, first.BytesSent)
	}
	// The holder is lost; node-b (restarted: its replicas are on disk)
	// restarts the task from its own replica.
	a.shutdown(true)
	b.restart()
	_, err = b.c.Resume(ctx, "seg", api.ResumeRequest{Replica: true})
	wantKind(t, "resume from a replica without an epoch", err, driver.ErrInvalidSpec)
	_, err = b.c.Resume(ctx, "nope", api.ResumeRequest{Epoch: 1, Replica: true})
	wantKind(t, "resume from a replica node-b does not keep", err, driver.ErrNotFound)
	res, err := b.c.Resume(ctx, "seg", api.ResumeRequest{Epoch: 1, Replica: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epoch != 2 || res.Phase != api.PhaseRunning || res.CheckpointPeer != "" {
		t.Fatalf("restart from the replica: %+v", res)
	}
	cs := b.waitCounter(ctx, "seg", 0)
	if cs[0] <= 1 {
		t.Fatalf("restarted counter starts at %d: not from the replica", cs[0])
	}
	if rs, _ := b.c.Replicas(ctx); len(rs) != 1 || rs[0].Task != "blob" {
		t.Fatalf("node-b lists replicas %+v, want only blob's (not of the task it runs)", rs)
	}
}

// Stopping a task drops its replica at the checkpoint peer; a drop of a
// replica newer than the caller's epoch is refused.
func TestReplicaDroppedWhenTaskStops(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 2*time.Minute)
	spec := counterSpec("gone", nil)
	spec.Process.CheckpointInterval = 300 * time.Millisecond
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: spec, CheckpointPeer: b.addr}); err != nil {
		t.Fatal(err)
	}
	replicas := func() []api.Replica {
		rs, err := b.c.Replicas(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	for len(replicas()) == 0 {
		if ctx.Err() != nil {
			t.Fatal("no replica at node-b")
		}
		time.Sleep(50 * time.Millisecond)
	}
	err := b.c.DropReplica(ctx, "gone", 0)
	wantKind(t, "drop of a newer replica", err, api.ErrStaleEpoch)
	if err := a.c.Stop(ctx, "gone", 1); err != nil {
		t.Fatal(err)
	}
	for len(replicas()) != 0 {
		if ctx.Err() != nil {
			t.Fatalf("node-b still keeps %+v after the task stopped", replicas())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FuzzParseReplicaHeader feeds arbitrary replica descriptions (what a
// holder sends with a push) to the parser: an error of kind invalid, or a
// description of the task pushed, never a panic.
func FuzzParseReplicaHeader(f *testing.F) {
	good, _ := json.Marshal(replicaMeta{Replica: api.Replica{Task: "t", Epoch: 2, Seq: 3, Bytes: 10, Holder: "127.0.0.1:1"}, Driver: "process", Spec: counterSpec("t", nil)})
	f.Add(base64.StdEncoding.EncodeToString(good))
	f.Add(base64.StdEncoding.EncodeToString(good[:len(good)/2]))
	f.Add(base64.StdEncoding.EncodeToString([]byte(`{"task":"u","epoch":1,"holder":"h:1","spec":{"id":"u"}}`)))
	f.Add("not base64")
	for _, n := range []int64{1 << 40, 1<<40 + 1, 1 << 50, 1 << 62, -1} {
		huge, _ := json.Marshal(replicaMeta{Replica: api.Replica{Task: "t", Epoch: 2, Seq: 3, Bytes: n, Holder: "127.0.0.1:1"}, Driver: "process", Spec: counterSpec("t", nil)})
		f.Add(base64.StdEncoding.EncodeToString(huge))
	}
	f.Fuzz(func(t *testing.T, h string) {
		m, err := parseReplicaHeader("t", h)
		if err != nil {
			if !errors.Is(err, driver.ErrInvalidSpec) {
				t.Fatalf("error of the wrong kind: %v", err)
			}
			return
		}
		if m.Task != "t" || m.Spec.ID != "t" || m.Epoch == 0 || m.Bytes < 0 || m.Bytes > maxImageBytes || m.Holder == "" {
			t.Fatalf("accepted %+v", m)
		}
		if d := pushTimeout(m.Bytes); d <= 0 || d > maxPushTimeout {
			t.Fatalf("push timeout %v for %d bytes", d, m.Bytes)
		}
		if need := 3*m.Bytes + roomReserve(m.Bytes); need < m.Bytes {
			t.Fatalf("room for %d bytes overflows to %d", m.Bytes, need)
		}
	})
}

// waitReplica waits until n keeps the replica of id at (epoch, seq): the
// peer commits a replica just after the holder's transfer ends.
func waitReplica(ctx context.Context, t *testing.T, n *node, id string, epoch, seq uint64) {
	t.Helper()
	for {
		rs, err := n.c.Replicas(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Task == id && r.Epoch == epoch && r.Seq == seq {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("%s never kept the replica of %s at epoch %d seq %d: %+v", n.name, id, epoch, seq, rs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testSnapshot writes a snapshot of m (a replica.json and a checkpoint
// holding counter) for a push to peer, as onCheckpoint does.
func testSnapshot(t *testing.T, peer string, m replicaMeta, counter string) *snapshot {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, replicaDataDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, replicaDataDir, "counter"), []byte(counter), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, replicaMetaFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return &snapshot{dir: dir, peer: peer, meta: m}
}

// Many pushes at once (three per task, racing each other): each task
// ends with one replica, a push older than the kept one is refused as
// stale, and no receive slot stays behind. Run
// with -race: the slots' map is only touched under the agent's lock.
func TestReplicaConcurrentPushes(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 2*time.Minute)
	const tasks, pushes = 16, 3
	errs := make(chan error, pushes*tasks)
	var wg sync.WaitGroup
	for i := range tasks {
		id := fmt.Sprintf("con%d", i)
		for seq := uint64(1); seq <= pushes; seq++ {
			m := replicaMeta{Replica: api.Replica{Task: id, Epoch: 1, Seq: seq, Holder: a.addr, Bytes: 1}, Driver: "process", Spec: counterSpec(id, nil)}
			s := testSnapshot(t, b.addr, m, strconv.FormatUint(seq, 10))
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := a.agent.pushReplica(ctx, s); err != nil && !errors.Is(err, api.ErrStaleEpoch) {
					errs <- fmt.Errorf("push %s seq %d: %w", id, seq, err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The peer commits a replica (and gives back its slot) just after the
	// holder's transfer ends.
	for {
		rs, err := b.c.Replicas(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b.agent.mu.Lock()
		left := len(b.agent.receiving)
		b.agent.mu.Unlock()
		if len(rs) == tasks && left == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("node-b keeps %d replicas (want %d) and %d receive slots (want none) after every push ended", len(rs), tasks, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A push's size is bounded: a claim beyond 1 TiB (whose room and time
// would overflow or last for years) is refused before any byte moves, and
// a transfer larger than its claim is refused by the peer, which keeps
// nothing of it.
func TestReplicaPushSizeBounded(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 2*time.Minute)
	spec := counterSpec("big", nil)
	for _, n := range []int64{1 << 62, 1 << 50, maxImageBytes + 1} {
		m := replicaMeta{Replica: api.Replica{Task: "big", Epoch: 1, Seq: 1, Holder: a.addr, Bytes: n}, Driver: "process", Spec: spec}
		_, err := a.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "1"))
		wantKind(t, fmt.Sprintf("push claiming %d bytes", n), err, driver.ErrInvalidSpec)
	}
	// Claims 10 bytes, sends 4 MiB.
	m := replicaMeta{Replica: api.Replica{Task: "big", Epoch: 1, Seq: 2, Holder: a.addr, Bytes: 10}, Driver: "process", Spec: spec}
	s := testSnapshot(t, b.addr, m, "2")
	blob := make([]byte, 4<<20)
	rand.New(rand.NewSource(2)).Read(blob)
	if err := os.WriteFile(filepath.Join(s.dir, replicaDataDir, "blob"), blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.agent.pushReplica(ctx, s); err == nil {
		t.Fatal("a push of 4 MiB claiming 10 bytes was accepted")
	}
	if rs, err := b.c.Replicas(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("node-b keeps %+v (%v), want nothing", rs, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(b.dataDir, "replicas", "big")); len(ents) != 0 {
		t.Fatalf("node-b keeps %d directories of the refused push", len(ents))
	}
	// The same push with its true size goes through.
	m.Seq, m.Bytes = 3, dirSize(s.dir)
	ok := testSnapshot(t, b.addr, m, "3")
	if err := os.WriteFile(filepath.Join(ok.dir, replicaDataDir, "blob"), blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.agent.pushReplica(ctx, ok); err != nil {
		t.Fatal(err)
	}
}

// A replica from an older epoch (left on a peer after the task moved or
// restarted) is never used: a restart from it at a later epoch is refused
// here and from another node, and a push older than the epoch the peer
// saw the task at (its record of a move) is refused.
func TestReplicaFromAnOlderEpochUnused(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 2*time.Minute)
	m := replicaMeta{Replica: api.Replica{Task: "old", Epoch: 1, Seq: 1, Holder: a.addr, Bytes: 1}, Driver: "process", Spec: counterSpec("old", nil)}
	if _, err := a.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "5")); err != nil {
		t.Fatal(err)
	}
	waitReplica(ctx, t, b, "old", 1, 1)
	_, err := b.c.Resume(ctx, "old", api.ResumeRequest{Epoch: 2, Replica: true})
	wantKind(t, "restart at epoch 2 from the epoch-1 replica kept here", err, api.ErrStaleEpoch)
	_, err = a.c.Resume(ctx, "old", api.ResumeRequest{Epoch: 2, Replica: true, From: b.addr})
	wantKind(t, "restart at epoch 2 from the epoch-1 replica at node-b", err, api.ErrStaleEpoch)
	if rs, err := b.c.Replicas(ctx); err != nil || len(rs) != 1 || rs[0].Epoch != 1 {
		t.Fatalf("node-b replicas after the refusals: %+v %v", rs, err)
	}
	for _, n := range []*node{a, b} {
		_, err := n.c.Inspect(ctx, "old")
		wantKind(t, "inspect on "+n.name+" after the refused restarts", err, driver.ErrNotFound)
	}

	// A task moves node-b → node-a (epoch 2): node-b's record of the move
	// makes an epoch-1 push stale; an epoch-2 one is the live task's.
	if _, err := b.c.Run(ctx, api.RunRequest{Spec: counterSpec("mv", nil)}); err != nil {
		t.Fatal(err)
	}
	b.waitCounter(ctx, "mv", 2)
	if _, err := b.c.Migrate(ctx, "mv", api.MigrateRequest{Epoch: 1, To: a.addr}, nil); err != nil {
		t.Fatal(err)
	}
	mv := replicaMeta{Replica: api.Replica{Task: "mv", Epoch: 1, Seq: 7, Holder: a.addr, Bytes: 1}, Driver: "process", Spec: counterSpec("mv", nil)}
	_, err = a.agent.pushReplica(ctx, testSnapshot(t, b.addr, mv, "3"))
	wantKind(t, "push of an epoch-1 replica after the move to epoch 2", err, api.ErrStaleEpoch)
	mv.Epoch, mv.Seq = 2, 1
	if _, err := a.agent.pushReplica(ctx, testSnapshot(t, b.addr, mv, "4")); err != nil {
		t.Fatalf("push of the live epoch: %v", err)
	}
}

// Only the agent that pushed a replica (by its certificate, whatever the
// replica claims as holder) pushes more of that epoch or drops it; another
// agent may push a later epoch (the task moved to it); the controller may
// always drop. The pusher survives the peer's restart.
func TestReplicaOnlyItsPusherReplacesOrDrops(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 2*time.Minute)
	c := startNode(t, a.ca, "node-c", processDrivers(t), nil)
	asAgent := func(n *node) *client.Client {
		cl := client.New(b.addr, a.ca.identity(n.name, pki.RoleAgent).ClientConfig())
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	m := replicaMeta{Replica: api.Replica{Task: "own", Epoch: 1, Seq: 1, Holder: a.addr, Bytes: 1}, Driver: "process", Spec: counterSpec("own", nil)}
	if _, err := a.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "1")); err != nil {
		t.Fatal(err)
	}
	waitReplica(ctx, t, b, "own", 1, 1)
	// node-c claims to be node-a's holder of epoch 1.
	m.Seq = 2
	_, err := c.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "2"))
	wantKind(t, "node-c pushing node-a's epoch", err, api.ErrForbidden)
	err = asAgent(c).DropReplica(ctx, "own", 1)
	wantKind(t, "node-c dropping node-a's replica", err, api.ErrForbidden)
	if rs, err := b.c.Replicas(ctx); err != nil || len(rs) != 1 || rs[0].Seq != 1 {
		t.Fatalf("node-b replicas after node-c's attempts: %+v %v", rs, err)
	}
	// The task moved to node-c at epoch 2: its pushes are accepted, and
	// node-a (after node-b restarts) no longer pushes or drops.
	m.Epoch, m.Seq, m.Holder = 2, 1, c.addr
	if _, err := c.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "3")); err != nil {
		t.Fatalf("node-c pushing epoch 2: %v", err)
	}
	waitReplica(ctx, t, b, "own", 2, 1)
	b.restart()
	m.Seq, m.Holder = 2, a.addr
	_, err = a.agent.pushReplica(ctx, testSnapshot(t, b.addr, m, "4"))
	wantKind(t, "node-a pushing node-c's epoch after node-b restarted", err, api.ErrForbidden)
	err = asAgent(a).DropReplica(ctx, "own", 2)
	wantKind(t, "node-a dropping node-c's replica", err, api.ErrForbidden)
	if err := b.c.DropReplica(ctx, "own", 2); err != nil {
		t.Fatalf("the controller dropping the replica: %v", err)
	}
	if rs, err := b.c.Replicas(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("node-b replicas after the controller's drop: %+v %v", rs, err)
	}
}

// A task stopped while its holder writes a checkpoint's snapshot leaves no
// replica behind: the stop's drop at the peer waits for that push (which
// is not sent), instead of going first and letting the push land after.
func TestReplicaNotLeftByAStopDuringItsSnapshot(t *testing.T) {
	t.Parallel()
	ctx, a, b := processPair(t, 2*time.Minute)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a.agent.mu.Lock()
	a.agent.afterSnapshot = func(string) { once.Do(func() { close(entered); <-release }) }
	a.agent.mu.Unlock()
	// The agent's hook, wrapped to tell when its first call returned.
	returned := make(chan struct{})
	var onceReturned sync.Once
	a.drivers[0].(*process.Driver).SetOnCheckpoint(func(ctx context.Context, id string, img driver.Image) {
		a.agent.onCheckpoint(ctx, id, img)
		onceReturned.Do(func() { close(returned) })
	})
	spec := counterSpec("gap", nil)
	spec.Process.CheckpointInterval = 300 * time.Millisecond
	if _, err := a.c.Run(ctx, api.RunRequest{Spec: spec, CheckpointPeer: b.addr}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("no checkpoint snapshot written")
	}
	if err := a.c.Stop(ctx, "gap", 1); err != nil {
		t.Fatal(err)
	}
	// until reports, polling, when cond (on node-a's state) holds.
	until := func(what string, cond func() bool) {
		t.Helper()
		for {
			a.agent.mu.Lock()
			ok := cond()
			a.agent.mu.Unlock()
			if ok {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("node-a never %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The stop's drop is either done or waiting for the snapshot's push.
	until("dropped or waited", func() bool { return a.agent.peerDrops == 0 || a.agent.pushes["gap"] != nil })
	close(release)
	select {
	case <-returned:
	case <-ctx.Done():
		t.Fatal("the checkpoint hook never returned")
	}
	until("finished pushing and dropping", func() bool { return a.agent.peerDrops == 0 && a.agent.pushes["gap"] == nil })
	for {
		b.agent.mu.Lock()
		_, receiving := b.agent.receiving["gap"]
		b.agent.mu.Unlock()
		if !receiving {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("node-b never finished receiving")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rs, err := b.c.Replicas(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("node-b keeps %+v (%v) of a stopped task", rs, err)
	}
}
