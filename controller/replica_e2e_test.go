package controller

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/agent/client"
	"github.com/ferrycluster/ferry/pki"
	"github.com/ferrycluster/ferry/store"
)

// The checkpointing example (examples/checkpoint-sh) as a job with periodic
// checkpoints: its node is lost (agent and job killed, as when the machine
// dies) and the task restarts from the replica its checkpoint peer keeps —
// not from scratch — and prints the same result as an unmoved run, with
// never two live copies.
func TestE2ELostProcessRestartsFromItsCheckpointReplica(t *testing.T) {
	c, want, first := startSegWithReplica(t)
	// The node dies: its agent and its job.
	c.stopAgent(first.Node, true)
	resume := c.segResumedFromReplica(first, want)
	t.Logf("resumed on %s from %s's replica", resume.To, resume.From)
}

// The same loss with the peer full (a pinned job fills it): the task
// resumes on the third node, which fetches the replica from the peer.
func TestE2ELostProcessResumesFromItsPeersReplicaOnAnotherNode(t *testing.T) {
	c, want, first := startSegWithReplica(t)
	filler := counterJob("filler", 9, 1, 1, "constraints:\n  pinned: "+first.CheckpointPeer+"\n")
	if _, err := c.cli.Submit(ctx(t), []byte(filler)); err != nil {
		t.Fatal(err)
	}
	c.waitFor("filler running on the peer", 30*time.Second, func() bool {
		tk := c.task("filler.c.0")
		return tk.Phase == store.TaskRunning && tk.Node == first.CheckpointPeer
	})
	c.stopAgent(first.Node, true)
	resume := c.segResumedFromReplica(first, want)
	if resume.To == first.CheckpointPeer {
		t.Fatalf("seg.c.0 resumed on its full peer %s", resume.To)
	}
	if c.phase("filler.c.0") != store.TaskRunning {
		t.Fatalf("filler disturbed: %s", c.phase("filler.c.0"))
	}
}

// segResumedFromReplica waits for seg.c.0, whose node was lost, to restart
// from its checkpoint peer's replica and finish, never with two live
// copies; it checks the loss event, the resume action, that the run went on
// from a checkpoint and printed the unmoved run's result, and returns the
// resume action.
func (c *testCluster) segResumedFromReplica(first store.Task, want string) store.Action {
	t := c.t
	t.Helper()
	c.waitFor("seg restarted elsewhere from the replica", 90*time.Second, func() bool {
		n, where := c.liveCopies("seg.c.0")
		if n > 1 {
			t.Fatalf("two live copies of seg.c.0: %v", where)
		}
		tk := c.task("seg.c.0")
		return tk.Node != first.Node && tk.Epoch > first.Epoch && (tk.Phase == store.TaskRunning || tk.Phase == store.TaskTerminated)
	})
	lostEvent := c.lastEvent("seg.c.0", "lost")
	if !strings.Contains(lostEvent, "replica of its periodic checkpoint on "+first.CheckpointPeer) {
		t.Fatalf("the loss event does not say the task restarts from the replica on %s: %q\n%s", first.CheckpointPeer, lostEvent, c.dump())
	}
	if n := histogramCount(c.srv.Controller.Metrics().LostRestarts.WithLabelValues("replica")); n != 1 {
		t.Fatalf("ferry_lost_tasks_total{from=replica} = %v, want 1", n)
	}
	var resume *store.Action
	c.srv.Store.View(func(s *store.State) {
		for _, p := range s.Plans {
			for _, a := range p.Actions {
				if a.Task == "seg.c.0" && a.Kind == "resume" && a.State == store.ActionDone {
					a := a
					resume = &a
				}
			}
		}
	})
	if resume == nil || resume.From != first.CheckpointPeer {
		t.Fatalf("seg.c.0 was not resumed from its peer %s's replica: %+v\n%s", first.CheckpointPeer, resume, c.dump())
	}
	c.waitFor("seg finished", 120*time.Second, func() bool {
		if n, where := c.liveCopies("seg.c.0"); n > 1 {
			t.Fatalf("two live copies of seg.c.0: %v", where)
		}
		return c.phase("seg.c.0") == store.TaskTerminated
	})
	if tk := c.task("seg.c.0"); tk.ExitCode != 0 {
		t.Fatalf("seg.c.0 ended with %d: %s", tk.ExitCode, tk.Message)
	}
	log, err := os.ReadFile(filepath.Join(c.agents[resume.To].dir, "drivers", "process", "logs", "seg.c.0.log"))
	if err != nil {
		t.Fatal(err)
	}
	restored := regexp.MustCompile(`restored at step (\d+)`).FindStringSubmatch(string(log))
	if restored == nil || restored[1] == "0" {
		t.Fatalf("the restarted seg.c.0 did not start from a checkpoint:\n%s", lastLines(string(log), 5))
	}
	if got := resultLine(string(log)); got != want {
		t.Fatalf("result after the restart %q, unmoved run %q", got, want)
	}
	t.Logf("restarted on %s from step %s; %s (unmoved: %s)", resume.To, restored[1], resultLine(string(log)), want)
	return *resume
}

// startSegWithReplica computes the example's result in an unmoved run,
// then runs it as job seg (periodic checkpoints every second) on three
// real agents and waits until its checkpoint peer keeps a replica. It
// returns the cluster, the unmoved result and the task as it runs.
func startSegWithReplica(t *testing.T) (*testCluster, string, store.Task) {
	script, err := filepath.Abs("../examples/checkpoint-sh/checkpoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	const steps = "1500"
	out, err := exec.Command("/bin/sh", script, steps, "0").Output()
	if err != nil {
		t.Fatalf("unmoved run: %v", err)
	}
	want := resultLine(string(out))
	if want == "" {
		t.Fatalf("unmoved run printed no result:\n%s", out)
	}
	c := newTestCluster(t, 3, 1)
	spec := fmt.Sprintf(`name: seg
priority: 5
tasks:
  - name: c
    driver: process
    command: ["/bin/sh", %q, %q, "0.02"]
    cpus: 1
    memory: 64MiB
checkpoint:
  interval: 1s
  timeout: 10s
`, script, steps)
	if _, err := c.cli.Submit(ctx(t), []byte(spec)); err != nil {
		t.Fatal(err)
	}
	c.waitFor("seg running with a checkpoint peer", 30*time.Second, func() bool {
		tk := c.task("seg.c.0")
		return tk.Phase == store.TaskRunning && tk.CheckpointPeer != ""
	})
	first := c.task("seg.c.0")
	if first.CheckpointPeer == first.Node {
		t.Fatalf("seg.c.0's checkpoint peer is its own node %s", first.Node)
	}
	// Wait until the peer keeps a replica taken some way into the run.
	id, err := pki.Load(c.tlsDir, "server")
	if err != nil {
		t.Fatal(err)
	}
	peer := client.New(c.agents[first.CheckpointPeer].addr, id.ClientConfig())
	defer peer.Close()
	var rep api.Replica
	c.waitFor("a replica on the checkpoint peer", 60*time.Second, func() bool {
		rs, _ := peer.Replicas(ctx(t))
		for _, r := range rs {
			if r.Task == "seg.c.0" && r.Seq >= 2 {
				rep = r
				return true
			}
		}
		return false
	})
	t.Logf("seg.c.0 on %s, peer %s keeps replica epoch %d seq %d (%d bytes)", first.Node, first.CheckpointPeer, rep.Epoch, rep.Seq, rep.Bytes)
	return c, want, first
}

// When the checkpoint peer dies with the task's node, there is no replica
// to restart from and no suspend image: the task restarts from scratch on
// the third node, says so in its loss event, and still prints the unmoved
// run's result, never with two live copies.
func TestE2ELostProcessWithoutItsPeerRestartsFromScratch(t *testing.T) {
	c, want, first := startSegWithReplica(t)
	c.stopAgent(first.CheckpointPeer, true)
	c.stopAgent(first.Node, true)
	c.waitFor("seg finished on the third node", 180*time.Second, func() bool {
		if n, where := c.liveCopies("seg.c.0"); n > 1 {
			t.Fatalf("two live copies of seg.c.0: %v", where)
		}
		return c.phase("seg.c.0") == store.TaskTerminated
	})
	lostEvent := c.lastEvent("seg.c.0", "lost")
	if !strings.Contains(lostEvent, "restart_from=scratch") {
		t.Fatalf("the loss event does not say the task restarts from scratch: %q\n%s", lostEvent, c.dump())
	}
	if n := histogramCount(c.srv.Controller.Metrics().LostRestarts.WithLabelValues("scratch")); n != 1 {
		t.Fatalf("ferry_lost_tasks_total{from=scratch} = %v, want 1", n)
	}
	third := ""
	for n := range c.agents {
		if n != first.Node && n != first.CheckpointPeer {
			third = n
		}
	}
	log, err := os.ReadFile(filepath.Join(c.agents[third].dir, "drivers", "process", "logs", "seg.c.0.log"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), "restored at step") {
		t.Fatalf("seg.c.0 restored from a checkpoint with no replica and no image:\n%s", lastLines(string(log), 5))
	}
	if got := resultLine(string(log)); got != want {
		t.Fatalf("result after the restart %q, unmoved run %q", got, want)
	}
}

// lastEvent returns the latest event about object with what, as text.
func (c *testCluster) lastEvent(object, what string) string {
	last := ""
	for _, e := range c.srv.Controller.Events().Recent(0) {
		if e.Object == object && e.What == what {
			last = e.String()
		}
	}
	return last
}

// resultLine returns the example's "result N" line.
func resultLine(log string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "result ") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// A replica its peer kept from an earlier placement is not used: the task
// ran on n1 (zone a) with its checkpoint peer n2 (zone b), which keeps a
// replica of epoch E; it moved to n3 (zone a, peer n2 again, epoch E+1),
// whose node died before its first checkpoint reached n2. The task does not
// restart from the old replica (older than the move, and its holder is
// stale); the loss event says why, and the task restarts from its image or
// scratch, one live copy.
func TestE2ELostProcessIgnoresItsPeersReplicaFromAnEarlierEpoch(t *testing.T) {
	script, err := filepath.Abs("../examples/checkpoint-sh/checkpoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCluster(t, 0, 1)
	// n2 has too little CPU for the task: it can only be the peer.
	for _, n := range []struct {
		name, zone string
		cpus       float64
	}{{"n1", "a", 1}, {"n2", "b", 0.5}, {"n3", "a", 1}} {
		c.startAgent(n.name, "127.0.0.1:0", n.cpus)
		if _, err := c.cli.AddNode(ctx(t), c.agents[n.name].addr, map[string]string{"zone": n.zone}); err != nil {
			t.Fatal(err)
		}
	}
	// The first periodic checkpoint of a placement comes one interval
	// after it starts: 10 s leaves the test time to kill the new node
	// before that.
	spec := fmt.Sprintf(`name: seg
priority: 5
tasks:
  - name: c
    driver: process
    command: ["/bin/sh", %q, "100000", "0.02"]
    cpus: 1
    memory: 64MiB
checkpoint:
  interval: 10s
  timeout: 10s
`, script)
	if _, err := c.cli.Submit(ctx(t), []byte(spec)); err != nil {
		t.Fatal(err)
	}
	c.waitFor("seg running with n2 as its peer", 30*time.Second, func() bool {
		tk := c.task("seg.c.0")
		return tk.Phase == store.TaskRunning && tk.CheckpointPeer == "n2"
	})
	first := c.task("seg.c.0")
	id, err := pki.Load(c.tlsDir, "server")
	if err != nil {
		t.Fatal(err)
	}
	peer := client.New(c.agents["n2"].addr, id.ClientConfig())
	defer peer.Close()
	replicaEpochs := func() []uint64 {
		rs, _ := peer.Replicas(ctx(t))
		var es []uint64
		for _, r := range rs {
			if r.Task == "seg.c.0" {
				es = append(es, r.Epoch)
			}
		}
		return es
	}
	c.waitFor("a replica on n2", 60*time.Second, func() bool { return len(replicaEpochs()) > 0 })
	other := map[string]string{"n1": "n3", "n3": "n1"}[first.Node]
	c.waitFor("the move accepted", 30*time.Second, func() bool {
		_, err := c.cli.Migrate(ctx(t), "seg.c.0", other)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			t.Fatal(err)
		}
		return err == nil
	})
	c.waitFor("seg moved", 60*time.Second, func() bool {
		tk := c.task("seg.c.0")
		return tk.Phase == store.TaskRunning && tk.Node == other
	})
	moved := c.task("seg.c.0")
	c.stopAgent(other, true)
	if moved.CheckpointPeer != "n2" || moved.Epoch <= first.Epoch {
		t.Fatalf("after the move seg.c.0 has peer %q at epoch %d (before: epoch %d); the test needs n2 at a newer epoch", moved.CheckpointPeer, moved.Epoch, first.Epoch)
	}
	if es := replicaEpochs(); len(es) != 1 || es[0] >= moved.Epoch {
		t.Fatalf("n2 keeps replicas of epochs %v; the test needs only one older than %d", es, moved.Epoch)
	}
	c.waitFor("seg restarted after the loss", 90*time.Second, func() bool {
		if n, where := c.liveCopies("seg.c.0"); n > 1 {
			t.Fatalf("two live copies of seg.c.0: %v", where)
		}
		tk := c.task("seg.c.0")
		return tk.Epoch > moved.Epoch && tk.Phase == store.TaskRunning
	})
	lostEvent := c.lastEvent("seg.c.0", "lost")
	why := fmt.Sprintf("checkpoint peer n2: its replica's epoch %d is older than the task's %d", first.Epoch, moved.Epoch)
	if strings.Contains(lostEvent, "replica of its periodic checkpoint") || !strings.Contains(lostEvent, why) {
		t.Fatalf("the loss event %q does not refuse the old replica with %q\n%s", lostEvent, why, c.dump())
	}
	if n := histogramCount(c.srv.Controller.Metrics().LostRestarts.WithLabelValues("replica")); n != 0 {
		t.Fatalf("ferry_lost_tasks_total{from=replica} = %v, want 0", n)
	}
	if tk := c.task("seg.c.0"); tk.Replica {
		t.Fatalf("seg.c.0 set to resume from a replica: %+v", tk)
	}
}
