package plan_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/btrplace"
	"github.com/ferrycluster/ferry/plan/reference"
	"github.com/ferrycluster/ferry/plan/verify"
	"pgregory.net/rapid"
)

// tinyProblem generates problems with at most 4 nodes and 8 tasks: random
// capacities, states, placements that fit, durations from attributes, and a
// few constraints that force work (state changes, bans from the current
// node, drains, spreads, preserves, capacity caps, ...). The origin is
// always a valid model; the problem itself may have no solution.
var tinyProblem = rapid.Custom(func(t *rapid.T) *plan.Problem {
	nN := rapid.IntRange(2, reference.MaxNodes).Draw(t, "nodes")
	nT := rapid.IntRange(1, reference.MaxTasks).Draw(t, "tasks")
	twoRes := rapid.IntRange(0, 3).Draw(t, "tworesources") == 0
	m := &cluster.Model{Resources: []string{"cpu"}}
	if twoRes {
		m.Resources = append(m.Resources, "mem")
	}
	for n := 0; n < nN; n++ {
		nd := cluster.Node{Name: fmt.Sprintf("N%d", n), Capacity: []int64{int64(rapid.IntRange(2, 6).Draw(t, "cap"))}}
		if twoRes {
			nd.Capacity = append(nd.Capacity, int64(rapid.IntRange(2, 6).Draw(t, "mcap")))
		}
		if n > 0 && rapid.IntRange(0, 5).Draw(t, "offline") == 0 {
			nd.State = cluster.NodeOffline
			nd.Durations = map[cluster.ActionKind]int64{cluster.BootNode: int64(rapid.IntRange(1, 3).Draw(t, "bootnode"))}
		}
		m.Nodes = append(m.Nodes, nd)
	}
	used := make([][]int64, nN)
	for n := range used {
		used[n] = make([]int64, len(m.Resources))
	}
	fits := func(n int, d []int64) bool {
		if m.Nodes[n].State != cluster.NodeOnline {
			return false
		}
		for r := range d {
			if used[n][r]+d[r] > m.Nodes[n].Capacity[r] {
				return false
			}
		}
		return true
	}
	for i := 0; i < nT; i++ {
		tk := cluster.Task{Name: fmt.Sprintf("t%d", i), Node: cluster.NoNode, Demand: []int64{int64(rapid.IntRange(1, 3).Draw(t, "cpu"))}}
		if twoRes {
			tk.Demand = append(tk.Demand, int64(rapid.IntRange(0, 3).Draw(t, "mem")))
		}
		tk.Durations = map[cluster.ActionKind]int64{cluster.Migrate: int64(rapid.IntRange(1, 4).Draw(t, "migrate"))}
		if rapid.IntRange(0, 2).Draw(t, "moredurations") == 0 {
			for _, k := range []cluster.ActionKind{cluster.Boot, cluster.Suspend, cluster.Resume, cluster.Shutdown, cluster.Kill} {
				tk.Durations[k] = int64(rapid.IntRange(1, 3).Draw(t, "dur"))
			}
		}
		switch rapid.IntRange(0, 9).Draw(t, "state") {
		case 0, 1:
			tk.State = cluster.Ready
		case 2:
			n := rapid.IntRange(0, nN-1).Draw(t, "sleepnode")
			if m.Nodes[n].State == cluster.NodeOnline {
				tk.State, tk.Node = cluster.Sleeping, n
			}
		default:
			n := rapid.IntRange(0, nN-1).Draw(t, "node")
			for k := 0; k < nN; k++ {
				if c := (n + k) % nN; fits(c, tk.Demand) {
					tk.State, tk.Node = cluster.Running, c
					for r := range tk.Demand {
						used[c][r] += tk.Demand[r]
					}
					break
				}
			}
		}
		m.Tasks = append(m.Tasks, tk)
	}
	p := &plan.Problem{Model: m}
	task := func(label string) int { return rapid.IntRange(0, nT-1).Draw(t, label) }
	someNodes := func(label string) []int {
		var ns []int
		for n := 0; n < nN; n++ {
			if rapid.Bool().Draw(t, label) {
				ns = append(ns, n)
			}
		}
		return ns
	}
	someTasks := func(label string, min int) []int {
		seen := map[int]bool{}
		var ts []int
		k := rapid.IntRange(min, min+1).Draw(t, label+"n")
		for i := 0; i < k*2 && len(ts) < k; i++ {
			if x := task(label); !seen[x] {
				seen[x] = true
				ts = append(ts, x)
			}
		}
		return ts
	}
	nc := rapid.IntRange(0, 3).Draw(t, "constraints")
	for i := 0; i < nc; i++ {
		var c cluster.Constraint
		switch rapid.IntRange(0, 15).Draw(t, "kind") {
		case 0, 1: // a state change
			x := task("st")
			want := map[cluster.TaskState][]cluster.TaskState{
				cluster.Ready:    {cluster.Running, cluster.Killed},
				cluster.Running:  {cluster.Sleeping, cluster.Ready, cluster.Killed},
				cluster.Sleeping: {cluster.Running, cluster.Killed},
			}[m.Tasks[x].State]
			if len(want) == 0 {
				continue
			}
			c = cluster.StateConstraint{State: rapid.SampledFrom(want).Draw(t, "want"), Tasks: []int{x}}
		case 2, 3: // leave the current node
			x := task("ban")
			if m.Tasks[x].State != cluster.Running {
				continue
			}
			c = cluster.Ban{Tasks: []int{x}, Nodes: []int{m.Tasks[x].Node}, Continuous: rapid.Bool().Draw(t, "cont")}
		case 4:
			c = cluster.Fence{Tasks: []int{task("fence")}, Nodes: someNodes("fencenodes"), Continuous: rapid.Bool().Draw(t, "cont")}
		case 5, 6:
			c = cluster.Spread{Tasks: someTasks("spread", 2), Continuous: rapid.Bool().Draw(t, "cont")}
		case 7: // drain a node
			c = cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{rapid.IntRange(0, nN-1).Draw(t, "drain")}}
		case 8:
			c = cluster.NodeStateConstraint{State: cluster.NodeOnline, Nodes: []int{rapid.IntRange(0, nN-1).Draw(t, "online")}}
		case 9:
			c = cluster.Preserve{Tasks: []int{task("preserve")}, Resource: "cpu", Amount: int64(rapid.IntRange(1, 4).Draw(t, "amount"))}
		case 10:
			c = cluster.Gather{Tasks: someTasks("gather", 2)}
		case 11:
			c = cluster.ResourceCapacity{Nodes: someNodes("rcnodes"), Resource: "cpu", Amount: int64(rapid.IntRange(2, 8).Draw(t, "rcamount")), Continuous: rapid.Bool().Draw(t, "cont")}
		case 12:
			c = cluster.RunningCapacity{Nodes: someNodes("runnodes"), Amount: rapid.IntRange(1, 3).Draw(t, "runamount")}
		case 13:
			c = cluster.Lonely{Tasks: someTasks("lonely", 1)}
		case 14:
			c = cluster.Among{Tasks: someTasks("among", 2), Groups: [][]int{someNodes("g1"), someNodes("g2")}}
		case 15:
			var g1, g2 []int
			for _, x := range someTasks("split", 2) {
				if len(g1) == 0 || rapid.Bool().Draw(t, "side") {
					g1 = append(g1, x)
				} else {
					g2 = append(g2, x)
				}
			}
			c = cluster.Split{Groups: [][]int{g1, g2}}
		}
		p.Constraints = append(p.Constraints, c)
	}
	return p
})

func solveTiny(p *plan.Problem) (*plan.Plan, error) {
	return plan.Solve(context.Background(), p, plan.Options{Timeout: 5 * time.Second, Seed: 7})
}

// TestPlansPassTheVerifier: every plan the planner returns on a random tiny
// problem passes plan/verify (rapid shrinks a failure to a small problem).
func TestPlansPassTheVerifier(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		p := tinyProblem.Draw(rt, "problem")
		pl, err := solveTiny(p)
		if err != nil {
			if !errors.Is(err, plan.ErrNoSolution) {
				rt.Fatalf("solve: %v", err)
			}
			return
		}
		if err := verify.Check(p, pl); err != nil {
			rt.Fatalf("plan fails the verifier: %v\nactions: %+v", err, pl.Actions)
		}
	})
}

// TestMTTROptimalOnTinyProblems compares the planner's MTTR with the
// reference optimum (plan/reference) on a fixed set of random tiny problems
// and requires a match on at least 95% of those the reference decides.
func TestMTTROptimalOnTinyProblems(t *testing.T) {
	const (
		problems = 150
		budget   = 150000
		minRatio = 0.95
	)
	var decided, matched, undecided, better, bothNone int
	var misses []string
	for i := 0; i < problems; i++ {
		p := tinyProblem.Example(i)
		p.Objective = plan.MinMTTR
		pl, perr := solveTiny(p)
		if perr != nil && !errors.Is(perr, plan.ErrNoSolution) {
			t.Fatalf("problem %d: solve: %v", i, perr)
		}
		if perr == nil {
			if err := verify.Check(p, pl); err != nil {
				t.Fatalf("problem %d: plan fails the verifier: %v\nactions: %+v", i, err, pl.Actions)
			}
		}
		ref, rerr := reference.Solve(p, budget)
		switch {
		case errors.Is(rerr, reference.ErrBudget):
			undecided++
			continue
		case rerr != nil && !errors.Is(rerr, reference.ErrInfeasible):
			t.Fatalf("problem %d: reference: %v", i, rerr)
		}
		if rerr == nil {
			if err := verify.Check(p, ref.Plan); err != nil {
				t.Fatalf("problem %d: the reference plan fails the verifier: %v\nactions: %+v", i, err, ref.Plan.Actions)
			}
			checkMetamorphic(t, i, p, ref.Plan)
		}
		decided++
		switch {
		case rerr != nil && perr != nil:
			matched++
			bothNone++
		case rerr != nil: // the planner found a plan outside the reference's space
			matched++
			better++
		case perr != nil:
			misses = append(misses, fmt.Sprintf("problem %d: planner found no plan, optimum MTTR %d: %v", i, ref.MTTR, perr))
		case pl.MTTR() < ref.MTTR:
			matched++
			better++
		case pl.MTTR() == ref.MTTR:
			matched++
		default:
			misses = append(misses, fmt.Sprintf("problem %d: planner MTTR %d, optimum %d (%d actions vs %d)", i, pl.MTTR(), ref.MTTR, len(pl.Actions), len(ref.Plan.Actions)))
		}
	}
	for _, m := range misses {
		t.Log(m)
	}
	if decided == 0 {
		t.Fatal("the reference decided no problem")
	}
	ratio := float64(matched) / float64(decided)
	t.Logf("MTTR optimal on %d/%d = %.1f%% of decided problems (%d with no plan at all, %d where the planner beat the reference's space, %d undecided by the reference within %d states)",
		matched, decided, 100*ratio, bothNone, better, undecided, budget)
	if ratio < minRatio {
		t.Fatalf("optimal on %.1f%% < %.0f%%", 100*ratio, 100*minRatio)
	}
	if undecided > problems/5 {
		t.Fatalf("the reference left %d of %d problems undecided", undecided, problems)
	}
}

// TestExamplesOptimal: the shipped examples (examples/plan) are solved to
// the reference optimum.
func TestExamplesOptimal(t *testing.T) {
	files, _ := filepath.Glob("../examples/plan/*.json")
	if len(files) == 0 {
		t.Fatal("no examples in ../examples/plan")
	}
	for _, f := range files {
		in, err := btrplace.ReadInstanceFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pl, err := solveTiny(in.Problem)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := verify.Check(in.Problem, pl); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		ref, err := reference.Solve(in.Problem, 50000)
		if errors.Is(err, reference.ErrBudget) {
			t.Logf("%s: too large for the reference (%v); planner MTTR %d", f, err, pl.MTTR())
			continue
		}
		if err != nil {
			t.Fatalf("%s: reference: %v", f, err)
		}
		t.Logf("%s: planner MTTR %d, optimum %d (reference expanded %d states)", f, pl.MTTR(), ref.MTTR, ref.Expanded)
		if pl.MTTR() != ref.MTTR {
			t.Errorf("%s: planner MTTR %d, optimum %d: %+v", f, pl.MTTR(), ref.MTTR, ref.Plan.Actions)
		}
	}
}

// checkMetamorphic cross-checks the verifier and the reference on an optimal
// plan: dropping any one action must break it (else the smaller plan would
// beat the optimum), and delaying every action by the same amount keeps it
// valid unless a noDelay pins a start.
func checkMetamorphic(t *testing.T, i int, p *plan.Problem, opt *plan.Plan) {
	t.Helper()
	for k := range opt.Actions {
		rest := append(append([]plan.Action(nil), opt.Actions[:k]...), opt.Actions[k+1:]...)
		if verify.Check(p, &plan.Plan{Actions: rest}) == nil {
			t.Fatalf("problem %d: the optimal plan without action %d (%+v) still passes the verifier", i, k, opt.Actions[k])
		}
	}
	for _, c := range p.Constraints {
		if _, ok := c.(cluster.NoDelay); ok {
			return
		}
	}
	shifted := append([]plan.Action(nil), opt.Actions...)
	for k := range shifted {
		shifted[k].Start += 3
		shifted[k].End += 3
	}
	if err := verify.Check(p, &plan.Plan{Actions: shifted}); err != nil {
		t.Fatalf("problem %d: the optimal plan delayed by 3 fails the verifier: %v", i, err)
	}
}
