package reference_test

import (
	"errors"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/reference"
	"github.com/ferrycluster/ferry/plan/verify"
)

func nodes(n int, capa int64) []cluster.Node {
	out := make([]cluster.Node, n)
	for i := range out {
		out[i] = cluster.Node{Name: string(rune('A' + i)), Capacity: []int64{capa}}
	}
	return out
}

func solve(t *testing.T, p *plan.Problem) *reference.Result {
	t.Helper()
	r, err := reference.Solve(p, 200000)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.Check(p, r.Plan); err != nil {
		t.Fatalf("reference plan fails the verifier: %v\n%+v", err, r.Plan.Actions)
	}
	if r.MTTR != r.Plan.MTTR() {
		t.Fatalf("reported MTTR %d, plan's %d", r.MTTR, r.Plan.MTTR())
	}
	return r
}

// A swap with no room: a must leave A for B, b must leave B for A; a pivot
// (third node or suspend/resume) breaks the cycle. 1+2+3 = 6.
func TestSwapNeedsPivot(t *testing.T) {
	for _, n := range []int{2, 3} {
		m := &cluster.Model{Resources: []string{"cpu"}, Nodes: nodes(n, 2), Tasks: []cluster.Task{
			{Name: "a", State: cluster.Running, Node: 0, Demand: []int64{2}},
			{Name: "b", State: cluster.Running, Node: 1, Demand: []int64{2}},
		}}
		p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{
			cluster.Fence{Tasks: []int{0}, Nodes: []int{1}},
			cluster.Fence{Tasks: []int{1}, Nodes: []int{0}},
		}}
		r := solve(t, p)
		if r.MTTR != 6 || len(r.Plan.Actions) != 3 {
			t.Fatalf("%d nodes: MTTR %d with %+v, want 6 with 3 actions", n, r.MTTR, r.Plan.Actions)
		}
	}
}

// Drain B: two tasks leave (durations 2 and 3) in parallel, then B shuts
// down (1): 2 + 3 + 4 = 9 (suspending b and resuming it elsewhere costs more).
func TestDrain(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu"}, Nodes: nodes(3, 4), Tasks: []cluster.Task{
		{Name: "a", State: cluster.Running, Node: 1, Demand: []int64{2}, Durations: map[cluster.ActionKind]int64{cluster.Migrate: 2}},
		{Name: "b", State: cluster.Running, Node: 1, Demand: []int64{2}, Durations: map[cluster.ActionKind]int64{cluster.Migrate: 3, cluster.Suspend: 2, cluster.Resume: 2}},
		{Name: "c", State: cluster.Running, Node: 0, Demand: []int64{3}},
	}}
	p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{1}}}}
	r := solve(t, p)
	if r.MTTR != 9 {
		t.Fatalf("MTTR %d, want 9: %+v", r.MTTR, r.Plan.Actions)
	}
}

// Boot a ready task on a node that must boot first: 2 (bootNode) + 3.
func TestBootOnBootedNode(t *testing.T) {
	ns := nodes(2, 2)
	ns[1].State = cluster.NodeOffline
	ns[1].Durations = map[cluster.ActionKind]int64{cluster.BootNode: 2}
	m := &cluster.Model{Resources: []string{"cpu"}, Nodes: ns, Tasks: []cluster.Task{
		{Name: "a", State: cluster.Running, Node: 0, Demand: []int64{2}},
		{Name: "b", State: cluster.Ready, Node: cluster.NoNode, Demand: []int64{1}},
	}}
	p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{cluster.StateConstraint{State: cluster.Running, Tasks: []int{1}}}}
	r := solve(t, p)
	if r.MTTR != 5 {
		t.Fatalf("MTTR %d, want 5: %+v", r.MTTR, r.Plan.Actions)
	}
}

func TestInfeasible(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu"}, Nodes: nodes(2, 2), Tasks: []cluster.Task{
		{Name: "a", State: cluster.Running, Node: 0, Demand: []int64{2}},
	}}
	p := &plan.Problem{Model: m, Constraints: []cluster.Constraint{cluster.Ban{Tasks: []int{0}, Nodes: []int{0, 1}}}}
	if _, err := reference.Solve(p, 100000); !errors.Is(err, reference.ErrInfeasible) {
		t.Fatalf("want ErrInfeasible, got %v", err)
	}
}

func TestNothingToDo(t *testing.T) {
	m := &cluster.Model{Resources: []string{"cpu"}, Nodes: nodes(2, 2), Tasks: []cluster.Task{
		{Name: "a", State: cluster.Running, Node: 0, Demand: []int64{2}},
	}}
	if r := solve(t, &plan.Problem{Model: m}); r.MTTR != 0 || len(r.Plan.Actions) != 0 {
		t.Fatalf("want an empty plan, got %+v", r.Plan.Actions)
	}
}
