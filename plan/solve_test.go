package plan_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/gen"
	"github.com/ferrycluster/ferry/plan/verify"
	"pgregory.net/rapid"
)

// solveAndVerify solves p and runs the plan through the independent
// verifier. It returns the plan, or nil when the planner found a conflict.
// tb is what testing.TB and *rapid.T share.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

func solveAndVerify(t tb, p *plan.Problem, seed int64) *plan.Plan {
	t.Helper()
	pl, err := plan.Solve(context.Background(), p, plan.Options{Seed: seed})
	if err != nil {
		var ce *plan.ConflictError
		if !errors.As(err, &ce) || !errors.Is(err, plan.ErrNoSolution) {
			t.Fatalf("Solve: %v (not a ConflictError)", err)
		}
		return nil
	}
	if err := verify.Check(p, pl); err != nil {
		t.Fatalf("plan fails verification: %v\nplan:\n%s", err, dump(p, pl))
	}
	if pl.Stats.LowerBound > pl.MTTR() {
		t.Fatalf("lower bound %d above the plan's MTTR %d", pl.Stats.LowerBound, pl.MTTR())
	}
	return pl
}

func dump(p *plan.Problem, pl *plan.Plan) string {
	m := p.Model
	s := ""
	for _, n := range m.Nodes {
		s += fmt.Sprintf("node %s %s cap %v\n", n.Name, n.State, n.Capacity)
	}
	for _, t := range m.Tasks {
		node := "-"
		if t.Node >= 0 {
			node = m.Nodes[t.Node].Name
		}
		s += fmt.Sprintf("task %s %s on %s demand %v dur %v\n", t.Name, t.State, node, t.Demand, t.Durations)
	}
	for i, c := range p.Constraints {
		s += fmt.Sprintf("constraint %d: %s %+v\n", i, c.Kind(), c)
	}
	for _, a := range pl.Actions {
		s += fmt.Sprintf("  [%d,%d) %s task=%d node=%d from=%d to=%d\n", a.Start, a.End, a.Kind, a.Task, a.Node, a.From, a.To)
	}
	s += fmt.Sprintf("MTTR %d LB %d\n", pl.MTTR(), pl.Stats.LowerBound)
	return s
}

// genProblem draws a small random problem: up to maxN nodes and maxT tasks,
// one or two resources, random states and durations, and (when withCons) a
// few constraints of the catalog.
func genProblem(t *rapid.T, maxN, maxT int, withCons bool) *plan.Problem {
	return genProblemN(t, maxN, maxT, withCons, 3)
}

// genProblemN is genProblem with up to maxC constraints of the catalog.
func genProblemN(t *rapid.T, maxN, maxT int, withCons bool, maxC int) *plan.Problem {
	nR := rapid.IntRange(1, 2).Draw(t, "resources")
	m := &cluster.Model{}
	for r := 0; r < nR; r++ {
		m.Resources = append(m.Resources, fmt.Sprintf("r%d", r))
	}
	nN := rapid.IntRange(1, maxN).Draw(t, "nodes")
	for n := 0; n < nN; n++ {
		node := cluster.Node{Name: fmt.Sprintf("n%d", n)}
		if rapid.IntRange(0, 5).Draw(t, "offline") == 0 {
			node.State = cluster.NodeOffline
		}
		for r := 0; r < nR; r++ {
			node.Capacity = append(node.Capacity, int64(rapid.IntRange(2, 8).Draw(t, "cap")))
		}
		m.Nodes = append(m.Nodes, node)
	}
	var online []int
	for n := range m.Nodes {
		if m.Nodes[n].State == cluster.NodeOnline {
			online = append(online, n)
		}
	}
	nT := rapid.IntRange(0, maxT).Draw(t, "tasks")
	for i := 0; i < nT; i++ {
		task := cluster.Task{Name: fmt.Sprintf("t%d", i), Node: cluster.NoNode}
		for r := 0; r < nR; r++ {
			task.Demand = append(task.Demand, int64(rapid.IntRange(0, 4).Draw(t, "demand")))
		}
		st := cluster.TaskState(rapid.IntRange(0, 2).Draw(t, "state"))
		if st != cluster.Ready && len(online) > 0 {
			task.State = st
			task.Node = online[rapid.IntRange(0, len(online)-1).Draw(t, "on")]
		}
		if rapid.Bool().Draw(t, "durs") {
			task.Durations = map[cluster.ActionKind]int64{}
			for _, k := range []cluster.ActionKind{cluster.Migrate, cluster.Boot, cluster.Suspend, cluster.Resume, cluster.Shutdown} {
				task.Durations[k] = int64(rapid.IntRange(1, 6).Draw(t, "dur"))
			}
		}
		m.Tasks = append(m.Tasks, task)
	}
	p := &plan.Problem{Model: m}
	// Wanted states.
	for i := range m.Tasks {
		switch rapid.IntRange(0, 5).Draw(t, "want") {
		case 0:
			p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Running, Tasks: []int{i}})
		case 1:
			switch m.Tasks[i].State {
			case cluster.Running:
				p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Sleeping, Tasks: []int{i}})
			case cluster.Sleeping, cluster.Ready:
				p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Running, Tasks: []int{i}})
			}
		case 2:
			if m.Tasks[i].State == cluster.Running && rapid.Bool().Draw(t, "kill") {
				p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Killed, Tasks: []int{i}})
			} else if m.Tasks[i].State == cluster.Running {
				p.Constraints = append(p.Constraints, cluster.StateConstraint{State: cluster.Ready, Tasks: []int{i}})
			}
		}
	}
	if !withCons || nT == 0 {
		return p
	}
	tasks := func(label string) []int {
		k := rapid.IntRange(1, min(3, nT)).Draw(t, label+"n")
		var ts []int
		seen := map[int]bool{}
		for len(ts) < k {
			x := rapid.IntRange(0, nT-1).Draw(t, label)
			if !seen[x] {
				seen[x] = true
				ts = append(ts, x)
			}
		}
		return ts
	}
	nodes := func(label string) []int {
		k := rapid.IntRange(1, nN).Draw(t, label+"n")
		var ns []int
		seen := map[int]bool{}
		for len(ns) < k {
			x := rapid.IntRange(0, nN-1).Draw(t, label)
			if !seen[x] {
				seen[x] = true
				ns = append(ns, x)
			}
		}
		return ns
	}
	nc := rapid.IntRange(0, maxC).Draw(t, "constraints")
	for i := 0; i < nc; i++ {
		cont := rapid.Bool().Draw(t, "continuous")
		var c cluster.Constraint
		switch rapid.IntRange(0, 15).Draw(t, "kind") {
		case 0:
			c = cluster.Spread{Tasks: tasks("spread"), Continuous: cont}
		case 1:
			c = cluster.Ban{Tasks: tasks("ban"), Nodes: nodes("ban"), Continuous: cont}
		case 2:
			c = cluster.Fence{Tasks: tasks("fence"), Nodes: nodes("fence"), Continuous: cont}
		case 3:
			c = cluster.Gather{Tasks: tasks("gather"), Continuous: cont}
		case 4:
			ns := nodes("among")
			h := len(ns) / 2
			groups := [][]int{ns}
			if h > 0 {
				groups = [][]int{ns[:h], ns[h:]}
			}
			c = cluster.Among{Tasks: tasks("among"), Groups: groups, Continuous: cont}
		case 5:
			ts := tasks("split")
			h := len(ts) / 2
			c = cluster.Split{Groups: [][]int{ts[:h], ts[h:]}, Continuous: cont}
		case 6:
			c = cluster.Lonely{Tasks: tasks("lonely"), Continuous: cont}
		case 7:
			c = cluster.Root{Tasks: tasks("root")}
		case 8:
			c = cluster.Quarantine{Nodes: nodes("quarantine")}
		case 9:
			c = cluster.ResourceCapacity{Nodes: nodes("rc"), Resource: "r0", Amount: int64(rapid.IntRange(0, 12).Draw(t, "amount")), Continuous: cont}
		case 10:
			c = cluster.RunningCapacity{Nodes: nodes("runc"), Amount: rapid.IntRange(0, 4).Draw(t, "amount"), Continuous: cont}
		case 11:
			c = cluster.MaxOnline{Nodes: nodes("maxon"), Amount: rapid.IntRange(0, nN).Draw(t, "amount"), Continuous: cont}
		case 12:
			c = cluster.Overbook{Nodes: nodes("ob"), Resource: "r0", Ratio: float64(rapid.IntRange(10, 20).Draw(t, "ratio")) / 10, Continuous: cont}
		case 13:
			c = cluster.Preserve{Tasks: tasks("preserve"), Resource: "r0", Amount: int64(rapid.IntRange(0, 4).Draw(t, "amount"))}
		case 14:
			c = cluster.Seq{Tasks: tasks("seq")}
		case 15:
			c = cluster.NodeStateConstraint{State: cluster.NodeState(rapid.IntRange(0, 1).Draw(t, "nstate")), Nodes: nodes("nstate")}
		}
		p.Constraints = append(p.Constraints, c)
	}
	return p
}

// Every plan the planner returns passes the independent verifier.
func TestSolvePlansAreViable(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := genProblem(t, 5, 10, true)
		solveAndVerify(t, p, 1)
	})
}

// Larger problems with many constraints: still every plan is viable.
func TestSolveManyConstraints(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := genProblemN(t, 12, 40, true, 12)
		solveAndVerify(t, p, 1)
	})
}

// Without constraints beyond capacity and states, a problem whose final
// state fits is always solved.
func TestSolveCapacityOnly(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := genProblem(t, 4, 8, false)
		solveAndVerify(t, p, 1)
	})
}

// Malformed problems are rejected with cluster.ErrInvalid naming the
// element, and change nothing.
func TestSolveRejectsMalformedProblems(t *testing.T) {
	base := func() *plan.Problem {
		return &plan.Problem{Model: world("n1:4 n2:4", "a:1@n1 b:1@-")}
	}
	cases := []struct {
		name string
		c    cluster.Constraint
		want string
	}{
		{"task out of range", cluster.Spread{Tasks: []int{0, 7}}, "task index 7 out of range"},
		{"node out of range", cluster.Ban{Tasks: []int{0}, Nodes: []int{-1}}, "node index -1 out of range"},
		{"unknown resource", cluster.Preserve{Tasks: []int{0}, Resource: "gpu", Amount: 1}, `unknown resource "gpu"`},
		{"negative amount", cluster.RunningCapacity{Nodes: []int{0}, Amount: -1}, "negative amount"},
		{"bad ratio", cluster.Overbook{Nodes: []int{0}, Resource: "cpu", Ratio: 0.5}, "ratio 0.5"},
		{"nil constraint", nil, "constraint 0 is nil"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := base()
			p.Constraints = []cluster.Constraint{c.c}
			_, err := plan.Solve(context.Background(), p, plan.Options{})
			if !errors.Is(err, cluster.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrInvalid mentioning %q", err, c.want)
			}
		})
	}
	if _, err := plan.Solve(context.Background(), &plan.Problem{}, plan.Options{}); !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("nil model: got %v", err)
	}
	p := base()
	p.Model.Tasks[0].Node = 9
	if _, err := plan.Solve(context.Background(), p, plan.Options{}); !errors.Is(err, cluster.ErrInvalid) {
		t.Fatalf("invalid model: got %v", err)
	}
}

// Problems without a viable plan get a *ConflictError naming the
// constraint, node or resource.
func TestSolveNamesTheConflict(t *testing.T) {
	cases := []struct {
		name  string
		p     *plan.Problem
		check func(ce *plan.ConflictError) bool
	}{
		{"no room", &plan.Problem{Model: world("n1:4", "a:3@n1 b:3@-"), Constraints: []cluster.Constraint{
			cluster.StateConstraint{State: cluster.Running, Tasks: []int{1}}}},
			func(ce *plan.ConflictError) bool { return ce.Resource == "cpu" }},
		{"fence to nowhere", &plan.Problem{Model: world("n1:4 n2:4", "a:1@n1"), Constraints: []cluster.Constraint{
			cluster.Fence{Tasks: []int{0}, Nodes: []int{1}},
			cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{1}}}},
			func(ce *plan.ConflictError) bool { return strings.HasPrefix(ce.Constraint, "fence") }},
		{"two wanted states", &plan.Problem{Model: world("n1:4", "a:1@n1"), Constraints: []cluster.Constraint{
			cluster.StateConstraint{State: cluster.Ready, Tasks: []int{0}},
			cluster.StateConstraint{State: cluster.Sleeping, Tasks: []int{0}}}},
			func(ce *plan.ConflictError) bool { return ce.Constraint == "sleeping" }},
		{"root on a draining node", &plan.Problem{Model: world("n1:4 n2:4", "a:1@n1"), Constraints: []cluster.Constraint{
			cluster.Root{Tasks: []int{0}},
			cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{0}}}},
			func(ce *plan.ConflictError) bool { return ce.Node == "n1" }},
		{"too many online", &plan.Problem{Model: world("n1:4 n2:4", "a:1@n1 b:1@n2"), Constraints: []cluster.Constraint{
			cluster.MaxOnline{Nodes: []int{0, 1}, Amount: 1},
			cluster.NodeStateConstraint{State: cluster.NodeOnline, Nodes: []int{0, 1}}}},
			func(ce *plan.ConflictError) bool { return ce.Constraint == "maxOnline" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := plan.Solve(context.Background(), c.p, plan.Options{})
			var ce *plan.ConflictError
			if !errors.As(err, &ce) || !errors.Is(err, plan.ErrNoSolution) {
				t.Fatalf("got %v, want a ConflictError", err)
			}
			if !c.check(ce) {
				t.Fatalf("conflict does not name the culprit: %+v", ce)
			}
		})
	}
}

// The same problem and seed give the same plan.
func TestSolveIsDeterministic(t *testing.T) {
	p, err := gen.Generate(gen.Config{Nodes: 60, VMs: 360, Constrained: 0.5, Scenario: gen.NodeReboot, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	a, err := plan.Solve(context.Background(), p, plan.Options{Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	b, err := plan.Solve(context.Background(), p, plan.Options{Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.Actions, b.Actions) {
		t.Fatal("two solves of one problem differ")
	}
	if err := verify.Check(p, a); err != nil {
		t.Fatal(err)
	}
}

// A clock past the deadline still yields a viable plan (the first one
// found), marked TimedOut; a cancelled context yields its error.
func TestSolveHonoursTimeoutAndContext(t *testing.T) {
	p := &plan.Problem{Model: world("n1:4 n2:4 n3:4", "a:3@n1 b:3@n2"), Constraints: []cluster.Constraint{
		cluster.Fence{Tasks: []int{0}, Nodes: []int{1}},
		cluster.Fence{Tasks: []int{1}, Nodes: []int{0}},
	}}
	now := time.Unix(0, 0)
	clock := func() time.Time { now = now.Add(time.Hour); return now }
	pl, err := plan.Solve(context.Background(), p, plan.Options{Timeout: time.Second, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if !pl.Stats.TimedOut {
		t.Error("Stats.TimedOut not set")
	}
	if err := verify.Check(p, pl); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := plan.Solve(ctx, p, plan.Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: got %v", err)
	}
}

// Generated TDSC-like instances (both scenarios, every constrained
// fraction) are solved and verified; the MTTR stays within 1.15 of the
// lower bound.
func TestSolveGeneratedInstances(t *testing.T) {
	for _, sc := range []gen.Scenario{gen.LoadIncrease, gen.NodeReboot} {
		for _, c := range []float64{0, 0.33, 0.66, 1} {
			p, err := gen.Generate(gen.Config{Nodes: 200, VMs: 1200, Constrained: c, Scenario: sc, Seed: 11})
			if err != nil {
				t.Fatal(err)
			}
			pl := solveAndVerify(t, p, 1)
			if pl == nil {
				t.Fatalf("%s c=%.2f: no plan", sc, c)
			}
			if lb := pl.Stats.LowerBound; lb > 0 && float64(pl.MTTR()) > 1.15*float64(lb) {
				t.Errorf("%s c=%.2f: MTTR %d above 1.15 x lower bound %d", sc, c, pl.MTTR(), lb)
			}
		}
	}
}

// The objectives pick different evictions from an overloaded node: with
// a, b (3 cpu, migration 1) and c (5 cpu, migration 5) on a node of 6,
// 5 cpu must leave: MinMTTR moves a and b (MTTR 2), MinMigrations moves c.
func TestSolveObjectives(t *testing.T) {
	m := world("n1:6 n2:8", "a:3@n1 b:3@n1 c:5@n1")
	m.Tasks[0].Durations[cluster.Migrate] = 1
	m.Tasks[1].Durations[cluster.Migrate] = 1
	m.Tasks[2].Durations[cluster.Migrate] = 5
	for _, c := range []struct {
		obj       plan.Objective
		mttr      int64
		migration int
	}{{plan.MinMTTR, 2, 2}, {plan.MinMigrations, 5, 1}} {
		p := &plan.Problem{Model: m, Objective: c.obj}
		pl, err := plan.Solve(context.Background(), p, plan.Options{LiveOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := verify.Check(p, pl); err != nil {
			t.Fatal(err)
		}
		if pl.MTTR() != c.mttr || pl.Migrations() != c.migration {
			t.Errorf("%s: want MTTR %d with %d migrations, got\n%s", c.obj, c.mttr, c.migration, render(m, pl))
		}
	}
}

// Degenerate constraints (empty sets, empty groups, duplicates) never make
// Solve panic: it returns a verified plan, a conflict, or ErrInvalid.
func TestSolveDegenerateConstraints(t *testing.T) {
	cs := []cluster.Constraint{
		cluster.Among{Tasks: []int{0}, Groups: [][]int{{}}},
		cluster.Among{Tasks: []int{0, 0}, Groups: [][]int{{0}, {0, 1}}},
		cluster.Split{},
		cluster.Split{Groups: [][]int{{}, {0}}},
		cluster.SplitAmong{},
		cluster.SplitAmong{TaskGroups: [][]int{{0}}},
		cluster.Spread{},
		cluster.Spread{Tasks: []int{0, 0}, Continuous: true},
		cluster.Gather{Tasks: []int{0, 0}, Continuous: true},
		cluster.Lonely{},
		cluster.RunningCapacity{},
		cluster.ResourceCapacity{Resource: "cpu"},
		cluster.MaxOnline{},
		cluster.Overbook{Resource: "cpu", Ratio: 1},
		cluster.Seq{Tasks: []int{0, 1, 0}},
		cluster.NoDelay{Task: 1},
		cluster.Root{},
		cluster.Quarantine{},
		cluster.StateConstraint{State: cluster.Running},
		cluster.NodeStateConstraint{State: cluster.NodeOffline},
		cluster.Fence{Tasks: []int{0}},
		cluster.Ban{},
	}
	for _, c := range cs {
		for _, extra := range []cluster.Constraint{nil, cluster.Ban{Tasks: []int{0, 1}, Nodes: []int{0}}} {
			p := &plan.Problem{Model: world("n1:4 n2:4", "a:1@n1 b:1@n1"), Constraints: []cluster.Constraint{c}}
			if extra != nil {
				p.Constraints = append(p.Constraints, extra)
			}
			_, err := plan.Solve(context.Background(), p, plan.Options{})
			switch {
			case err == nil:
				solveAndVerify(t, p, 1)
			case errors.Is(err, plan.ErrNoSolution), errors.Is(err, cluster.ErrInvalid):
			default:
				t.Errorf("%s %+v: unexpected error %v", c.Kind(), c, err)
			}
		}
	}
}
