package controller

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/store"
)

// After a leader change one node (n2) stays silent: the loop does not wait
// for it. The other nodes get their plan — a stopped job on n1 is killed, a
// new job boots on a node that was heard from — while nothing about n2's
// tasks is decided: the operator's stop of its VM and suspend of a job
// with one task there and one on n1 wait (that job is held whole), and
// nothing is placed on n2 although it has the most room.
func TestSilentNodeAfterLeaderChangeDoesNotStallTheOthers(t *testing.T) {
	st, cx := leaderStore(t)
	apply := applier(t, st, cx)
	for _, n := range []string{"n1", "n2", "n3"} {
		apply(store.Command{RegisterNode: &store.RegisterNode{Name: n, Addr: n + ":1", Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}}})
	}
	cpu := func(c int64) store.Resources { return store.Resources{CPUMilli: c * 1000, MemoryBytes: 128 << 20} }
	submit := func(job string, prio int, tasks ...store.Task) {
		apply(store.Command{SubmitJob: &store.SubmitJob{Job: store.Job{Name: job, Priority: prio, Want: store.WantRun, Preemptible: true}, Tasks: tasks}})
	}
	submit("vm", 5, store.Task{Name: "vm.g.0", Driver: "qemu", Demand: cpu(1)})
	submit("far", 5, store.Task{Name: "far.t.0", Driver: "process", Demand: cpu(1)}, store.Task{Name: "far.t.1", Driver: "process", Demand: cpu(1)})
	submit("old", 5, store.Task{Name: "old.t.0", Driver: "process", Demand: cpu(1)})
	// Booted under the previous leader.
	boots := []store.Action{
		{Kind: "boot", Task: "vm.g.0", To: "n2"}, {Kind: "boot", Task: "far.t.0", To: "n2"},
		{Kind: "boot", Task: "far.t.1", To: "n1"}, {Kind: "boot", Task: "old.t.0", To: "n1"},
	}
	id := apply(store.Command{CreatePlan: &store.CreatePlan{Plan: store.Plan{Actions: boots}}}).PlanID
	for i := range boots {
		apply(store.Command{StartAction: &store.StartAction{Plan: id, Index: i}})
		fa := &store.FinishAction{Plan: id, Index: i, OK: true}
		if i == 0 {
			fa.RAMTail = store.RAMTailWithout
		}
		apply(store.Command{FinishAction: fa})
	}
	apply(store.Command{FinishPlan: &store.FinishPlan{Plan: id}})
	// What the operator asks meanwhile, and a new job of 3 CPUs: only n2
	// (3 free) and n3 (4 free) have the room.
	apply(store.Command{SetJobWant: &store.SetJobWant{Job: "vm", Want: store.WantStop}})
	apply(store.Command{SetJobWant: &store.SetJobWant{Job: "far", Want: store.WantSleep}})
	apply(store.Command{SetJobWant: &store.SetJobWant{Job: "old", Want: store.WantStop}})
	submit("new", 5, store.Task{Name: "new.t.0", Driver: "process", Demand: cpu(3)})

	// The new leader's loop hears n1 and n3; n2 stays silent.
	c := New(Config{Store: st, Policy: Priority{}, Period: time.Hour, HeartbeatTimeout: 2 * time.Hour, NoPoll: true, Logger: quietLog()})
	both := []string{"process", "qemu"}
	running := func(id string) api.Task {
		return api.Task{ID: id, Driver: "process", Epoch: 1, Phase: api.PhaseRunning}
	}
	for _, hb := range []Heartbeat{
		{Node: "n1", Info: api.NodeInfo{Name: "n1", Drivers: both, QEMUVersion: "10.0.2"}, Tasks: []api.Task{running("far.t.1"), running("old.t.0")}},
		{Node: "n3", Info: api.NodeInfo{Name: "n3", Drivers: both, QEMUVersion: "10.0.2"}},
	} {
		if err := c.Observe(cx, hb, false); err != nil {
			t.Fatal(err)
		}
	}
	c.makePlan(cx)
	if c.run == nil {
		t.Fatal("no plan while n2 is silent: the loop still waits for every node")
	}
	got := map[string]string{}
	for _, a := range c.run.acts {
		got[a.Task] = a.Kind + " " + a.From + ">" + a.To
		if a.From == "n2" || a.To == "n2" {
			t.Errorf("%s of %s touches n2, which has not been heard from", a.Kind, a.Task)
		}
	}
	want := map[string]string{"old.t.0": "kill n1>", "new.t.0": "boot >n3"}
	if len(got) != len(want) || got["old.t.0"] != want["old.t.0"] || got["new.t.0"] != want["new.t.0"] {
		t.Fatalf("plan %v, want %v (nothing of vm or far, which have a task on n2)", got, want)
	}
}

// stopOnN1 is a policy that wants every running task on n1 sleeping and
// every other task as it is.
var stopOnN1 = wantEach{"stop-on-n1", func(m *cluster.Model, i int) cluster.TaskState {
	if t := m.Tasks[i]; t.State == cluster.Running && m.Nodes[t.Node].Name == "n1" {
		return cluster.Sleeping
	}
	return m.Tasks[i].State
}}

// While a node is silent, a decision that stops a running task the
// operator wants running is not taken (the silent node's room might have
// kept it running): Problem says the loop waits. Once the node is heard
// from it is taken.
func TestSilentNodeDefersStoppingARunningTask(t *testing.T) {
	s, reports := capState(map[string]capTask{
		"p":  {"process", store.TaskRunning, "n1", store.RAMTailUnknown},
		"vm": {"qemu", store.TaskSleeping, "n1", store.RAMTailWithout},
	})
	heard := reports["n2"]
	delete(reports, "n2")
	snap := BuildSnapshot(s, 1000, reports)
	if strings.Join(snap.Unheard, " ") != "n2" {
		t.Fatalf("unheard %v, want n2", snap.Unheard)
	}
	if _, err := snap.Problem(stopOnN1); !errors.Is(err, ErrWaitingForReports) || !strings.Contains(err.Error(), "p.t.0 on n1") {
		t.Fatalf("Problem with n2 silent: %v, want ErrWaitingForReports naming p.t.0", err)
	}
	reports["n2"] = heard
	_, p := solveWith(t, BuildSnapshot(s, 1000, reports), stopOnN1)
	if len(p.Actions) != 1 || p.Actions[0].Kind != cluster.Suspend {
		t.Fatalf("with n2 heard: plan %v, want the suspend", p.Actions)
	}
}

// A job frozen by a silent node is kept as it is, whatever the decision
// wants of it: wanting its task on n1 stopped does not make the loop wait
// (the whole cluster's plans would stall on a decision never taken).
func TestFrozenJobDoesNotStallTheLoop(t *testing.T) {
	s, reports := capState(map[string]capTask{
		"w":  {"process", store.TaskRunning, "n1", store.RAMTailUnknown},
		"vm": {"qemu", store.TaskSleeping, "n3", store.RAMTailWithout},
	})
	s.Jobs["w"].Tasks = append(s.Jobs["w"].Tasks, "w.t.1")
	s.Tasks["w.t.1"] = &store.Task{Name: "w.t.1", Job: "w", Driver: "process", Demand: store.Resources{CPUMilli: 1000, MemoryBytes: 128 << 20},
		Phase: store.TaskRunning, Node: "n2", Epoch: 1}
	delete(reports, "n2")
	snap := BuildSnapshot(s, 1000, reports)
	if strings.Join(snap.Unheard, " ") != "n2" {
		t.Fatalf("unheard %v, want n2", snap.Unheard)
	}
	_, p := solveWith(t, snap, stopOnN1)
	if len(p.Actions) != 0 {
		t.Fatalf("plan %v, want nothing: w is frozen by silent n2", p.Actions)
	}
}
