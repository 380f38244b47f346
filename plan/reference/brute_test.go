package reference_test

import (
	"errors"
	"fmt"
	"sort"
	"testing"

	"github.com/ferrycluster/ferry/cluster"
	"github.com/ferrycluster/ferry/plan"
	"github.com/ferrycluster/ferry/plan/reference"
	"github.com/ferrycluster/ferry/plan/verify"
	"pgregory.net/rapid"
)

// brute enumerates every plan of at most maxActs actions with starts in
// [0, horizon] and keeps the cheapest one plan/verify accepts: an oracle that
// shares nothing with the reference but the verifier.
var bestActs []plan.Action

func brute(p *plan.Problem, maxActs int, horizon int64) (best int64, found bool) {
	m := p.Model
	dm := cluster.AttrDurations{}
	var cands []plan.Action
	add := func(a plan.Action) {
		task, from, to := a.Task, a.From, a.To
		if a.Kind.IsNodeAction() {
			task, from, to = -1, cluster.NoNode, a.Node
		}
		d := dm.Duration(m, a.Kind, task, from, to)
		for s := int64(0); s <= horizon; s++ {
			a.Start, a.End = s, s+d
			cands = append(cands, a)
		}
	}
	for t := range m.Tasks {
		for from := -1; from < len(m.Nodes); from++ {
			for to := -1; to < len(m.Nodes); to++ {
				for _, k := range []cluster.ActionKind{cluster.Boot, cluster.Shutdown, cluster.Suspend, cluster.Resume, cluster.Migrate, cluster.Kill} {
					ok := false
					switch k {
					case cluster.Boot:
						ok = from < 0 && to >= 0
					case cluster.Shutdown:
						ok = from >= 0 && to < 0
					case cluster.Kill:
						ok = to < 0
					case cluster.Suspend:
						ok = from >= 0 && to == from
					case cluster.Resume:
						ok = from >= 0 && to >= 0
					case cluster.Migrate:
						ok = from >= 0 && to >= 0 && from != to
					}
					if ok {
						add(plan.Action{Kind: k, Task: t, Node: -1, From: from, To: to})
					}
				}
			}
		}
	}
	for n := range m.Nodes {
		add(plan.Action{Kind: cluster.BootNode, Task: -1, Node: n, From: cluster.NoNode, To: n})
		add(plan.Action{Kind: cluster.ShutdownNode, Task: -1, Node: n, From: cluster.NoNode, To: n})
	}
	// Candidates are in start order, so a combination is a time-ordered
	// sequence; sequences that break a task's or node's life cycle (the
	// verifier would reject them whatever comes later) are cut early.
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].Start < cands[j].Start })
	type ts struct {
		st   cluster.TaskState
		node int
		busy int64
	}
	tasks := make([]ts, len(m.Tasks))
	for i, t := range m.Tasks {
		tasks[i] = ts{t.State, t.Node, 0}
	}
	nodes := make([]ts, len(m.Nodes))
	for i, n := range m.Nodes {
		nodes[i] = ts{st: cluster.TaskState(n.State)}
	}
	step := func(a plan.Action) (undo func(), ok bool) {
		if a.Kind.IsNodeAction() {
			old := nodes[a.Node]
			want, next := cluster.NodeOffline, cluster.NodeOnline
			if a.Kind == cluster.ShutdownNode {
				want, next = cluster.NodeOnline, cluster.NodeOffline
			}
			if a.Start < old.busy || cluster.NodeState(old.st) != want {
				return nil, false
			}
			nodes[a.Node] = ts{st: cluster.TaskState(next), busy: a.End}
			return func() { nodes[a.Node] = old }, true
		}
		old := tasks[a.Task]
		if a.Start < old.busy {
			return nil, false
		}
		next := ts{busy: a.End, node: cluster.NoNode}
		switch a.Kind {
		case cluster.Boot:
			ok = old.st == cluster.Ready
			next.st, next.node = cluster.Running, a.To
		case cluster.Migrate:
			ok = old.st == cluster.Running && old.node == a.From
			next.st, next.node = cluster.Running, a.To
		case cluster.Suspend:
			ok = old.st == cluster.Running && old.node == a.From
			next.st, next.node = cluster.Sleeping, a.To
		case cluster.Resume:
			ok = old.st == cluster.Sleeping && old.node == a.From
			next.st, next.node = cluster.Running, a.To
		case cluster.Shutdown:
			ok = old.st == cluster.Running && old.node == a.From
			next.st = cluster.Ready
		case cluster.Kill:
			ok = old.st != cluster.Killed && old.node == a.From
			next.st = cluster.Killed
		}
		if !ok {
			return nil, false
		}
		tasks[a.Task] = next
		return func() { tasks[a.Task] = old }, true
	}
	var rec func(from int, acts []plan.Action, cost int64)
	rec = func(from int, acts []plan.Action, cost int64) {
		if found && cost >= best {
			return
		}
		if vs, err := verify.Violations(p, &plan.Plan{Actions: acts}); err == nil && len(vs) == 0 {
			best, found = cost, true
			bestActs = append([]plan.Action(nil), acts...)
			return // adding actions only raises the cost
		}
		if len(acts) == maxActs {
			return
		}
		for i := from; i < len(cands); i++ {
			undo, ok := step(cands[i])
			if !ok {
				continue
			}
			rec(i+1, append(acts, cands[i]), cost+cands[i].End)
			undo()
		}
	}
	rec(0, nil, 0)
	return best, found
}

var microProblem = rapid.Custom(func(t *rapid.T) *plan.Problem {
	m := &cluster.Model{Resources: []string{"cpu"}}
	for n := 0; n < 2; n++ {
		nd := cluster.Node{Name: fmt.Sprintf("N%d", n), Capacity: []int64{int64(rapid.IntRange(1, 3).Draw(t, "cap"))}}
		if n == 1 && rapid.IntRange(0, 3).Draw(t, "off") == 0 {
			nd.State = cluster.NodeOffline
		}
		m.Nodes = append(m.Nodes, nd)
	}
	used := []int64{0, 0}
	nT := rapid.IntRange(1, 2).Draw(t, "tasks")
	for i := 0; i < nT; i++ {
		tk := cluster.Task{Name: fmt.Sprintf("t%d", i), Node: cluster.NoNode, Demand: []int64{int64(rapid.IntRange(1, 2).Draw(t, "d"))},
			Durations: map[cluster.ActionKind]int64{cluster.Migrate: int64(rapid.IntRange(1, 3).Draw(t, "mig"))}}
		n := rapid.IntRange(0, 1).Draw(t, "node")
		switch rapid.IntRange(0, 3).Draw(t, "state") {
		case 0:
			tk.State = cluster.Ready
		case 1:
			if m.Nodes[n].State == cluster.NodeOnline {
				tk.State, tk.Node = cluster.Sleeping, n
			}
		default:
			if m.Nodes[n].State == cluster.NodeOnline && used[n]+tk.Demand[0] <= m.Nodes[n].Capacity[0] {
				tk.State, tk.Node = cluster.Running, n
				used[n] += tk.Demand[0]
			}
		}
		m.Tasks = append(m.Tasks, tk)
	}
	p := &plan.Problem{Model: m}
	switch rapid.IntRange(0, 4).Draw(t, "constraint") {
	case 0:
		x := rapid.IntRange(0, nT-1).Draw(t, "x")
		if m.Tasks[x].State == cluster.Running {
			p.Constraints = append(p.Constraints, cluster.Ban{Tasks: []int{x}, Nodes: []int{m.Tasks[x].Node}, Continuous: rapid.Bool().Draw(t, "cont")})
		}
	case 1:
		st := rapid.SampledFrom([]cluster.TaskState{cluster.Running, cluster.Sleeping, cluster.Ready, cluster.Killed}).Draw(t, "want")
		p.Constraints = append(p.Constraints, cluster.StateConstraint{State: st, Tasks: []int{rapid.IntRange(0, nT-1).Draw(t, "x")}})
	case 2:
		p.Constraints = append(p.Constraints, cluster.NodeStateConstraint{State: cluster.NodeOffline, Nodes: []int{rapid.IntRange(0, 1).Draw(t, "n")}})
	case 3:
		if nT == 2 {
			p.Constraints = append(p.Constraints, cluster.Spread{Tasks: []int{0, 1}, Continuous: rapid.Bool().Draw(t, "cont")})
		}
	}
	return p
})

// TestReferenceMatchesBruteForce: on micro problems (2 nodes, <= 2 tasks)
// the reference optimum equals the cheapest plan of <= 3 actions starting in
// [0, 6] that plan/verify accepts, found by plain enumeration.
func TestReferenceMatchesBruteForce(t *testing.T) {
	checked := 0
	for i := 0; i < 40; i++ {
		p := microProblem.Example(i)
		bb, found := brute(p, 3, 6)
		r, err := reference.Solve(p, 100000)
		switch {
		case errors.Is(err, reference.ErrInfeasible):
			if found {
				t.Fatalf("problem %d: reference says no plan, brute force found MTTR %d\n%+v", i, bb, p)
			}
		case err != nil:
			t.Fatalf("problem %d: %v", i, err)
		case !found:
			// the optimum needs more than 3 actions or starts after 6
			if len(r.Plan.Actions) <= 3 && r.Plan.Makespan() <= 6 {
				t.Fatalf("problem %d: brute force found nothing but the reference plan fits its space: %+v", i, r.Plan.Actions)
			}
		case r.MTTR != bb:
			t.Fatalf("problem %d: reference MTTR %d (%+v), brute force %d (%+v)\n%+v", i, r.MTTR, r.Plan.Actions, bb, bestActs, p.Model)
		default:
			checked++
		}
	}
	t.Logf("reference optimum confirmed by enumeration on %d problems", checked)
	if checked < 15 {
		t.Fatalf("only %d problems compared", checked)
	}
}
