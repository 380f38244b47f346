package process

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent"
	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/driver"
	"github.com/ferrycluster/ferry/pki"
)

// agentNode is a real agent (mutual TLS on 127.0.0.1) running a process
// driver, as the controller sees it.
type agentNode struct {
	drv   *Driver
	agent *agent.Agent
	addr  string
	c     *client.Client
}

// agentCluster issues identities from one CA and starts agents.
type agentCluster struct {
	t     testing.TB
	caDir string
	ctl   *pki.Identity
	// transfer is the agents' Config.ImageTransfer.
	transfer string
	// freeSpace, if set, is the agents' Config.FreeSpace.
	freeSpace func(string) (int64, error)
}

func newAgentCluster(t testing.TB) *agentCluster {
	cl := &agentCluster{t: t, caDir: t.TempDir()}
	if err := pki.Init(cl.caDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	cl.ctl = cl.identity("controller", pki.RoleServer)
	return cl
}

func (cl *agentCluster) identity(name string, role pki.Role) *pki.Identity {
	req := pki.IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	if err := pki.Issue(cl.caDir, req, time.Now()); err != nil {
		cl.t.Fatal(err)
	}
	id, err := pki.Load(cl.caDir, name)
	if err != nil {
		cl.t.Fatal(err)
	}
	return id
}

// start runs an agent; at the test's end it closes it and stops its tasks.
func (cl *agentCluster) start(name string) *agentNode {
	t := cl.t
	dir := t.TempDir()
	alog := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("FERRY_BENCH_DEBUG") != "" {
		alog = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", name)
	}
	d, err := New(Config{DataDir: filepath.Join(dir, "process"), NoCgroups: true, Logger: alog})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{Name: name, DataDir: dir, Listen: "127.0.0.1:0", CPUs: 8, MemoryBytes: 4 << 30,
		Identity: cl.identity(name, pki.RoleAgent), Drivers: []driver.Driver{d}, ImageTransfer: cl.transfer,
		FreeSpace: cl.freeSpace, Logger: alog})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	n := &agentNode{drv: d, agent: a, addr: a.Addr(), c: client.New(a.Addr(), cl.ctl.ClientConfig())}
	t.Cleanup(func() { n.kill() })
	return n
}

// kill loses the node: the agent goes away and its jobs die without a
// checkpoint.
func (n *agentNode) kill() {
	if n.agent == nil {
		return
	}
	n.agent.Close()
	n.agent = nil
	n.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	list, _ := n.drv.List(ctx)
	for _, st := range list {
		_ = n.drv.Stop(ctx, st.ID)
	}
	n.drv.Close()
}

// waitLogMatch waits until the log of id on d from offset from matches re and
// returns the last submatch.
func waitLogMatch(t testing.TB, d *Driver, id string, re *regexp.Regexp, from int) []byte {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(d.LogPath(id))
		if len(b) > from {
			if m := re.FindSubmatch(b[from:]); m != nil {
				return m[len(m)-1]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %v in %s: %s", re, d.LogPath(id), b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The Go example moved mid-run 4 times between two real agents (mutual TLS
// on 127.0.0.1, checkpoint migrations: suspend, image fetched by the peer,
// resume, owner epoch bumped) prints the same result as a run never moved,
// with either image transfer.
func TestExampleMovesThroughTwoAgents(t *testing.T) {
	bin := buildGoExample(t)
	for _, transfer := range []string{agent.ImageTransferCAS, agent.ImageTransferTar} {
		t.Run(transfer, func(t *testing.T) { movesThroughTwoAgents(t, bin, transfer) })
	}
}

func movesThroughTwoAgents(t *testing.T, bin, transfer string) {
	cl := newAgentCluster(t)
	cl.transfer = transfer
	nodes := []*agentNode{cl.start("node-a"), cl.start("node-b")}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := func(id string) driver.Spec {
		return driver.Spec{ID: id, Epoch: 1, CPUs: 0.5, MemoryBytes: 64 << 20,
			Process: &driver.ProcessSpec{Command: []string{bin, "-steps", "3000", "-delay", "1ms"}}}
	}
	if _, err := nodes[0].c.Run(ctx, api.RunRequest{Spec: spec("still")}); err != nil {
		t.Fatal(err)
	}
	want := string(waitLogMatch(t, nodes[0].drv, "still", resultLine, 0))

	if _, err := nodes[0].c.Run(ctx, api.RunRequest{Spec: spec("moved")}); err != nil {
		t.Fatal(err)
	}
	epoch := uint64(1)
	progress := regexp.MustCompile(`(?m)^(step \d+)$`)
	for i := 0; i < 4; i++ {
		src, dst := nodes[i%2], nodes[(i+1)%2]
		off := 0
		if fi, err := os.Stat(src.drv.LogPath("moved")); err == nil && i >= 2 {
			off = int(fi.Size())
		}
		waitLogMatch(t, src.drv, "moved", progress, off) // it runs here before moving on
		ev, err := src.c.Migrate(ctx, "moved", api.MigrateRequest{Epoch: epoch, To: dst.addr, Mode: "checkpoint"}, nil)
		if err != nil {
			t.Fatalf("move %d: %v", i, err)
		}
		if ev.Epoch != epoch+1 {
			t.Fatalf("move %d: epoch %d, want %d", i, ev.Epoch, epoch+1)
		}
		epoch = ev.Epoch
	}
	final := nodes[0] // 4 moves: back on node-a
	got := string(waitLogMatch(t, final.drv, "moved", resultLine, 0))
	if got != want {
		t.Fatalf("moved through agents: result %s, unmoved %s", got, want)
	}
	b, _ := os.ReadFile(final.drv.LogPath("moved"))
	if n := len(regexp.MustCompile(`(?m)^restored at step`).FindAll(b, -1)); n < 2 {
		t.Errorf("node-a's log shows %d restores, want 2 (moves 2 and 4)", n)
	}
}

// Periodic checkpoints copied to a peer agent survive the loss of the node
// that ran the job: the Go example runs on node-a with node-b as its
// checkpoint peer; once node-b keeps a replica, node-a is lost (agent gone,
// job killed without a checkpoint) and node-c restarts the job from
// node-b's replica at the next epoch. The result equals an unmoved run's.
func TestExampleRestartsFromReplicaAfterNodeLoss(t *testing.T) {
	bin := buildGoExample(t)
	cl := newAgentCluster(t)
	a, b, c := cl.start("node-a"), cl.start("node-b"), cl.start("node-c")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := func(id string, interval time.Duration) driver.Spec {
		return driver.Spec{ID: id, Epoch: 1, CPUs: 0.5, MemoryBytes: 64 << 20,
			Process: &driver.ProcessSpec{Command: []string{bin, "-steps", "6000", "-delay", "1ms"},
				CheckpointInterval: interval, CheckpointTimeout: 5 * time.Second}}
	}
	if _, err := c.c.Run(ctx, api.RunRequest{Spec: spec("still", 0)}); err != nil {
		t.Fatal(err)
	}
	want := string(waitLogMatch(t, c.drv, "still", resultLine, 0))

	run, err := a.c.Run(ctx, api.RunRequest{Spec: spec("seg", 300*time.Millisecond), CheckpointPeer: b.addr})
	if err != nil {
		t.Fatal(err)
	}
	if run.CheckpointPeer != b.addr {
		t.Fatalf("run returned checkpoint peer %q, want %q", run.CheckpointPeer, b.addr)
	}
	// Wait for a second replica: the first one was superseded at node-b.
	var rep api.Replica
	for rep.Seq < 2 {
		rs, err := b.c.Replicas(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Task == "seg" {
				rep = r
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("node-b keeps no second replica of seg (have %+v)", rep)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep.Epoch != 1 || rep.Holder != a.addr || rep.Bytes <= 0 || rep.Taken.IsZero() {
		t.Fatalf("replica %+v: want epoch 1 from %s with a size and a time", rep, a.addr)
	}
	if _, err := os.Stat(b.drv.LogPath("seg")); err == nil {
		t.Fatal("node-b ran the replica by itself")
	}
	a.kill()
	if b, _ := os.ReadFile(a.drv.LogPath("seg")); resultLine.Match(b) {
		t.Fatalf("the job finished before node-a was lost; no restart to test: %s", b)
	}

	res, err := c.c.Resume(ctx, "seg", api.ResumeRequest{Epoch: 1, From: b.addr, Replica: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Epoch != 2 || res.Phase != api.PhaseRunning {
		t.Fatalf("resume from the replica returned %+v, want running at epoch 2", res)
	}
	restored := regexp.MustCompile(`(?m)^restored at step (\d+)$`)
	if step := string(waitLogMatch(t, c.drv, "seg", restored, 0)); step == "0" {
		t.Fatalf("restored at step %s", step)
	}
	if got := string(waitLogMatch(t, c.drv, "seg", resultLine, 0)); got != want {
		t.Fatalf("restarted from the replica: result %s, unmoved %s", got, want)
	}
	// The replica stays at node-b, behind the task's epoch now.
	_, err = c.c.Resume(ctx, "seg", api.ResumeRequest{Epoch: 1, From: b.addr, Replica: true})
	if !errors.Is(err, driver.ErrExists) {
		t.Fatalf("second restart from the replica: %v, want ErrExists", err)
	}
}

// A streamed move whose checkpoint outgrows the destination's room while
// the job writes it (the estimate, the job's memory, fitted): the stream
// stops, the destination commits nothing, and the source resumes the task
// from the checkpoint it kept, at the same epoch.
func TestStreamedMoveOutgrowingTheDestinationStaysHere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := newAgentCluster(t)
	cl.transfer = agent.ImageTransferStream
	na := cl.start("node-a")
	var free atomic.Int64
	cl.freeSpace = func(string) (int64, error) { return free.Load(), nil }
	nb := cl.start("node-b")
	copies := filepath.Join(t.TempDir(), "copies")
	spec := jobSpec("blob", "blob", map[string]string{"FERRY_TEST_BYTES": strconv.Itoa(16 << 20), "FERRY_TEST_COPIES": copies})
	if _, err := na.c.Run(ctx, api.RunRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	waitLogMatch(t, na.drv, "blob", regexp.MustCompile(`ready (\d+)`), 0)
	// Room for the job's memory (the estimate) and a little more; the
	// job writes past it (more so under -race, which inflates its memory).
	st, err := na.drv.Stats(ctx, "blob")
	if err != nil || st.MemoryBytes <= 0 {
		t.Fatalf("stats %+v %v", st, err)
	}
	free.Store(st.MemoryBytes + 4<<20)
	n := (st.MemoryBytes+4<<20)/(16<<20) + 2
	if err := os.WriteFile(copies, []byte(strconv.FormatInt(n, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = na.c.Migrate(ctx, "blob", api.MigrateRequest{Epoch: 1, To: nb.addr, Mode: "checkpoint"}, nil)
	if !errors.Is(err, driver.ErrInsufficient) {
		t.Fatalf("move of %d MiB of state (%d MiB in memory) into %d MiB free: %v, want insufficient resources", n*16, st.MemoryBytes>>20, free.Load()>>20, err)
	}
	if b, _ := os.ReadFile(na.drv.LogPath("blob")); !bytes.Contains(b, []byte("wrote ")) {
		t.Fatalf("refused before the job wrote its state (want: during):\n%s", b)
	}
	waitLogMatch(t, na.drv, "blob", regexp.MustCompile(`restored (\d+)`), 0)
	if x, err := na.c.Inspect(ctx, "blob"); err != nil || x.Phase != api.PhaseRunning || x.Epoch != 1 {
		t.Fatalf("source after the refused stream: %+v %v", x, err)
	}
	if _, err := nb.c.Inspect(ctx, "blob"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("destination after the refused stream: %v", err)
	}
}
