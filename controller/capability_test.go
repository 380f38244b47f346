package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/ferrycluster/ferry/agent/api"
	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/verify"
	"github.com/ferrycluster/ferry/policy"
	"github.com/ferrycluster/ferry/store"
)

func TestBootTail(t *testing.T) {
	both := []string{"process", "qemu"}
	for _, tc := range []struct {
		info api.NodeInfo
		want store.RAMTail
	}{
		{api.NodeInfo{Drivers: both, QEMUVersion: "10.0.2"}, store.RAMTailWithout},
		{api.NodeInfo{Drivers: both, QEMUVersion: "9.0.0"}, store.RAMTailWithout},
		{api.NodeInfo{Drivers: both, QEMUVersion: "8.2.9"}, store.RAMTailWith},
		{api.NodeInfo{Drivers: both, QEMUVersion: "7.2.22"}, store.RAMTailWith},
		// The agent gives the tail when it cannot read its version.
		{api.NodeInfo{Drivers: both}, store.RAMTailWith},
		{api.NodeInfo{Drivers: both, QEMUVersion: "ten"}, store.RAMTailWith},
		{api.NodeInfo{Drivers: []string{"process"}, QEMUVersion: "10.0.2"}, store.RAMTailUnknown},
	} {
		if got := bootTail(tc.info); got != tc.want {
			t.Errorf("bootTail(%+v) = %q, want %q", tc.info, got, tc.want)
		}
	}
}

// capState: nodes n1 (QEMU 10.0.2), n2 (QEMU 7.2.22), n3 (no qemu driver),
// each with 4 CPUs; one 1-CPU task per entry of tasks (name → driver,
// phase, node, RAM tail), each its own job.
type capTask struct {
	driver string
	phase  store.TaskPhase
	node   string
	tail   store.RAMTail
}

func capState(tasks map[string]capTask) (*store.State, NodeReports) {
	s := store.NewState()
	for _, n := range []string{"n1", "n2", "n3"} {
		s.Nodes[n] = &store.Node{Name: n, Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}, Status: store.NodeOnline}
	}
	reports := NodeReports{
		"n1": {Name: "n1", Drivers: []string{"process", "qemu"}, QEMUVersion: "10.0.2"},
		"n2": {Name: "n2", Drivers: []string{"process", "qemu"}, QEMUVersion: "7.2.22"},
		"n3": {Name: "n3", Drivers: []string{"process"}},
	}
	i := 0
	for name, ct := range tasks {
		tn := name + ".t.0"
		s.Jobs[name] = &store.Job{Name: name, Priority: 5, Submitted: int64(i), Want: store.WantRun, Preemptible: true, Tasks: []string{tn}}
		s.Tasks[tn] = &store.Task{Name: tn, Job: name, Driver: ct.driver, Demand: store.Resources{CPUMilli: 1000, MemoryBytes: 128 << 20},
			Phase: ct.phase, Node: ct.node, Epoch: 1, RAMTail: ct.tail}
		i++
	}
	return s, reports
}

// solveChecked solves the snapshot's problem with the Priority policy and
// verifies the plan.
func solveChecked(t *testing.T, snap *Snapshot) (*plan.Problem, *plan.Plan) {
	t.Helper()
	return solveWith(t, snap, Priority{})
}

// solveWith solves the snapshot's problem with pol and verifies the plan.
func solveWith(t *testing.T, snap *Snapshot, pol policy.Policy) (*plan.Problem, *plan.Plan) {
	t.Helper()
	prob, err := snap.Problem(pol)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Solve(context.Background(), prob, plan.Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Check(prob, p); err != nil {
		t.Fatalf("plan does not verify: %v", err)
	}
	return prob, p
}

// where returns the node a plan leaves the task running on ("" none).
func where(prob *plan.Problem, p *plan.Plan, task string) string {
	ti := prob.Model.TaskIndex(task)
	if r := p.Result.Tasks[ti]; r.State == cluster.Running {
		return p.Result.Nodes[r.Node].Name
	}
	return ""
}

// Which nodes may take which task: a VM to boot goes to any node with the
// qemu driver; a guest without the RAM tail (or whose tail is not known)
// only to QEMU 9.0 or later; a guest with it to any qemu node; a guest of
// unknown shape found on an old node has the tail (that node would have
// refused it otherwise); a process anywhere; a running task may stay on
// its node; a node not heard from takes nothing new while there are VMs.
func TestCapabilityFilter(t *testing.T) {
	s, reports := capState(map[string]capTask{
		"boot":    {"qemu", store.TaskWaiting, "", store.RAMTailUnknown},
		"without": {"qemu", store.TaskSleeping, "n1", store.RAMTailWithout},
		"with":    {"qemu", store.TaskSleeping, "n1", store.RAMTailWith},
		"unknown": {"qemu", store.TaskSleeping, "n1", store.RAMTailUnknown},
		"onold":   {"qemu", store.TaskSleeping, "n2", store.RAMTailUnknown},
		"proc":    {"process", store.TaskWaiting, "", store.RAMTailUnknown},
		// Running on n3, which reports no qemu driver (say the agent was
		// restarted without it): it may stay, not come back once gone.
		"stays": {"qemu", store.TaskRunning, "n3", store.RAMTailWithout},
	})
	s.Nodes["n4"] = &store.Node{Name: "n4", Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}, Status: store.NodeOnline}
	snap := BuildSnapshot(s, 1000, reports)
	m := snap.View.Model
	want := map[string]string{ // nodes that may take the task
		"boot": "n1 n2", "without": "n1", "with": "n1 n2", "unknown": "n1", "onold": "n1 n2",
		"proc": "n1 n2 n3", "stays": "n1 n3", // n4 is not heard from: nothing new lands there
	}
	for job, nodes := range want {
		ti := m.TaskIndex(job + ".t.0")
		var got []string
		for n := range m.Nodes {
			if snap.View.Eligible(ti, n) {
				got = append(got, m.Nodes[n].Name)
			}
		}
		if strings.Join(got, " ") != nodes {
			t.Errorf("%s: eligible nodes %v, want %s", job, got, nodes)
		}
	}
	if len(snap.Stranded) != 0 {
		t.Errorf("stranded %v, want none", snap.Stranded)
	}
	// n4 is online and not heard from: the loop plans around it while
	// there are VMs (Snapshot.silence), not when there are none.
	if strings.Join(snap.Unheard, " ") != "n4" {
		t.Errorf("unheard %v, want n4", snap.Unheard)
	}
	procOnly, _ := capState(map[string]capTask{"proc": {"process", store.TaskWaiting, "", store.RAMTailUnknown}})
	procOnly.Nodes["n4"] = s.Nodes["n4"]
	if u := BuildSnapshot(procOnly, 1000, reports).Unheard; len(u) != 0 {
		t.Errorf("unheard %v without VMs, want none", u)
	}
	// The planner gets the same filter as continuous fences.
	prob, err := snap.Problem(Priority{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range prob.Constraints {
		f, ok := c.(cluster.Fence)
		if !ok {
			continue
		}
		if !f.Continuous {
			t.Errorf("fence %+v is not continuous: a pivot could pass through a node that refuses the task", f)
		}
		for _, ti := range f.Tasks {
			var ns []string
			for _, n := range f.Nodes {
				ns = append(ns, m.Nodes[n].Name)
			}
			if job := m.Tasks[ti].Job; strings.Join(ns, " ") != want[job] {
				t.Errorf("%s fenced to %v, want %s", job, ns, want[job])
			}
		}
	}
	_, p := solveChecked(t, snap)
	for _, a := range p.Actions {
		if a.Kind == cluster.Boot || a.Kind == cluster.Resume || a.Kind == cluster.Migrate {
			job := m.Tasks[a.Task].Job
			if to := m.Nodes[a.To].Name; !strings.Contains(want[job], to) {
				t.Errorf("%s of %s to %s, which cannot take it", a.Kind, job, to)
			}
		}
	}
}

// A guest without the RAM tail on a node being drained has nowhere to go
// when the only other node has QEMU 7.2: it is suspended (not migrated to
// the node that would refuse it), the snapshot says why, and once a node
// with QEMU 10 joins it moves there.
func TestDrainedTaillessGuestIsNotSentToOldQEMU(t *testing.T) {
	s, reports := capState(map[string]capTask{"vm": {"qemu", store.TaskRunning, "n1", store.RAMTailWithout}})
	s.Nodes["n1"].Status, s.Nodes["n1"].Drained = store.NodeDraining, true

	// Without the filter the planner moves it to n2 (the test would
	// catch a filter that does nothing).
	prob, p := solveChecked(t, BuildSnapshot(s, 1000, nil))
	if got := where(prob, p, "vm.t.0"); got != "n2" {
		t.Fatalf("unfiltered: vm ends on %q, want n2 (the scenario no longer tests the filter)", got)
	}

	snap := BuildSnapshot(s, 1000, reports)
	why := snap.Stranded["vm.t.0"]
	if !strings.Contains(why, "no RAM tail") || !strings.Contains(why, "n2 has QEMU 7.2.22") {
		t.Fatalf("stranded reason %q, want it to name the missing tail and n2's QEMU", why)
	}
	_, p = solveChecked(t, snap)
	if len(p.Actions) != 1 || p.Actions[0].Kind != cluster.Suspend {
		t.Fatalf("plan %v, want one suspend", p.Actions)
	}

	// With a 60 s drain deadline it keeps running there meanwhile.
	s.Nodes["n1"].DrainDeadline = 1060 * 1e9
	if _, p = solveChecked(t, BuildSnapshot(s, 1000, reports)); len(p.Actions) != 0 {
		t.Fatalf("before the deadline: plan %v, want none", p.Actions)
	}

	// A node with QEMU 10 joins: the guest moves there.
	s.Nodes["n4"] = &store.Node{Name: "n4", Capacity: store.Resources{CPUMilli: 4000, MemoryBytes: 8 << 30}, Status: store.NodeOnline}
	reports["n4"] = api.NodeInfo{Name: "n4", Drivers: []string{"process", "qemu"}, QEMUVersion: "10.0.2"}
	snap = BuildSnapshot(s, 1000, reports)
	if len(snap.Stranded) != 0 {
		t.Fatalf("stranded %v with n4 there", snap.Stranded)
	}
	prob, p = solveChecked(t, snap)
	if got := where(prob, p, "vm.t.0"); got != "n4" {
		t.Fatalf("vm ends on %q, want n4: %v", got, p.Actions)
	}
}

// Priority fits a job only onto nodes that can take its tasks: with the
// QEMU 10 node full, a sleeping guest without the tail stays asleep
// rather than being planned onto the QEMU 7.2 node with room (which would
// refuse it), and the other jobs still get their plan.
func TestPriorityHonoursTheCapabilityFilter(t *testing.T) {
	s, reports := capState(map[string]capTask{
		"vm":   {"qemu", store.TaskSleeping, "n2", store.RAMTailWithout},
		"big":  {"process", store.TaskRunning, "n1", store.RAMTailUnknown},
		"proc": {"process", store.TaskWaiting, "", store.RAMTailUnknown},
	})
	s.Tasks["big.t.0"].Demand.CPUMilli = 4000
	s.Jobs["big"].Priority = 9
	snap := BuildSnapshot(s, 1000, reports)
	if len(snap.Stranded) != 0 {
		t.Fatalf("stranded %v: n1 takes the guest, it is only full", snap.Stranded)
	}
	if got := wantOf(t, snap, "vm.t.0"); got != cluster.Sleeping {
		t.Fatalf("vm wanted %v, want sleeping (n1 is full, n2 refuses it)", got)
	}
	prob, p := solveChecked(t, snap)
	if got := where(prob, p, "proc.t.0"); got == "" {
		t.Fatalf("the process job was not started: %v", p.Actions)
	}
}

// wantEach is a policy that wants, for each task, what want says.
type wantEach struct {
	name string
	want func(m *cluster.Model, t int) cluster.TaskState
}

func (w wantEach) Name() string { return w.name }
func (w wantEach) Decide(v *policy.View) (policy.Decision, error) {
	want := make([]cluster.TaskState, len(v.Model.Tasks))
	for i := range want {
		want[i] = w.want(v.Model, i)
	}
	return policy.Decision{Want: want}, nil
}

// runAll is a policy that knows nothing of the capability filter: it wants
// every task running.
var runAll = wantEach{"run-all", func(*cluster.Model, int) cluster.TaskState { return cluster.Running }}

// A policy that ignores View.Eligible cannot make the planner fail for a
// task nothing can take: that task's job sleeps (or waits) and the others
// get their plan.
func TestStrandedJobSleepsWhateverThePolicy(t *testing.T) {
	s, reports := capState(map[string]capTask{
		"vm":   {"qemu", store.TaskSleeping, "n2", store.RAMTailWithout},
		"new":  {"qemu", store.TaskWaiting, "", store.RAMTailUnknown},
		"proc": {"process", store.TaskWaiting, "", store.RAMTailUnknown},
	})
	reports["n1"] = api.NodeInfo{Name: "n1", Drivers: []string{"process"}} // no QEMU 9+ node left
	snap := BuildSnapshot(s, 1000, reports)
	if _, ok := snap.Stranded["vm.t.0"]; !ok || len(snap.Stranded) != 1 {
		t.Fatalf("stranded %v, want vm.t.0 only (new boots on n2)", snap.Stranded)
	}
	prob, p := solveWith(t, snap, runAll)
	for task, node := range map[string]string{"vm.t.0": "", "new.t.0": "n2", "proc.t.0": "?"} {
		got := where(prob, p, task)
		if node == "?" && got == "" || node != "?" && got != node {
			t.Errorf("%s ends running on %q, want %q", task, got, node)
		}
	}
}
