package agent

import (
	"context"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/driver"
)

// Periodic checkpoints go to the checkpoint peer as replicas, the peer
// keeps only the newest, refuses older pushes and bad requests, and a
// resume from its own replica (From empty) continues the task at epoch+1
// after the holder is lost.
func TestReplicaPushAndLocalRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := newTestCA(t)
	a := startNode(t, ca, "node-a", processDrivers(t), nil)
	b := startNode(t, ca, "node-b", processDrivers(t), nil)

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
	// The holder is lost; node-b restarts the task from its own replica.
	a.shutdown(true)
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
